"""One referral's state as a pure function of the set of its distinct events (SPEC §4).

Every field of `ReferralState` is a join over events: the first or latest event of a
kind (ordered by occurred_at, then event_id), a count of distinct events, a flag that
once set stays set. Joins are commutative, associative and idempotent, so applying the
same set of events in any order, with repeats, gives the same state; the event-id set
makes repeats no-ops. That is what lets the pipeline take events late, out of order and
twice without ever replaying history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.events import EventType, TrackedEvent

SortKey = tuple[int, str]  # (occurred_at µs, event_id)

MILESTONES: tuple[str, ...] = ("created", "routed", "contacted", "scheduled", "seen", "closed")
_MILESTONE_OF: dict[str, str] = {
    EventType.REFERRAL_CREATED: "created",
    EventType.REFERRAL_ROUTED: "routed",
    EventType.REFERRAL_ACCEPTED: "routed",
    EventType.PATIENT_RESPONDED: "contacted",
    EventType.APPOINTMENT_SCHEDULED: "scheduled",
    EventType.APPOINTMENT_COMPLETED: "seen",
    EventType.REPORT_RECEIVED: "closed",
}
_ROUTING_DECISIONS = {
    EventType.REFERRAL_ROUTED,
    EventType.REFERRAL_ACCEPTED,
    EventType.REFERRAL_DECLINED,
}
_BOOKINGS = {EventType.APPOINTMENT_SCHEDULED, EventType.APPOINTMENT_RESCHEDULED}
_APPOINTMENT_EVENTS = {
    EventType.APPOINTMENT_SCHEDULED,
    EventType.APPOINTMENT_RESCHEDULED,
    EventType.APPOINTMENT_CANCELLED,
    EventType.APPOINTMENT_NO_SHOW,
    EventType.APPOINTMENT_COMPLETED,
}
_NETWORK_EVENTS = {
    EventType.REFERRAL_ROUTED,
    EventType.APPOINTMENT_SCHEDULED,
    EventType.APPOINTMENT_RESCHEDULED,
}


class Status(StrEnum):
    ORPHAN = "orphan"
    CREATED = "created"
    ROUTED = "routed"
    CONTACTED = "contacted"
    SCHEDULED = "scheduled"
    SEEN = "seen"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    LEAKED = "leaked"


OPEN_STATUSES = frozenset(
    {Status.CREATED, Status.ROUTED, Status.CONTACTED, Status.SCHEDULED, Status.SEEN}
)
TERMINAL_STATUSES = frozenset({Status.CLOSED, Status.CANCELLED, Status.DECLINED, Status.LEAKED})


# The milestones that set an open referral's status, the furthest first (`Status(name)`
# is an enum lookup by value: most of the cost of `status`, asked several times per event).
_PROGRESS = tuple((name, Status(name)) for name in ("seen", "scheduled", "contacted", "routed"))


def _earlier(current: list[Any] | None, key: SortKey, *payload: Any) -> list[Any]:
    """Keep the first by (occurred_at, event_id); lists so the state is JSON-ready."""
    if current is None or (key[0], key[1]) < (current[0], current[1]):
        return [key[0], key[1], *payload]
    return current


def _later(current: list[Any] | None, key: SortKey, *payload: Any) -> list[Any]:
    """Keep the latest by (occurred_at, event_id)."""
    if current is None or (key[0], key[1]) > (current[0], current[1]):
        return [key[0], key[1], *payload]
    return current


@dataclass(slots=True)
class ReferralState:
    """Everything SPEC §4-§7 needs about one referral, and nothing that grows unbounded
    except the distinct event ids (needed to count duplicates as duplicates).

    `event_ids` maps each distinct event id to the position (offset in the referral's
    partition of the tracked topic, -1 when not known) of the message that was accepted
    for it: after a crash, a redelivered message can then tell "I am the accepted copy,
    processed before" from "I am a duplicate" (see schemas/windows.py).
    Join cells are `[occurred_at, event_id, payload...]` lists or None.
    """

    org_id: str
    referral_id: str
    event_ids: dict[str, int] = field(default_factory=dict)
    milestones: dict[str, list[Any]] = field(default_factory=dict)
    created: list[Any] | None = None  # [t, id, priority, specialty]
    patient: list[Any] | None = None  # [t, id, patient_ref] first event carrying one
    routing_decision: list[Any] | None = None  # [t, id, type] latest routed/accepted/declined
    booking: list[Any] | None = None  # [t, id, appointment_at] latest scheduled/rescheduled
    last_appointment_event: list[Any] | None = None  # [t, id, type]
    network: list[Any] | None = None  # [t, id, in_network] latest routed/scheduled/rescheduled
    feedback: list[Any] | None = None  # [t, id, score] latest feedback
    first_outreach: list[Any] | None = None  # [t, id]
    outreach_attempts: int = 0
    no_shows: int = 0
    completions: int = 0
    cancelled: bool = False
    leaked: bool = False
    last_event_at: int | None = None

    # -- applying events -------------------------------------------------------------

    def apply(self, event: TrackedEvent, position: int = -1) -> bool:
        """Fold one event in; return False (and change nothing) for a duplicate.

        `position` is where this copy of the event sits in the input (its offset)."""
        if event.event_id in self.event_ids:
            return False
        self.event_ids[event.event_id] = position
        key: SortKey = (event.occurred_at, event.event_id)
        kind = event.type
        data = event.data

        if self.last_event_at is None or event.occurred_at > self.last_event_at:
            self.last_event_at = event.occurred_at
        if event.patient_ref is not None:
            self.patient = _earlier(self.patient, key, event.patient_ref)
        milestone = _MILESTONE_OF.get(kind)
        if milestone is not None:
            self.milestones[milestone] = _earlier(self.milestones.get(milestone), key)
        if kind == EventType.REFERRAL_CREATED:
            self.created = _earlier(self.created, key, data.get("priority"), data.get("specialty"))
        if kind in _ROUTING_DECISIONS:
            self.routing_decision = _later(self.routing_decision, key, kind)
        if kind in _BOOKINGS:
            self.booking = _later(self.booking, key, data.get("appointment_at"))
        if kind in _APPOINTMENT_EVENTS:
            self.last_appointment_event = _later(self.last_appointment_event, key, kind)
        if kind in _NETWORK_EVENTS:
            self.network = _later(self.network, key, bool(data.get("in_network", True)))
        if kind == EventType.PATIENT_OUTREACH:
            self.outreach_attempts += 1
            self.first_outreach = _earlier(self.first_outreach, key)
        elif kind == EventType.APPOINTMENT_NO_SHOW:
            self.no_shows += 1
        elif kind == EventType.APPOINTMENT_COMPLETED:
            self.completions += 1
            if data.get("in_network", True) is False:
                self.leaked = True
        elif kind == EventType.REFERRAL_CANCELLED:
            self.cancelled = True
        elif kind == EventType.CARE_OUT_OF_NETWORK:
            self.leaked = True
        elif kind == EventType.PATIENT_FEEDBACK:
            self.feedback = _later(self.feedback, key, data.get("score"))
        return True

    # -- derived views -------------------------------------------------------------

    @property
    def key(self) -> str:
        return f"{self.org_id}/{self.referral_id}"

    def accepted_position(self, event_id: str) -> int | None:
        """Where the accepted copy of this event was read (None: not seen)."""
        return self.event_ids.get(event_id)

    @property
    def version(self) -> int:
        """Grows with every distinct event: the newest snapshot always has the largest."""
        return len(self.event_ids)

    def milestone_at(self, name: str) -> int | None:
        cell = self.milestones.get(name)
        return cell[0] if cell is not None else None

    @property
    def priority(self) -> str | None:
        return self.created[2] if self.created else None

    @property
    def specialty(self) -> str | None:
        return self.created[3] if self.created else None

    @property
    def patient_ref(self) -> str | None:
        return self.patient[2] if self.patient else None

    @property
    def appointment_at(self) -> int | None:
        return self.booking[2] if self.booking else None

    @property
    def first_outreach_at(self) -> int | None:
        return self.first_outreach[0] if self.first_outreach else None

    @property
    def in_network(self) -> bool | None:
        """What the latest routed/scheduled/rescheduled event says (None: none yet)."""
        return self.network[2] if self.network else None

    @property
    def feedback_score(self) -> int | None:
        return self.feedback[2] if self.feedback else None

    @property
    def status(self) -> Status:
        """SPEC §4: the first rule that holds."""
        m = self.milestones
        if "created" not in m:
            return Status.ORPHAN
        if self.leaked:
            return Status.LEAKED
        if "closed" in m:
            return Status.CLOSED
        seen = "seen" in m
        if self.cancelled and not seen:
            return Status.CANCELLED
        if (
            not seen
            and self.routing_decision is not None
            and self.routing_decision[2] == EventType.REFERRAL_DECLINED
        ):
            return Status.DECLINED
        for name, status in _PROGRESS:
            if name in m:
                return status
        return Status.CREATED

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def stages(self) -> list[tuple[str, int, int]]:
        """(stage, entered at, left at) for each finished stage, SPEC §4: consecutive
        present milestones; "left" is the next milestone's time (may precede "entered"
        when events disagree, which stage_durations clamps to 0)."""
        if "created" not in self.milestones:
            return []
        present = [(n, self.milestones[n][0]) for n in MILESTONES if n in self.milestones]
        return [(a, ta, tb) for (a, ta), (_, tb) in zip(present, present[1:], strict=False)]

    def stage_durations(self) -> list[tuple[str, int]]:
        """(stage, µs spent in it) for each finished stage, SPEC §4."""
        return [(stage, max(0, left - entered)) for stage, entered, left in self.stages()]

    # -- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "org_id": self.org_id,
            "referral_id": self.referral_id,
            "event_ids": dict(sorted(self.event_ids.items())),
            "milestones": self.milestones,
            "created": self.created,
            "patient": self.patient,
            "routing_decision": self.routing_decision,
            "booking": self.booking,
            "last_appointment_event": self.last_appointment_event,
            "network": self.network,
            "feedback": self.feedback,
            "first_outreach": self.first_outreach,
            "outreach_attempts": self.outreach_attempts,
            "no_shows": self.no_shows,
            "completions": self.completions,
            "cancelled": self.cancelled,
            "leaked": self.leaked,
            "last_event_at": self.last_event_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferralState:
        state = cls(**{k: v for k, v in d.items() if k != "event_ids"})
        ids = d.get("event_ids") or {}
        state.event_ids = dict(ids) if isinstance(ids, dict) else dict.fromkeys(ids, -1)
        return state


def new_state(org_id: str, referral_id: str) -> ReferralState:
    return ReferralState(org_id=org_id, referral_id=referral_id)


def fold(events: list[TrackedEvent]) -> ReferralState:
    """The state of one referral from its events (any order, repeats allowed)."""
    if not events:
        raise ValueError("fold needs at least one event")
    state = new_state(events[0].org_id, events[0].referral_id)
    for event in events:
        state.apply(event)
    return state
