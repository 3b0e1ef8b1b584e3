"""Topic message -> ClickHouse rows, one mapping per sink table.

Times go to ClickHouse as integer ticks (microseconds for the DateTime64(6) columns,
seconds for `event_rates.window_start`), which clickhouse-connect writes as they are:
handed datetimes, it converted each one through `timestamp()` (3 % of a busy worker)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from schemas import jsoncodec
from schemas.events import to_micros

REFERRAL_STATE_COLUMNS: tuple[str, ...] = (
    "org_id",
    "referral_id",
    "version",
    "status",
    "priority",
    "specialty",
    "patient_ref",
    "created_at",
    "routed_at",
    "contacted_at",
    "scheduled_at",
    "seen_at",
    "closed_at",
    "first_outreach_at",
    "outreach_attempts",
    "no_shows",
    "completions",
    "appointment_at",
    "in_network",
    "leaked",
    "feedback_score",
    "flags",
    "updated_at",
    "evaluated_at",
)
_FLOAT = re.compile(rb"\d[.eE]")  # a digit then a point or exponent: maybe a float
_TIME_COLUMNS = {c for c in REFERRAL_STATE_COLUMNS if c.endswith("_at")}


def _ticks(value: str | None) -> int | None:
    """An ISO 8601 time (as schemas.snapshot.iso writes it) in UTC microseconds; a time
    without an offset is taken as UTC."""
    return None if value is None else _parsed_ticks(value)


@lru_cache(maxsize=16384)  # a referral's times recur in each of its snapshots (~2 MB)
def _parsed_ticks(value: str) -> int:
    time = datetime.fromisoformat(value)
    return to_micros(time if time.tzinfo is not None else time.replace(tzinfo=UTC))


_last_snapshot: list[Any] = [None, None]  # (raw bytes, decoded)


def _snapshot(raw: bytes) -> dict[str, Any]:
    """A status snapshot decoded, once for both of its tables: the status sink hands the
    same message to `referral_state_rows`, then to `stage_rows` (the second decode was
    about 1 % of a worker's time). Read only by the two."""
    if _last_snapshot[0] is not raw:
        _last_snapshot[1] = jsoncodec.loads(raw)
        _last_snapshot[0] = raw
    snap: dict[str, Any] = _last_snapshot[1]
    return snap


def referral_state_rows(raw: bytes, offset: int) -> list[Sequence[Any]]:
    """A status snapshot (schemas.snapshot) as its `referral_state` row."""
    snap = _snapshot(raw)
    return [
        [_ticks(snap.get(c)) if c in _TIME_COLUMNS else snap.get(c) for c in REFERRAL_STATE_COLUMNS]
    ]


STAGE_COLUMNS: tuple[str, ...] = (
    "org_id",
    "referral_id",
    "stage",
    "version",
    "priority",
    "specialty",
    "entered_at",
    "left_at",
    "duration_us",
)


def stage_rows(raw: bytes, offset: int) -> list[Sequence[Any]]:
    """A status snapshot's finished stages as `stage_durations` rows."""
    snap = _snapshot(raw)
    rows: list[Sequence[Any]] = []
    for stage in snap.get("stages", ()):
        entered, left = _ticks(stage["entered_at"]), _ticks(stage["left_at"])
        assert entered is not None and left is not None
        duration = max(0, left - entered)
        rows.append(
            [
                snap["org_id"],
                snap["referral_id"],
                stage["stage"],
                snap["version"],
                snap.get("priority"),
                snap.get("specialty"),
                entered,
                left,
                duration,
            ]
        )
    return rows


EVENT_COLUMNS: tuple[str, ...] = (
    "org_id",
    "referral_id",
    "event_id",
    "type",
    "source",
    "occurred_at",
    "patient_ref",
    "data",
    "version",
)
LAST_OFFSET = 2**64 - 1


def column_json(value: Any) -> str:
    """The text of a JSON column (`events.data`, `alerts.details`): compact, sorted keys,
    non-ASCII escaped, exactly as `json.dumps(value, separators=(",", ":"),
    sort_keys=True)` writes it, so rows written before and after read the same. orjson
    writes that text for plain ASCII values about ten times faster (the standard library
    was 4 % of a busy worker's time); anything else (non-ASCII or DEL, which the standard
    library escapes; what may be a float, whose exponent it pads: these columns hold
    ids, enums, integers and booleans, never floats, let alone NaN) takes the standard
    library's path."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        raw = b"\x80"  # not encodable by orjson: the standard library decides
    if raw.isascii() and b"\x7f" not in raw and not _FLOAT.search(raw):
        return raw.decode("ascii")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def event_rows(raw: bytes, offset: int) -> list[Sequence[Any]]:
    """A tracked (validated, pseudonymized) event as an `events` row. Its version falls as
    the offset rises, so of several copies of one event the table keeps the first one read
    (the copy the referral state accepted), whatever order the rows were inserted in."""
    event = jsoncodec.loads(raw)  # as TrackedEvent.to_json wrote it
    return [
        [
            event["org_id"],
            event["referral_id"],
            event["event_id"],
            event["type"],
            event["source"],
            event["occurred_at"],
            event.get("patient_ref"),
            column_json(event.get("data") or {}),
            LAST_OFFSET - offset,
        ]
    ]


ALERT_COLUMNS: tuple[str, ...] = (
    "alert_id",
    "org_id",
    "referral_id",
    "rule",
    "severity",
    "state",
    "raised_at",
    "resolved_at",
    "details",
    "version",
)
_ALERT_VERSION = {"firing": 1, "resolved": 2}  # a resolution replaces its firing row


def alert_rows(raw: bytes, offset: int) -> list[Sequence[Any]]:
    """An alert lifecycle message (schemas.alerts) as an `alerts` row."""
    alert = jsoncodec.loads(raw)
    return [
        [
            alert["alert_id"],
            alert["org_id"],
            alert["referral_id"],
            alert["rule"],
            alert["severity"],
            alert["state"],
            _ticks(alert["raised_at"]),
            _ticks(alert["resolved_at"]),
            column_json(alert["details"]),
            _ALERT_VERSION[alert["state"]],
        ]
    ]


RATE_COLUMNS: tuple[str, ...] = (
    "org_id",
    "type",
    "window_start",
    "partition",
    "segment",
    "events",
    "version",
)


def _seconds(value: str) -> int:
    return _parsed_ticks(value) // 1_000_000


def rate_rows(raw: bytes, offset: int) -> list[Sequence[Any]]:
    """A window cell (streams.windows) as an `event_rates` row."""
    cell = jsoncodec.loads(raw)
    return [
        [
            cell["org_id"],
            cell["type"],
            _seconds(cell["window_start"]),
            cell["partition"],
            cell["segment"],
            cell["events"],
            cell["version"],
        ]
    ]
