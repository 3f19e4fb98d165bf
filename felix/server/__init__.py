"""The running control-plane node: the Raft driver, the broker API and operations endpoints."""
