"""Raft consensus as a pure state machine (no I/O, no clocks, no global randomness)."""
