"""The agent's spool: order, the bound (oldest dropped and counted), removal by sequence number,
and a disk spool that survives a restart (and a crash between write and rename)."""

from pathlib import Path

import pytest

from gpufleet.agent.spool import DiskSpool, MemorySpool, SeqFile


@pytest.fixture(params=["memory", "disk"])
def make(request, tmp_path: Path):
    return (lambda bound: MemorySpool(bound)) if request.param == "memory" else (lambda bound: DiskSpool(tmp_path / "s", bound))


def test_messages_come_back_in_order_and_leave_by_sequence_number(make):
    spool = make(10)
    ids = [spool.append("t/telemetry", f"w{i}".encode(), seq=i) for i in range(3)]
    event = spool.append("t/events", b"xid")
    assert spool.ids() == [*ids, event]
    assert spool.get(event).seq is None and spool.get(ids[1]).payload == b"w1"
    assert spool.remove_seqs([1, 7]) == [ids[1]]  # 7 was never here
    spool.remove(event)
    assert spool.ids() == [ids[0], ids[2]] and len(spool) == 2 and ids[1] not in spool


def test_past_the_bound_the_oldest_is_dropped_and_counted(make):
    spool = make(3)
    for i in range(5):
        spool.append("t/telemetry", b"w", seq=i)
    assert [spool.get(i).seq for i in spool.ids()] == [2, 3, 4]
    assert spool.dropped == 2


def test_a_disk_spool_survives_a_restart_and_a_crash_mid_write(tmp_path: Path):
    first = DiskSpool(tmp_path)
    first.append("t/telemetry", b"window", seq=41)
    first.append("t/events", b"event")
    (tmp_path / "00000000000000000009-42.tmp").write_bytes(b"half written")
    again = DiskSpool(tmp_path)
    assert [(again.get(i).topic, again.get(i).payload, again.get(i).seq) for i in again.ids()] == [
        ("t/telemetry", b"window", 41),
        ("t/events", b"event", None),
    ]
    assert not list(tmp_path.glob("*.tmp"))
    assert again.append("t/telemetry", b"next", seq=42) == 2  # ids go on after the last one


def test_sequence_numbers_continue_across_restarts(tmp_path: Path):
    seq = SeqFile(tmp_path / "next-seq")
    assert seq.load() == 0
    seq.save(17)
    assert SeqFile(tmp_path / "next-seq").load() == 17
    (tmp_path / "next-seq").write_text("garbage")
    with pytest.raises(ValueError, match="remove it to start at 0"):
        seq.load()
