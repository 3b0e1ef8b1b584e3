"""At-risk flags (SPEC §5): which open referrals are slipping, judged against a clock.

Pure: the caller passes "now" (wall clock in normal running, an injected clock in
tests, the event-time watermark in replay) and the SLA targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import EventType
from schemas.referral import ReferralState

HOUR = 3_600_000_000  # µs
DAY = 24 * HOUR

FLAG_RULES: tuple[str, ...] = (
    "routing_overdue",
    "scheduling_overdue",
    "patient_unresponsive",
    "no_show_not_rescheduled",
    "loop_not_closed",
    "out_of_network",
)


@dataclass(frozen=True, slots=True)
class SlaTargets:
    """SLA targets in µs; SPEC §5 defaults. Per-org overrides come from configuration."""

    routing: dict[str, int] = field(
        default_factory=lambda: {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": 72 * HOUR}
    )
    scheduling: dict[str, int] = field(
        default_factory=lambda: {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 14 * DAY}
    )
    unresponsive_attempts: int = 3
    unresponsive_after: int = 7 * DAY
    no_show_grace: int = 3 * DAY
    loop_close: int = 14 * DAY


DEFAULT_TARGETS = SlaTargets()


def evaluate_flags(
    state: ReferralState, now: int, targets: SlaTargets = DEFAULT_TARGETS
) -> list[str]:
    """The flags that hold for this referral at `now` (µs), in FLAG_RULES order."""
    if not state.is_open:
        return []
    created = state.milestone_at("created")
    assert created is not None  # open implies created
    priority = state.priority or "routine"
    routed = state.milestone_at("routed")
    contacted = state.milestone_at("contacted")
    scheduled = state.milestone_at("scheduled")
    seen = state.milestone_at("seen")
    closed = state.milestone_at("closed")
    out: list[str] = []
    if routed is None and now > created + targets.routing.get(priority, targets.routing["routine"]):
        out.append("routing_overdue")
    if scheduled is None and now > created + targets.scheduling.get(
        priority, targets.scheduling["routine"]
    ):
        out.append("scheduling_overdue")
    first_outreach = state.first_outreach_at
    if (
        first_outreach is not None
        and contacted is None
        and scheduled is None
        and (
            state.outreach_attempts >= targets.unresponsive_attempts
            or now > first_outreach + targets.unresponsive_after
        )
    ):
        out.append("patient_unresponsive")
    last_appt = state.last_appointment_event
    if (
        seen is None
        and last_appt is not None
        and last_appt[2] in (EventType.APPOINTMENT_NO_SHOW, EventType.APPOINTMENT_CANCELLED)
        and now > last_appt[0] + targets.no_show_grace
    ):
        out.append("no_show_not_rescheduled")
    if seen is not None and closed is None and now > seen + targets.loop_close:
        out.append("loop_not_closed")
    if state.in_network is False:
        out.append("out_of_network")
    return out
