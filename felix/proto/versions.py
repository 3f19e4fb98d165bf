"""Protocol versions: the range a node speaks, and the version two ends agree on.

PURE (``tests/test_layering.py``): the environment is passed in by the transport, the
server and the broker (docs/architecture.md, "Protocol versions").

Version 1 is the baseline: every message and field as first released.  A later version
adds fields (``Annotated[T, Since(v)]``) and message types (``message(..., since=v)``);
a connection speaks one version, the highest both ends support, so during a rolling
upgrade an upgraded node keeps talking version 1 to a node that is not upgraded yet.

Version 2 exists only as a test of that machinery: a node supports it only when
``FELIX_PROTOCOL_NEXT=1`` is in its environment, and all it adds is a synthetic field
that nothing reads (`felix.proto.raft_messages.AppendEntries.next_probe`,
`felix.proto.client_messages.WatchProgress.next_probe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION_MIN: Final = 1  # the oldest version this build still speaks
PROTOCOL_VERSION_MAX: Final = 1  # the newest released version
PROTOCOL_VERSION_NEXT: Final = 2  # synthetic; only with FELIX_PROTOCOL_NEXT=1 (tests)
BASELINE: Final = 1  # what a connection speaks before (or without) negotiating
NEXT_ENV: Final = "FELIX_PROTOCOL_NEXT"


class VersionRefused(ValueError):
    """The two ranges do not overlap; the message names both."""


@dataclass(frozen=True, slots=True)
class VersionRange:
    """The protocol versions one end supports, both bounds inclusive."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ValueError(f"bad protocol version range [{self.min}, {self.max}]")

    def __str__(self) -> str:
        return f"[{self.min}, {self.max}]"

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self.min <= version <= self.max


def supported_versions(env: Mapping[str, str]) -> VersionRange:
    """This build's range: [1, 1], or [1, 2] with ``FELIX_PROTOCOL_NEXT=1`` in ``env``."""
    top = PROTOCOL_VERSION_NEXT if env.get(NEXT_ENV) == "1" else PROTOCOL_VERSION_MAX
    return VersionRange(PROTOCOL_VERSION_MIN, top)


def negotiate(
    ours: VersionRange, theirs: VersionRange, *, us: str = "this node", them: str = "the peer"
) -> int:
    """The highest version in both ranges; `VersionRefused` naming both if none is."""
    version = min(ours.max, theirs.max)
    if version < max(ours.min, theirs.min):
        raise VersionRefused(
            f"no common protocol version: {them} speaks {theirs}, {us} speaks {ours}"
        )
    return version
