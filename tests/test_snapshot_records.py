"""Typed views of snapshots: what modules read, said once, tolerant of old or damaged ones."""

from __future__ import annotations

from safehold.repo.snapshots import ComponentRecord, SnapshotRecord


def test_a_platform_snapshot_reads_as_records():
    snapshot = {
        "id": "ab" * 32,
        "time": 1.5,
        "hostname": "h",
        "platform": "klink",
        "status": "partial",
        "components": [
            {"name": "db", "type": "mysql", "status": "ok", "databases": {"dms": {"file": "x"}}},
            {"name": "objects", "type": "bucket", "details": {"buckets": {"b": {"objects": 2}}}},
        ],
    }
    record = SnapshotRecord.from_dict(snapshot)
    assert (record.platform, record.status, record.time) == ("klink", "partial", 1.5)
    assert record.component("db").databases == {"dms": {"file": "x"}}
    assert record.component("objects").details["buckets"]["b"]["objects"] == 2
    assert record.component("nope") is None


def test_old_and_damaged_snapshots_read_as_defaults():
    record = SnapshotRecord.from_dict(
        {"id": "cd" * 32, "time": "yesterday", "components": ["junk", {"name": "x", "bytes": "9"}]}
    )
    assert record.time == 0.0 and record.platform is None
    assert record.components == (ComponentRecord(""), ComponentRecord("x"))
    assert SnapshotRecord.from_dict({"id": "ef" * 32, "time": 3}).components == ()
