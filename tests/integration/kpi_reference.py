"""An independent, deliberately plain reading of SPEC §4, §5 and §7, for checking the
ClickHouse KPI views.

It does not import the code under test (schemas.referral, schemas.flags,
schemas.snapshot). It uses `schemas.events.parse_event` only to decide which raw lines
are valid (validation has its own tests) and then works on the JSON dicts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.errors import EventRejected
from schemas.events import parse_event

HOUR = 3_600_000_000  # µs
DAY = 24 * HOUR
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# SPEC §4: milestone -> the event types whose first occurred_at sets it, in stage order.
MILESTONES: dict[str, tuple[str, ...]] = {
    "created": ("referral.created",),
    "routed": ("referral.routed", "referral.accepted"),
    "contacted": ("patient.responded",),
    "scheduled": ("appointment.scheduled",),
    "seen": ("appointment.completed",),
    "closed": ("report.received",),
}
OPEN = ("created", "routed", "contacted", "scheduled", "seen")
APPOINTMENT_TYPES = (
    "appointment.scheduled",
    "appointment.rescheduled",
    "appointment.cancelled",
    "appointment.no_show",
    "appointment.completed",
)
# SPEC §5 default targets (µs).
ROUTING_TARGET = {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": 72 * HOUR}
SCHEDULING_TARGET = {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 14 * DAY}


def micros(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(microseconds=1)


def load(lines: list[bytes], received_at: datetime) -> dict[tuple[str, str], list[dict]]:
    """Distinct valid events per (org_id, referral_id); first arrival of an event_id wins."""
    referrals: dict[tuple[str, str], list[dict]] = {}
    for line in lines:
        try:
            parse_event(line, received_at)
        except EventRejected:
            continue
        doc = json.loads(line)
        events = referrals.setdefault((doc["org_id"], doc["referral_id"]), [])
        if any(e["event_id"] == doc["event_id"] for e in events):
            continue
        doc["at"] = micros(doc["occurred_at"])
        doc["data"] = doc.get("data") or {}  # absent and null mean the same
        events.append(doc)
    return referrals


def referral(events: list[dict], now: int) -> dict[str, Any]:
    """One referral's derived facts (SPEC §4) and whether it is at risk at `now` (§5)."""
    ordered = sorted(events, key=lambda e: (e["at"], e["event_id"]))

    def of(*types: str) -> list[dict]:
        return [e for e in ordered if e["type"] in types]

    ms: dict[str, int | None] = {}
    for name, types in MILESTONES.items():
        firsts = of(*types)
        ms[name] = firsts[0]["at"] if firsts else None
    created_events = of("referral.created")
    info = created_events[0]["data"] if created_events else {}
    leaked = bool(of("care.out_of_network")) or any(
        e["data"].get("in_network", True) is False for e in of("appointment.completed")
    )
    decision = of("referral.routed", "referral.accepted", "referral.declined")
    if ms["created"] is None:
        status = "orphan"
    elif leaked:
        status = "leaked"
    elif ms["closed"] is not None:
        status = "closed"
    elif of("referral.cancelled") and ms["seen"] is None:
        status = "cancelled"
    elif decision and decision[-1]["type"] == "referral.declined" and ms["seen"] is None:
        status = "declined"
    else:
        status = [m for m in OPEN if ms[m] is not None][-1]

    outreach = of("patient.outreach")
    feedback = of("patient.feedback")
    flags = []
    if status in OPEN:
        priority = info.get("priority", "routine")
        created = ms["created"]
        if ms["routed"] is None and now > created + ROUTING_TARGET[priority]:
            flags.append("routing_overdue")
        if ms["scheduled"] is None and now > created + SCHEDULING_TARGET[priority]:
            flags.append("scheduling_overdue")
        if (
            outreach
            and ms["contacted"] is None
            and ms["scheduled"] is None
            and (len(outreach) >= 3 or now > outreach[0]["at"] + 7 * DAY)
        ):
            flags.append("patient_unresponsive")
        appointments = of(*APPOINTMENT_TYPES)
        if (
            ms["seen"] is None
            and appointments
            and appointments[-1]["type"] in ("appointment.no_show", "appointment.cancelled")
            and now > appointments[-1]["at"] + 3 * DAY
        ):
            flags.append("no_show_not_rescheduled")
        if ms["seen"] is not None and ms["closed"] is None and now > ms["seen"] + 14 * DAY:
            flags.append("loop_not_closed")
        network = of("referral.routed", "appointment.scheduled", "appointment.rescheduled")
        if network and network[-1]["data"].get("in_network", True) is False:
            flags.append("out_of_network")

    present = [(m, ms[m]) for m in MILESTONES if ms[m] is not None]
    stages = []
    if ms["created"] is not None:
        for (name, start), (_, end) in zip(present, present[1:], strict=False):
            stages.append((name, max(0, end - start)))
    return {
        "status": status,
        "specialty": info.get("specialty"),
        "milestones": ms,
        "leaked": leaked,
        "outreach_attempts": len(outreach),
        "no_shows": len(of("appointment.no_show")),
        "completions": len(of("appointment.completed")),
        "feedback": feedback[-1]["data"]["score"] if feedback else None,
        "at_risk": status in OPEN and bool(flags),
        "stages": stages,
    }


def quantile_exact(values: list[float], level: float) -> float | None:
    """ClickHouse quantileExact: sorted v, v[min(n - 1, floor(level * n))]; None when n = 0."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(level * len(ordered)))]


def rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def kpis(cohort: list[dict[str, Any]]) -> dict[str, Any]:
    """The SPEC §7 KPI columns over a cohort (referrals with a `created` milestone)."""

    def hours(f: dict, milestone: str) -> float:
        return max(0, f["milestones"][milestone] - f["milestones"]["created"]) / HOUR

    n = len(cohort)
    completed = sum(f["milestones"]["seen"] is not None for f in cohort)
    closed = sum(f["milestones"]["closed"] is not None for f in cohort)
    leaked = sum(f["leaked"] for f in cohort)
    outreached = [f for f in cohort if f["outreach_attempts"] > 0]
    responded = sum(f["milestones"]["contacted"] is not None for f in outreached)
    no_shows = sum(f["no_shows"] for f in cohort)
    completions = sum(f["completions"] for f in cohort)
    to_schedule = [
        hours(f, "scheduled") for f in cohort if f["milestones"]["scheduled"] is not None
    ]
    to_appointment = [hours(f, "seen") for f in cohort if f["milestones"]["seen"] is not None]
    scores = [f["feedback"] for f in cohort if f["feedback"] is not None]
    return {
        "referrals": n,
        "completed": completed,
        "completion_rate": rate(completed, n),
        "closed_loop": closed,
        "closed_loop_rate": rate(closed, n),
        "leaked": leaked,
        "leakage_rate": rate(leaked, n),
        "outreached": len(outreached),
        "responded": responded,
        "engagement_rate": rate(responded, len(outreached)),
        "no_shows": no_shows,
        "no_show_rate": rate(no_shows, no_shows + completions),
        "median_hours_to_schedule": quantile_exact(to_schedule, 0.5),
        "p90_hours_to_schedule": quantile_exact(to_schedule, 0.9),
        "median_hours_to_appointment": quantile_exact(to_appointment, 0.5),
        "p90_hours_to_appointment": quantile_exact(to_appointment, 0.9),
        "avg_satisfaction": sum(scores) / len(scores) if scores else None,
        "open": sum(f["status"] in OPEN for f in cohort),
        "at_risk": sum(f["at_risk"] for f in cohort),
    }


class Reference:
    """Everything the KPI views should show for a batch of raw lines, judged at `now`."""

    def __init__(self, lines: list[bytes], now: datetime) -> None:
        events = load(lines, now)
        now_us = (now - EPOCH) // timedelta(microseconds=1)
        self.facts = {key: referral(evs, now_us) for key, evs in events.items()}
        self.distinct_events = sum(len(evs) for evs in events.values())
        self.events = [e for evs in events.values() for e in evs]

    def _cohort(self) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        return [(k, f) for k, f in self.facts.items() if f["milestones"]["created"] is not None]

    def kpi_summary(self) -> dict[tuple[str], dict[str, Any]]:
        groups: dict[tuple[str], list[dict]] = defaultdict(list)
        for (org, _), f in self._cohort():
            groups[(org,)].append(f)
        return {key: {"org_id": key[0], **kpis(fs)} for key, fs in groups.items()}

    def kpi_daily(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for (org, _), f in self._cohort():
            created = EPOCH + timedelta(microseconds=f["milestones"]["created"])
            groups[(org, f["specialty"], created.date().isoformat())].append(f)
        return {
            key: {"org_id": key[0], "specialty": key[1], "day": key[2], **kpis(fs)}
            for key, fs in groups.items()
        }

    def stage_stats(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for (org, _), f in self._cohort():
            for stage, duration in f["stages"]:
                groups[(org, f["specialty"], stage)].append(duration / HOUR)
        return {
            key: {
                "org_id": key[0],
                "specialty": key[1],
                "stage": key[2],
                "referrals": len(hours),
                "median_hours": quantile_exact(hours, 0.5),
                "p90_hours": quantile_exact(hours, 0.9),
                "avg_hours": sum(hours) / len(hours),
            }
            for key, hours in groups.items()
        }

    def event_rates_1m(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Distinct events per (UTC minute of occurred_at, org_id, type)."""
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for e in self.events:
            at = EPOCH + timedelta(microseconds=e["at"])
            minute = at.replace(second=0, microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
            counts[(minute, e["org_id"], e["type"])] += 1
        return {
            key: {"window_start": key[0], "org_id": key[1], "type": key[2], "events": n}
            for key, n in counts.items()
        }
