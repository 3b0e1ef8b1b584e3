"""SLA alerts (SPEC §5): a flag turning on raises one alert per (referral, rule); the flag
turning off, or the referral reaching a terminal status, resolves it.

Pure: given a referral's state, the alerts it has firing and a clock reading, say which
alerts to raise and which to resolve. Times are event time, so a replay raises and
resolves the same alerts at the same instants:

- `raised_at` is when the flag started to hold: the deadline it passed, or the time of
  the event that turned it on (schemas.flags.flag_onsets);
- `resolved_at` is the time of the newest event of the referral when the flag was seen
  off (a flag only turns off because of an event), and never before `raised_at`.

An alert's id is derived from (org, referral, rule, raised_at), so raising it again after
a crash gives the same id: consumers and the ClickHouse table treat it as one alert.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from schemas.flags import Judgement, SlaTargets, judge
from schemas.referral import ReferralState
from schemas.snapshot import iso

ALERT_SCHEMA_VERSION = 1

# How urgently a breach needs a person. Stat referrals page one level higher.
SEVERITY: dict[str, str] = {
    "routing_overdue": "high",
    "scheduling_overdue": "high",
    "no_show_not_rescheduled": "high",
    "patient_unresponsive": "medium",
    "loop_not_closed": "medium",
    "out_of_network": "low",
}
_ESCALATED = {"low": "medium", "medium": "high", "high": "critical"}


def severity(rule: str, priority: str | None) -> str:
    level = SEVERITY[rule]
    return _ESCALATED[level] if priority == "stat" else level


def alert_id(org_id: str, referral_id: str, rule: str, raised_at: int) -> str:
    digest = hashlib.sha256(f"{org_id}\x1f{referral_id}\x1f{rule}\x1f{raised_at}".encode())
    return "a_" + digest.hexdigest()[:32]


@dataclass
class Reconciled:
    """What changed: alert events to publish, and the alerts firing afterwards."""

    events: list[dict[str, Any]] = field(default_factory=list)
    firing: dict[str, int] = field(default_factory=dict)  # rule -> raised_at
    raised: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)


def reconcile(
    state: ReferralState,
    firing: dict[str, int],
    now: int,
    targets: SlaTargets,
    judged: Judgement | None = None,
) -> Reconciled:
    """Compare the flags that hold at `now` with the alerts firing; raise and resolve.
    `judged`: the referral's judgement at `now` under `targets`, when the caller has it."""
    if judged is None:
        judged = judge(state, now, targets)
    onsets = judged.onsets
    out = Reconciled()
    for rule in judged.flags:
        if rule in firing:
            out.firing[rule] = firing[rule]
            continue
        raised_at = onsets[rule]
        out.firing[rule] = raised_at
        out.raised.append(rule)
        out.events.append(alert_event(state, rule, "firing", raised_at, None))
    newest = state.last_event_at if state.last_event_at is not None else now
    for rule, raised_at in sorted(firing.items()):
        if rule not in out.firing:
            out.resolved.append(rule)
            out.events.append(
                alert_event(state, rule, "resolved", raised_at, max(raised_at, newest))
            )
    return out


def alert_event(
    state: ReferralState, rule: str, lifecycle: str, raised_at: int, resolved_at: int | None
) -> dict[str, Any]:
    """One message of referrals.alerts.v1 (no patient id, raw or pseudonymized)."""
    return {
        "schema": ALERT_SCHEMA_VERSION,
        "alert_id": alert_id(state.org_id, state.referral_id, rule, raised_at),
        "org_id": state.org_id,
        "referral_id": state.referral_id,
        "rule": rule,
        "severity": severity(rule, state.priority),
        "state": lifecycle,
        "raised_at": iso(raised_at),
        "resolved_at": iso(resolved_at),
        "details": {
            "status": state.status.value,
            "priority": state.priority,
            "specialty": state.specialty,
        },
    }
