"""Felix: the control plane of a streaming platform (Raft for metadata, watches for brokers)."""

__version__ = "0.1.0"
