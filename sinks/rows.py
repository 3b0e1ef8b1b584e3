"""Topic message -> ClickHouse row, one mapping per sink table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

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
_TIME_COLUMNS = {c for c in REFERRAL_STATE_COLUMNS if c.endswith("_at")}


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def referral_state_row(raw: bytes) -> Sequence[Any]:
    """A status snapshot (schemas.snapshot) as a `referral_state` row."""
    snap = json.loads(raw)
    return [
        _time(snap.get(c)) if c in _TIME_COLUMNS else snap.get(c) for c in REFERRAL_STATE_COLUMNS
    ]
