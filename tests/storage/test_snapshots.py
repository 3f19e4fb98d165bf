"""The snapshot store contract (real files and memory), plus atomicity under crashes."""

from __future__ import annotations

import pytest

from felix.storage.errors import CorruptSnapshotError
from felix.storage.files import MemoryFiles, SimulatedCrash
from felix.storage.memory_wal import MemorySnapshotStore
from felix.storage.snapshots import SnapshotStore, snapshot_meta
from tests.storage.model import CONF, snap


def test_an_empty_store_has_no_snapshot(store: SnapshotStore) -> None:
    assert store.latest() is None
    assert store.latest_meta() is None


def test_save_then_load_the_newest(store: SnapshotStore) -> None:
    store.save(*snap(5, 1))
    store.save(*snap(9, 2))
    assert store.latest() == snap(9, 2)
    assert store.latest_meta() == snap(9, 2)[0]


def test_only_the_newest_k_are_kept(store: SnapshotStore) -> None:
    for index in (3, 6, 9, 12):
        store.save(*snap(index, 1))
    assert [store.read_meta(n)[0].index for n in store.names()] == [9, 12]


def test_chunks_read_back_the_data(store: SnapshotStore) -> None:
    data = bytes(range(256)) * 40
    meta = snapshot_meta(7, 1, CONF, data)
    store.save(meta, data)
    chunks = [store.read_chunk(meta, offset, 1000) for offset in range(0, len(data), 1000)]
    assert b"".join(chunks) == data
    assert store.read_chunk(meta, len(data), 1000) == b""


def test_a_snapshot_received_in_chunks(store: SnapshotStore) -> None:
    data = b"abcdefghij" * 100
    meta = snapshot_meta(11, 3, CONF, data)
    receiver = store.receive(meta)
    receiver.write_chunk(0, data[:300])
    receiver.write_chunk(0, data[:300])  # a retransmission is ignored
    with pytest.raises(ValueError, match="expected 300"):
        receiver.write_chunk(600, data[600:])
    receiver.write_chunk(300, data[300:])
    assert store.latest() is None  # not visible before finish
    receiver.finish()
    assert store.latest() == (meta, data)


def test_a_reassembled_snapshot_that_does_not_match_its_meta_is_refused(
    store: SnapshotStore,
) -> None:
    data = b"x" * 100
    meta = snapshot_meta(4, 1, CONF, data)
    receiver = store.receive(meta)
    receiver.write_chunk(0, b"y" * 100)
    with pytest.raises(ValueError, match="does not match"):
        receiver.finish()
    assert store.latest() is None
    assert store.files.listdir(store.directory) == []


def test_meta_that_does_not_describe_the_data_is_refused(store: SnapshotStore) -> None:
    meta, _ = snap(4, 1)
    with pytest.raises(ValueError, match="do not describe"):
        store.save(meta, b"other")


def test_open_deletes_temp_files_a_crash_left(store: SnapshotStore) -> None:
    meta, data = snap(4, 1)
    receiver = store.receive(meta)
    receiver.write_chunk(0, data)  # never finished: the node crashed
    store.open()
    assert store.files.listdir(store.directory) == []


def test_a_damaged_snapshot_names_the_file(store: SnapshotStore) -> None:
    store.save(*snap(4, 1))
    path = f"{store.directory}/{store.names()[-1]}"
    store.files.truncate(path, store.files.size(path) - 1)
    with pytest.raises(CorruptSnapshotError, match="cut short") as info:
        store.latest()
    assert info.value.path == path


def test_a_crash_at_any_point_of_a_save_leaves_old_or_new() -> None:
    for crash_at in range(1, 20):
        store = MemorySnapshotStore(disk=MemoryFiles())
        store.open()
        store.save(*snap(3, 1))
        store.disk.crash_at_op = store.disk.ops + crash_at
        acked = False
        try:
            store.save(*snap(8, 2))
            acked = True
        except SimulatedCrash:
            pass
        store.crash("lose")
        store.open()
        latest = store.latest()
        assert latest in ([snap(8, 2)] if acked else [snap(3, 1), snap(8, 2)])
