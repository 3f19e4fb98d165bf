"""The broker agent's ops endpoint: ``/livez``, ``/readyz``, ``/metrics`` over plain
HTTP/1.1 (docs/architecture.md, "Operations"; the same 200/503 convention as the nodes').

``/livez`` is 200 while the agent runs its loop; ``/readyz`` 200 only while the broker has
a complete, digest-checked view, 503 with the reason otherwise (before the first
snapshot, and from the moment it begins stopping).  ``/metrics`` is Prometheus text from
the agent's own registry.  Requests are read with a size bound and a timeout; anything
malformed gets a 400.  It holds no secrets, so it asks for no credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from felix.broker.client import BrokerMetrics, MetadataView

REQUEST_BYTES_MAX: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
Check = Callable[[], tuple[bool, str]]


class AgentMetrics(BrokerMetrics):
    """`BrokerMetrics` plus what an operator of one broker asks first: ownership events,
    shards owned by role, the control-plane node it is connected to, readiness."""

    def __init__(self, registry: CollectorRegistry, ready: Check) -> None:
        self._tracked: list[MetadataView] = []
        self._ready = ready
        super().__init__(registry)

    def track(self, view: MetadataView) -> None:
        super().track(view)
        self._tracked = [view]  # one broker per agent

    def collect(self) -> Iterable[Any]:
        p = "felix_broker_"
        events = CounterMetricFamily(p + "ownership_events", "Ownership events", labels=["node"])
        heartbeats = CounterMetricFamily(p + "heartbeats", "Heartbeats sent", labels=["node"])
        connects = CounterMetricFamily(p + "connects", "Sessions opened", labels=["node"])
        owned = GaugeMetricFamily(
            p + "owned_shards", "Shards owned, by role", labels=["node", "role"]
        )
        connected = GaugeMetricFamily(
            p + "connected_endpoint",
            "1 for the control-plane node in use",
            labels=["node", "endpoint"],
        )
        ready = GaugeMetricFamily(p + "ready", "1 while /readyz passes")
        ready.add_metric([], 1 if self._ready()[0] else 0)
        for view in self._tracked:
            stats = view.stats
            node = str(view.node_id)
            events.add_metric([node], stats.ownership_events)
            heartbeats.add_metric([node], stats.heartbeats)
            connects.add_metric([node], stats.connects)
            roles: dict[str, int] = {}
            for ownership in view.cache.owned.values():
                roles[str(ownership.role)] = roles.get(str(ownership.role), 0) + 1
            for role, count in sorted(roles.items()):
                owned.add_metric([node, role], count)
            if stats.endpoint is not None:
                connected.add_metric([node, stats.endpoint], 1)
        return [*super().collect(), events, heartbeats, connects, owned, connected, ready]


class AgentOps:
    """The HTTP server; ``live`` and ``ready`` are checks read per request."""

    def __init__(self, live: Check, ready: Check, registry: CollectorRegistry) -> None:
        self._checks = {"/livez": live, "/readyz": ready}
        self._registry = registry
        self.port = 0

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self.handle, listeners)
            task_status.started(self.port)

    async def handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    head = await _read_head(stream)
                status, body, kind = self.respond(head)
            except trio.TooSlowError:
                return
            except ValueError as exc:
                status, body, kind = 400, f"bad request: {exc}\n".encode(), "text/plain"
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            try:
                await stream.send_all(_render(status, body, kind))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    def respond(self, head: bytes) -> tuple[int, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("malformed request line")
        method, target, _ = parts
        path = target.partition("?")[0].rstrip("/") or "/"
        if method not in ("GET", "HEAD"):
            return 405, b"only GET\n", "text/plain"
        if path == "/metrics":
            return 200, generate_latest(self._registry), "text/plain; version=0.0.4"
        check = self._checks.get(path)
        if check is None:
            return 404, b"not found: /livez, /readyz, /metrics\n", "text/plain"
        try:
            ok, reason = check()
        except Exception as exc:  # a broken check is a failed check, not a crash
            ok, reason = False, f"check raised {type(exc).__name__}: {exc}"
        return (
            (200 if ok else 503),
            f"{'ok' if ok else 'not ok'}: {reason}\n".encode(),
            "text/plain",
        )


async def _read_head(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > REQUEST_BYTES_MAX:
            raise ValueError("request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ValueError("connection closed before the request was complete")
        data += chunk
    return bytes(data.split(b"\r\n\r\n", 1)[0])


def _render(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Service Unavailable')}\r\n"
        f"Content-Type: {content_type}; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
