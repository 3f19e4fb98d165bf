"""The broker-side library: connect to any control-plane node and keep a current view.

``open_metadata_client`` (`client.py`) yields a `MetadataView`; `MetadataCache`
(`cache.py`, pure) is the view itself: records, typed tables, routing, ownership.
"""

from felix.broker.cache import (
    CacheError,
    CacheUpdate,
    DigestMismatch,
    GapError,
    MetadataCache,
    Ownership,
    OwnershipEvent,
    RecordError,
    ShardId,
    ShardRole,
)
from felix.broker.client import (
    BrokerMetrics,
    ClientStats,
    MetadataView,
    WriteError,
    open_metadata_client,
)

__all__ = [
    "BrokerMetrics",
    "CacheError",
    "CacheUpdate",
    "ClientStats",
    "DigestMismatch",
    "GapError",
    "MetadataCache",
    "MetadataView",
    "Ownership",
    "OwnershipEvent",
    "RecordError",
    "ShardId",
    "ShardRole",
    "WriteError",
    "open_metadata_client",
]
