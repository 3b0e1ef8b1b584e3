"""The referral status snapshot: the value of `referrals.status.v1` and the source of
the ClickHouse `referral_status` rows. Times are RFC 3339 UTC strings (µs)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from schemas.events import from_micros
from schemas.flags import DEFAULT_TARGETS, SlaTargets, evaluate_flags
from schemas.referral import MILESTONES, ReferralState

SNAPSHOT_SCHEMA_VERSION = 1


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return _iso(us)


@lru_cache(maxsize=1 << 16)
def _iso(us: int) -> str:
    # cached: a referral's snapshot repeats its milestone times at every change, and the
    # formatting was 2.5 % of the worker's time (py-spy, bench.pipeline backlog)
    return from_micros(us).isoformat(timespec="microseconds").replace("+00:00", "Z")


def status_snapshot(
    state: ReferralState, now: int, targets: SlaTargets = DEFAULT_TARGETS
) -> dict[str, Any]:
    """Everything a consumer needs about one referral now; no raw patient id."""
    snap: dict[str, Any] = {
        "schema": SNAPSHOT_SCHEMA_VERSION,
        "org_id": state.org_id,
        "referral_id": state.referral_id,
        "version": state.version,
        "status": state.status.value,
        "priority": state.priority,
        "specialty": state.specialty,
        "patient_ref": state.patient_ref,
    }
    for name in MILESTONES:
        snap[f"{name}_at"] = iso(state.milestone_at(name))
    snap.update(
        {
            "first_outreach_at": iso(state.first_outreach_at),
            "outreach_attempts": state.outreach_attempts,
            "no_shows": state.no_shows,
            "completions": state.completions,
            "appointment_at": iso(state.appointment_at),
            "in_network": state.in_network,
            "leaked": state.leaked,
            "feedback_score": state.feedback_score,
            "flags": evaluate_flags(state, now, targets),
            "stages": [
                {
                    "stage": stage,
                    "entered_at": iso(entered),
                    "left_at": iso(left),
                    "hours": round(max(0, left - entered) / 3_600_000_000, 6),
                }
                for stage, entered, left in state.stages()
            ],
            "updated_at": iso(state.last_event_at),
            "evaluated_at": iso(now),
        }
    )
    return snap
