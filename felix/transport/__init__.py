"""Peer transports: how Raft messages travel between control-plane nodes.

Two implementations of one seam (`PeerTransport`): TCP with length-prefixed CBOR frames
for real deployments, and an in-memory network with seeded faults for tests.  One
contract suite (tests/transport) runs against both.
"""
