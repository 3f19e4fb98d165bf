"""The agent's `serve` in-process against the in-process control plane
(tests/broker/harness.py, real loopback sockets), stopped by a real SIGTERM.

A broker the control plane removes (``decommission_node``, then ``remove_node``) stops
being a broker but the agent stays up: ``/livez`` passes, ``/readyz`` fails with
``removed from the cluster``, its node is not registered again; SIGTERM then ends it.
"""

from __future__ import annotations

import os
import signal

import trio

from felix.broker.agent import serve
from felix.broker.example_broker import BrokerSettings
from tests.broker.harness import control_plane, wait_for
from tests.broker.test_agent_cli import fetch

GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_removed_broker_stays_up_unready_until_sigterm() -> None:
    async with control_plane() as cp:
        settings = BrokerSettings(tuple(cp.endpoints), node_id=4, address="10.9.0.4:9092")
        done = trio.Event()

        async def run(*, task_status: trio.TaskStatus[int]) -> None:
            try:
                await serve(settings, ("127.0.0.1", 0), task_status=task_status)
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            port = await nursery.start(run)
            readyz: list[tuple[int, str]] = []

            async def poll() -> bool:
                readyz.append(await fetch(port, GET % b"/readyz"))
                return readyz[-1][0] == 200

            with trio.fail_after(15):
                while not await poll():
                    await trio.sleep(0.02)
            state = await cp.state()
            assert state.nodes[4].address == "10.9.0.4:9092"
            await cp.write("decommission_node", {"node_id": 4})
            await cp.write("remove_node", {"node_id": 4})  # it holds nothing
            with trio.fail_after(15):
                while "removed from the cluster" not in readyz[-1][1]:
                    await poll()
                    await trio.sleep(0.02)
            assert readyz[-1][0] == 503
            assert (await fetch(port, GET % b"/livez"))[0] == 200
            assert 4 not in (await cp.state()).nodes  # not registered again
            assert not done.is_set()
            os.kill(os.getpid(), signal.SIGTERM)  # caught by serve's signal receiver
            await wait_for(done.is_set, timeout_s=15)
