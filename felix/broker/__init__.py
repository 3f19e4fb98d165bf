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
    broker_ssl_context,
    open_metadata_client,
)
from felix.broker.connection import TlsRefused
from felix.broker.session import CredentialsRefused

__all__ = [
    "BrokerMetrics",
    "CacheError",
    "CacheUpdate",
    "ClientStats",
    "CredentialsRefused",
    "DigestMismatch",
    "GapError",
    "MetadataCache",
    "MetadataView",
    "Ownership",
    "OwnershipEvent",
    "RecordError",
    "ShardId",
    "ShardRole",
    "TlsRefused",
    "WriteError",
    "broker_ssl_context",
    "open_metadata_client",
]
