"""Operations endpoints over a tiny HTTP/1.1 server: /livez, /readyz, /metrics.

``/livez`` is local only (the event loop answers, storage is writable) and never depends
on peers: restarting a node because its peers are down would make an outage worse.
``/readyz`` says whether this node should get broker traffic: it knows a leader, it is
a voter or an observer (not a learner waiting for promotion), and its applied index is
close to its commit index.  Both follow the
Kubernetes convention (etcd's too): 200 or 503, named sub-checks at ``/readyz/<name>``,
``?verbose`` lists every check, ``?exclude=<name>`` skips one.

Requests are read with a size bound and a timeout; anything malformed gets a 400 and
the connection is closed.  The server never crashes on a bad request.

With ``tls`` (a context getter, asked at each connection so a reloaded certificate
applies to the next one) it serves HTTPS: the handshake counts against the same
request timeout, and a failed one is counted and closes only that connection.

With an `Authenticator`, every path outside ``open_paths`` (by default the probes and
``/metrics``, for kubelets and scrapers) needs ``Authorization: Bearer <token>``: 401
without valid credentials; ``POST`` routes (membership, leadership) need the admin
role, status reads any role, else 403 (docs/architecture.md §12).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import trio

from felix.server.auth import Authenticator, Unauthorized, authorize_admin

log = logging.getLogger("felix.health")

REQUEST_BYTES_MAX = 8192
REQUEST_TIMEOUT_S = 5.0

Check = Callable[[], tuple[bool, str]]
"""Returns (ok, detail); must be cheap and must not block."""

Query = dict[str, list[str]]
Route = Callable[[Query], Awaitable["Response"]]
"""An admin or status handler: query parameters in, a response out."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


OPEN_PATHS_DEFAULT: frozenset[str] = frozenset({"/livez", "/readyz", "/metrics", "/health"})

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    409: "Conflict",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class OpsServer:
    def __init__(
        self,
        livez: Mapping[str, Check],
        readyz: Mapping[str, Check],
        metrics: Callable[[], bytes],
        get_routes: Mapping[str, Route] | None = None,
        post_routes: Mapping[str, Route] | None = None,
        *,
        auth: Authenticator | None = None,
        open_paths: frozenset[str] = OPEN_PATHS_DEFAULT,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.tls = tls
        self.tls_handshakes_failed = 0
        self.auth = auth  # None: no credentials asked (``--insecure`` only)
        self.open_paths = open_paths
        self.refused = 0
        self._groups = {"livez": dict(livez), "readyz": dict(readyz)}
        self._metrics = metrics
        self._get = dict(get_routes or {})
        self._post = dict(post_routes or {})
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
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls(), server_side=True)
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    if isinstance(stream, trio.SSLStream):
                        await self._handshake(stream)
                    head = await _read_head(stream)
                response = await self.respond(head)
            except trio.TooSlowError:
                return
            except ValueError as exc:
                response = Response(400, f"bad request: {exc}\n".encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            try:
                await stream.send_all(_render(response))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _handshake(self, stream: trio.SSLStream[trio.abc.Stream]) -> None:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            self.tls_handshakes_failed += 1
            log.info("ops port: TLS handshake failed: %s", exc.__cause__ or exc)
            raise

    async def respond(self, head: bytes) -> Response:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("malformed request line")
        method, target, _ = parts
        url = urlsplit(target)
        query = parse_qs(url.query, keep_blank_values=True)
        path = url.path.rstrip("/") or "/"
        refusal = self._check_access(head, method, path)
        if refusal is not None:
            self.refused += 1
            return refusal
        if method == "POST":
            route = self._post.get(path)
            return await self._call(route, query) if route else Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET and POST\n")
        if path in self._get:
            return await self._call(self._get[path], query)
        if path == "/metrics":
            return Response(200, self._metrics(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/health":  # etcd-compatible summary
            ok = self._run_checks("readyz", None, set())[0]
            summary = b'{"health":"true"}\n' if ok else b'{"health":"false"}\n'
            return Response(200 if ok else 503, summary, "application/json")
        group, _, single = path.lstrip("/").partition("/")
        if group not in self._groups or (single and single not in self._groups[group]):
            return Response(404, b"not found\n")
        ok, lines = self._run_checks(group, single or None, set(query.get("exclude", [])))
        verbose = "verbose" in query or not ok
        body = "\n".join([*lines, f"{group} {'check passed' if ok else 'check failed'}"]) + "\n"
        if not verbose:
            body = "ok\n"
        return Response(200 if ok else 503, body.encode())

    def _check_access(self, head: bytes, method: str, path: str) -> Response | None:
        """401/403 for a request the caller may not make; None if it may."""
        group = "/" + path.lstrip("/").partition("/")[0]  # /readyz/<check> as /readyz
        if self.auth is None or path in self.open_paths or group in self.open_paths:
            return None
        header = _header(head, b"authorization")
        scheme, _, token = (header or "").partition(" ")
        try:
            if header is None or scheme.lower() != "bearer":
                raise Unauthorized("send Authorization: Bearer <token>")
            principal = self.auth.authenticate(token.strip())
        except Unauthorized as exc:
            return Response(401, f"unauthorized: {exc}\n".encode())
        if method == "POST":
            refusal = authorize_admin(principal, f"POST {path}")
            if refusal is not None:
                return Response(403, f"forbidden: {refusal}\n".encode())
        return None

    async def _call(self, route: Route, query: Query) -> Response:
        try:
            return await route(query)
        except Exception as exc:  # a failing handler answers 500; the server lives on
            log.exception("admin handler failed")
            return Response(500, f"internal error: {type(exc).__name__}: {exc}\n".encode())

    def _run_checks(
        self, group: str, only: str | None, exclude: set[str]
    ) -> tuple[bool, list[str]]:
        ok = True
        lines = []
        for name, check in self._groups[group].items():
            if (only and name != only) or name in exclude:
                continue
            try:
                passed, detail = check()
            except Exception as exc:  # a broken check is a failed check, not a crash
                passed, detail = False, f"check raised {type(exc).__name__}: {exc}"
            ok = ok and passed
            lines.append(
                f"[{'+' if passed else '-'}]{name} {'ok' if passed else 'failed'}: {detail}"
            )
        return ok, lines


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


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header ``name`` (lower case) in a request head, if present."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def _render(response: Response) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + response.body
