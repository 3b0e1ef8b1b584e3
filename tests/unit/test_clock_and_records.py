"""The clock modes, and the tracker's table record (old and new shapes) and partitioning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.events import TrackedEvent
from schemas.referral import fold
from streams.clock import Clock
from streams.tracker import decode_record, encode_record, load_record, partition_of

T0 = 1_735_689_600_000_000


def test_file_clock_reads_the_instant_and_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("2025-01-01T00:00:00Z\n")
    clock = Clock.parse(f"file:{path}")
    assert not clock.event_time and clock.now() == T0
    path.write_text("2025-01-01T01:00:00+00:00")
    os.utime(path, (1, 1))  # a different mtime, whatever the file system's resolution
    assert clock.now() == T0 + 3_600_000_000


def test_file_clock_refuses_a_time_without_offset(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_text("2025-01-01T00:00:00")
    with pytest.raises(ValueError, match="no UTC offset"):
        Clock.parse(f"file:{path}").now()


def test_clock_specs() -> None:
    assert Clock.parse("event").event_time
    assert abs(Clock.parse("wall").now() - Clock("wall").now()) < 60_000_000
    for bad in ("", "file:", "sundial"):
        with pytest.raises(ValueError, match="unknown clock"):
            Clock.parse(bad)


def test_records_from_before_alerting_load_as_bare_state() -> None:
    state = fold([TrackedEvent("e1", "acme", "R-1", "referral.created", T0, "ehr", None, {})])
    assert load_record(state.to_dict())[1:] == ({}, None, -1)
    new = {"state": state.to_dict(), "alerts": {"routing_overdue": 5}, "deadline": 9, "p": 3}
    loaded, firing, deadline, partition = load_record(new)
    assert loaded.to_dict() == state.to_dict()
    assert (firing, deadline, partition) == ({"routing_overdue": 5}, 9, 3)


@pytest.mark.parametrize("key", ["acme/R-1", "northwind/R-100234", "o/ü-1", ""])
def test_partition_of_matches_the_producers_partitioner(key: str) -> None:
    partitions = list(range(8))
    assert partition_of(key, 8) == DefaultPartitioner()(key.encode(), partitions, partitions)


def test_stored_records_are_json_bytes_and_old_json_table_values_still_load() -> None:
    """The referral table keeps records as JSON bytes; what the json codec wrote to the
    changelog before (spaced separators) loads to the same record."""
    state = fold([TrackedEvent("e1", "acme", "R-1", "referral.created", T0, "ehr", None, {})])
    record = {"state": state.to_dict(), "alerts": {"routing_overdue": 5}, "deadline": 9, "p": 3}
    stored = encode_record(record)
    assert isinstance(stored, bytes) and b": " not in stored
    assert decode_record(stored) == record
    written_by_json_codec = json.dumps(record).encode()
    for value in (stored, written_by_json_codec, bytearray(stored), record):
        loaded, firing, deadline, partition = load_record(value)
        assert loaded.to_dict() == state.to_dict()
        assert (firing, deadline, partition) == ({"routing_overdue": 5}, 9, 3)
