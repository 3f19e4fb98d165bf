"""`MetadataView.write` retry rules, without a server: an unknown outcome (the
connection dropped, a timeout) is retried only when the caller allows it, since the
first attempt may have been applied; refusals that changed nothing are retried."""

from __future__ import annotations

import random

import pytest
import trio

from felix.broker import WriteError
from felix.broker.client import ClientSettings, MetadataView
from felix.proto.client_messages import Error, ErrorCode, WriteResult


def view_answering(*replies: WriteResult | Error | None) -> tuple[MetadataView, list[str]]:
    view = MetadataView(
        ["127.0.0.1:1"], node_id=None, address=None, rack="", register=False,
        settings=ClientSettings(backoff_s_min=0.001, backoff_s_max=0.002),
        cache=None, rng=random.Random(1), on_ownership=None,
    )  # fmt: skip
    sent: list[str] = []
    queue = list(replies)

    async def write_once(
        command: str, args: object, expected_version: int | None
    ) -> WriteResult | Error | None:
        sent.append(command)
        await trio.lowlevel.checkpoint()
        return queue.pop(0)

    view._requests.write_once = write_once
    return view, sent


@pytest.mark.parametrize(
    "first",
    [None, Error(ErrorCode.TIMEOUT, "no outcome within 5 s", 1)],
    ids=["connection-lost", "timeout"],
)
async def test_unknown_outcome_is_not_resent_unless_allowed(first: Error | None) -> None:
    view, sent = view_answering(first, WriteResult(2, 9))
    with pytest.raises(WriteError, match="outcome unknown"):
        await view.write("create_stream", {"name": "a"})
    assert sent == ["create_stream"]

    view, sent = view_answering(first, WriteResult(2, 9))
    assert await view.write("create_stream", {"name": "a"}, retry_unknown=True) == 9
    assert sent == ["create_stream", "create_stream"]


async def test_refusals_that_changed_nothing_are_retried_and_others_raise() -> None:
    view, sent = view_answering(
        Error(ErrorCode.NOT_LEADER, "no leader known", 1),
        Error(ErrorCode.UNAVAILABLE, "overloaded", 2),
        WriteResult(3, 12),
    )
    assert await view.write("set_config", {"name": "x", "value": 1}) == 12
    assert len(sent) == 3

    view, sent = view_answering(Error(ErrorCode.CONFLICT, "version moved", 1))
    with pytest.raises(WriteError) as info:
        await view.write("set_config", {"name": "x", "value": 1}, retry_unknown=True)
    assert info.value.code is ErrorCode.CONFLICT and len(sent) == 1
