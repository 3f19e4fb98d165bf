"""Which control-plane node a broker tries next (docs/architecture.md §8).

Two tiers: the *preferred* endpoints (observers: fan-out capacity that does not slow
commits) and the *fallback* endpoints (voters).  A broker tries the preferred tier first,
starting at the node its ``node_id`` picks (so brokers spread evenly) and then the rest
in a per-client random order; only when every preferred endpoint failed in a row does it
try the fallback tier, in a per-client random order.  After any session that ended,
the next attempt starts with the preferred tier again, so brokers drift back to the
observers once one answers.  Versions are the same on every node, so a broker resumes
from its version whichever tier it lands on.  Without preferred endpoints this is the
plain rotation: the ``node_id`` pick, then the others, round and round.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence

Endpoint = tuple[str, int]


def parse_endpoint(endpoint: str) -> Endpoint:
    """``"host:port"`` or ``"[v6addr]:port"`` (any port number; see `parse_endpoints`)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


def parse_endpoints(endpoints: Iterable[str], what: str = "endpoint") -> list[Endpoint]:
    """Parse a list of endpoints to connect to (port 1..65535), each once (the first
    occurrence kept); ValueError naming ``what`` and the bad entry.  A bare string is
    refused: it would be read as a list of one-character endpoints."""
    if isinstance(endpoints, str):
        raise ValueError(f"{what}s must be a list of host:port, not the string {endpoints!r}")
    parsed: list[Endpoint] = []
    for endpoint in endpoints:
        if not isinstance(endpoint, str):
            raise ValueError(f"{what} {endpoint!r} is not a host:port string")
        try:
            host, port = parse_endpoint(endpoint.strip())
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if not host or not 1 <= port <= 65535:
            raise ValueError(
                f"{what}: endpoint {endpoint!r}: port {port} is not within 1..65535"
                if host
                else f"{what}: endpoint {endpoint!r} has no host"
            )
        parsed.append((host, port))
    return list(dict.fromkeys(parsed))


def endpoint_flag(flag: str, text: str) -> tuple[str, ...]:
    """A command-line list, ``"a:1,b:2"`` -> ("a:1", "b:2"): each entry checked as by
    `parse_endpoints` and kept once, empty entries skipped; ValueError naming ``flag``."""
    items = tuple(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))
    parse_endpoints(items, flag)
    return items


def endpoint_order(
    endpoints: Sequence[Endpoint], node_id: int | None, rng: random.Random
) -> list[Endpoint]:
    """First the node picked by ``node_id`` (brokers spread evenly), then the rest in a
    per-client random order (a failed node's brokers spread over the others)."""
    if node_id is None:
        first = rng.randrange(len(endpoints))
    else:
        first = zlib.crc32(node_id.to_bytes(8, "big")) % len(endpoints)
    rest = [e for i, e in enumerate(endpoints) if i != first]
    rng.shuffle(rest)
    return [endpoints[first], *rest]


class EndpointPlan:
    """The order of connection attempts over the two tiers (see the module docstring).

    The connection loop calls `next` for the endpoint to try, then `failed` (it did not
    connect, or the session ended before the server sent anything) or `ended` (a session
    ran and ended).  Pure logic: no I/O, no clock."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        preferred: Sequence[Endpoint],
        node_id: int | None,
        rng: random.Random,
    ) -> None:
        preferred = list(dict.fromkeys(preferred))
        fallback = [e for e in dict.fromkeys(endpoints) if e not in set(preferred)]
        if not preferred and not fallback:
            raise ValueError("at least one control-plane endpoint is needed")
        self.has_preferred = bool(preferred)
        if preferred:
            rng.shuffle(fallback)
            self.tiers = [endpoint_order(preferred, node_id, rng)]
            if fallback:
                self.tiers.append(fallback)
        else:
            self.tiers = [endpoint_order(fallback, node_id, rng)]
        self._tier = 0
        self._position = [0] * len(self.tiers)
        self._failed_in_tier = 0

    @property
    def preferred(self) -> list[Endpoint]:
        """The preferred tier in this client's order ([] without preferred endpoints)."""
        return self.tiers[0] if self.has_preferred else []

    @property
    def fallback(self) -> list[Endpoint]:
        """The fallback tier in this client's order."""
        return self.tiers[-1] if len(self.tiers) > 1 or not self.has_preferred else []

    @property
    def on_preferred(self) -> bool:
        """The next attempt is in the first tier."""
        return self._tier == 0

    def next(self) -> Endpoint:
        return self.tiers[self._tier][self._position[self._tier]]

    def failed(self) -> None:
        """The endpoint of `next` did not answer: try the next one; once the whole tier
        failed in a row, the next tier (after the last one, the first again)."""
        self._advance()
        self._failed_in_tier += 1
        if self._failed_in_tier >= len(self.tiers[self._tier]):
            self._failed_in_tier = 0
            self._tier = (self._tier + 1) % len(self.tiers)

    def ended(self) -> None:
        """A session on the endpoint of `next` ran and ended.  On the first tier: its
        next endpoint (the one just left goes last).  On a later tier: the first tier
        again, from this client's own pick (brokers spread again once it is back)."""
        self._failed_in_tier = 0
        self._advance()
        if self._tier != 0:
            self._tier = 0
            self._position[0] = 0

    def _advance(self) -> None:
        tier = self._tier
        self._position[tier] = (self._position[tier] + 1) % len(self.tiers[tier])
