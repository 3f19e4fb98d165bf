"""WebSocket keepalive: quiet clients get pinged; silent ones are dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from felix.proto.ws_frames import OP_PING
from felix.server.ws_server import keepalive


@dataclass
class FakeSender:
    frames: list[bytes] = field(default_factory=list)

    def send(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


@dataclass
class FakeConnection:
    last_heard: float
    sender: FakeSender = field(default_factory=FakeSender)


async def test_quiet_client_is_pinged_and_a_silent_one_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    conn = FakeConnection(trio.current_time())
    with trio.CancelScope() as done:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keepalive, conn, 10.0, done)  # type: ignore[arg-type]
            await trio.sleep(10.5)
            assert [f[0] & 0x0F for f in conn.sender.frames] == [OP_PING]
            conn.last_heard = trio.current_time()  # the pong (or any data) arrived
            await trio.sleep(15)
            assert not done.cancel_called
            await trio.sleep(30)  # silent for two intervals: dropped
    assert done.cancel_called
    assert trio.current_time() < 60
