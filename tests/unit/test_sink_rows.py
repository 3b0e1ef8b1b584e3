"""sinks.rows: a status snapshot's two tables, each from the message it was handed."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from schemas.events import to_micros
from sinks.rows import REFERRAL_STATE_COLUMNS, referral_state_rows, stage_rows


def snapshot(referral: str, stage: str) -> bytes:
    return orjson.dumps(
        {
            "org_id": "org-1",
            "referral_id": referral,
            "version": 3,
            "status": "scheduled",
            "created_at": "2026-11-01T08:00:00.000000Z",
            "stages": [
                {
                    "stage": stage,
                    "entered_at": "2026-11-01T08:00:00.000000Z",
                    "left_at": "2026-11-01T09:30:00.000001Z",
                }
            ],
        }
    )


def test_each_row_comes_from_the_snapshot_it_was_given_even_when_they_alternate() -> None:
    a, b = snapshot("R-a", "routing"), snapshot("R-b", "contact")
    column = REFERRAL_STATE_COLUMNS.index("referral_id")
    # the status sink's order (both tables per message), then interleaved
    assert referral_state_rows(a, 0)[0][column] == "R-a"
    assert stage_rows(a, 0)[0][1:3] == ["R-a", "routing"]
    assert referral_state_rows(b, 1)[0][column] == "R-b"
    assert stage_rows(a, 0)[0][1:3] == ["R-a", "routing"]
    assert stage_rows(b, 1)[0][1:3] == ["R-b", "contact"]
    assert referral_state_rows(a, 0)[0][column] == "R-a"
    same_bytes_new_object = bytes(bytearray(b))
    assert stage_rows(same_bytes_new_object, 1)[0][1:3] == ["R-b", "contact"]


def test_a_stage_row_holds_its_times_and_duration() -> None:
    row = stage_rows(snapshot("R-a", "routing"), 0)[0]
    # integer ticks, as ClickHouse stores DateTime64(6): UTC microseconds
    assert row[6] == to_micros(datetime(2026, 11, 1, 8, 0, tzinfo=UTC))
    assert row[7] == to_micros(datetime(2026, 11, 1, 9, 30, 0, 1, tzinfo=UTC))
    assert row[8] == 90 * 60 * 1_000_000 + 1
