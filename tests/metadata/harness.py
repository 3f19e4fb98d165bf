"""A MetadataState driver that mirrors every Delta into a broker-style view and checks
the digest after each entry, so every test also checks delta/digest consistency."""

from __future__ import annotations

from felix.metadata.commands import (
    Command,
    CreateStream,
    NodeHealth,
    RegisterNode,
    SetTenant,
)
from felix.metadata.digest import digest_bytes
from felix.metadata.state import ApplyResult, MetadataState, Rejection
from felix.metadata.view import RecordView, apply_changes, view_of
from felix.proto.client_messages import Change, Delta


class Harness:
    def __init__(self) -> None:
        self.state = MetadataState()
        self.view: RecordView = {}
        self.view_digest = 0
        self.deltas: list[Delta] = []

    def apply(self, cmd: Command) -> ApplyResult:
        result = self.state.apply_command(self.state.version + 1, cmd)
        self.absorb(result)
        return result

    def apply_bytes(self, data: bytes) -> ApplyResult:
        result = self.state.apply(self.state.version + 1, data)
        self.absorb(result)
        return result

    def absorb(self, result: ApplyResult) -> None:
        delta = result.delta
        assert delta.prev_version + 1 == delta.version == self.state.version
        self.view_digest = apply_changes(self.view, delta.changes, self.view_digest)
        assert digest_bytes(self.view_digest) == delta.digest == self.state.digest
        self.deltas.append(delta)

    def ok(self, cmd: Command) -> Delta:
        result = self.apply(cmd)
        assert result.error is None, result.error
        return result.delta

    def reject(self, cmd: Command, code: str = "rejected", match: str = "") -> Rejection:
        before = list(self.state.records())
        digest = self.state.digest
        result = self.apply(cmd)
        assert result.error is not None, f"{cmd} was accepted"
        assert result.error.code == code, result.error
        assert match in result.error.detail, result.error.detail
        assert result.delta.changes == ()
        assert list(self.state.records()) == before
        assert self.state.digest == digest
        return result.error

    def records(self) -> list[Change]:
        return list(self.state.records())

    def check_view(self) -> None:
        assert self.view == view_of(self.state.records())


def cluster(racks: dict[int, str], tenant: str = "acme") -> Harness:
    """Nodes registered and up (id -> rack), plus one tenant."""
    h = Harness()
    for node_id, rack in racks.items():
        h.ok(RegisterNode(node_id, f"10.0.0.{node_id}:9092", rack))
        h.ok(NodeHealth(node_id, "up"))
    h.ok(SetTenant(tenant))
    return h


def with_stream(h: Harness, name: str, shards: int, rf: int = 3) -> Harness:
    h.ok(CreateStream(name, shards, "acme", replication_factor=rf))
    return h
