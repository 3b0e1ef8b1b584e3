"""Synthetic referral traffic from several health systems (SPEC §3, §6).

The pipeline has to be right on traffic that looks like production: events of every type
from the systems that really send them, referrals that stall, leak, get declined or
cancelled, patients who never answer, and a delivery layer that re-sends, delivers late,
puts the wrong key on a message and now and then sends garbage. This module makes that
traffic, deterministically for a seed, so tests can compare the pipeline's output with
the events that were sent and demos look like a real referral network.

Two modes share one generator:

* `generate(config, now)` - a batch: `config.referrals` referrals created over
  [`start`, `start + span`), every lifecycle cut at `now`, in delivery order.
* `run(config, ...)` - live traffic to Kafka on a compressed clock (see `LiveTraffic`).

Generation is pure (random.Random seeded from strings, no wall clock, no Kafka); only
`run` imports aiokafka.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from schemas.errors import ErrorCode
from schemas.events import EventType, Priority, Source
from streams.upstream.mix import render, stable_hash

_E = EventType
_MIN_GAP = timedelta(minutes=1)  # between two events of one referral: order survives rounding


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Rates are per message (per event for `invalid_rate`).

    `referrals`, `start` and `span` shape a batch (`generate`); live mode (`run`) creates
    referrals as its clock advances, runs `time_scale` simulated seconds per real second
    and starts its clock `history` before the wall clock.
    """

    seed: int = 7
    orgs: tuple[str, ...] = ("northwind", "lakeside", "summit")
    referrals: int = 500
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    span: timedelta = timedelta(days=60)
    duplicate_rate: float = 0.03
    late_rate: float = 0.05
    invalid_rate: float = 0.01
    null_key_rate: float = 0.02
    wrong_key_rate: float = 0.02
    orphan_rate: float = 0.015
    time_scale: float = 4320.0  # live: one simulated day every 20 real seconds
    history: timedelta = timedelta(days=30)  # live: how far back the clock starts

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("SimConfig.start must be timezone-aware")
        if not self.orgs or any(not o or "/" in o or len(o) > 64 for o in self.orgs):
            raise ValueError("SimConfig.orgs: 1-64 character org ids without '/'")
        if self.referrals < 0 or self.span < timedelta(0):
            raise ValueError("SimConfig.referrals and span must not be negative")
        for name in (
            "duplicate_rate",
            "late_rate",
            "invalid_rate",
            "null_key_rate",
            "wrong_key_rate",
            "orphan_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SimConfig.{name} must be within [0, 1]")
        if self.null_key_rate + self.wrong_key_rate > 1.0:
            raise ValueError("SimConfig.null_key_rate + wrong_key_rate must be <= 1")
        if self.time_scale < 1.0 or self.history < timedelta(0):
            raise ValueError("SimConfig.time_scale must be >= 1 and history >= 0")


@dataclass(frozen=True)
class SimMessage:
    """One Kafka message as a producer would send it.

    `fault` names the defect of an invalid message (a key of `FAULTS`); `late` marks a
    message held back well past its `occurred_at`.
    """

    key: bytes | None
    value: bytes
    valid: bool
    duplicate: bool
    fault: str | None = None
    late: bool = False


# The defects deliberately put into invalid messages, and the DLQ code each must get.
FAULTS: dict[str, ErrorCode] = {
    "truncated_json": ErrorCode.INVALID_JSON,
    "not_an_object": ErrorCode.NOT_AN_OBJECT,
    "missing_event_id": ErrorCode.MISSING_FIELD,
    "naive_occurred_at": ErrorCode.NAIVE_TIMESTAMP,
    "naive_appointment_at": ErrorCode.NAIVE_TIMESTAMP,
    "unknown_type": ErrorCode.UNKNOWN_TYPE,
    "unknown_source": ErrorCode.UNKNOWN_SOURCE,
    "missing_data_field": ErrorCode.MISSING_DATA_FIELD,
    "bad_enum": ErrorCode.INVALID_DATA_FIELD,
    "string_boolean": ErrorCode.INVALID_DATA_FIELD,
    "oversize": ErrorCode.TOO_LARGE,
    "invalid_utf8": ErrorCode.INVALID_ENCODING,
    "future_occurred_at": ErrorCode.FUTURE_TIMESTAMP,
    "zero_date": ErrorCode.TIMESTAMP_OUT_OF_RANGE,
}


# -- health systems ----------------------------------------------------------------------

SPECIALTIES: tuple[str, ...] = (
    "cardiology",
    "orthopedics",
    "dermatology",
    "neurology",
    "gastroenterology",
    "oncology",
    "behavioral_health",
    "endocrinology",
    "pulmonology",
    "urology",
)

_REASONS: dict[str, tuple[str, ...]] = {
    "cardiology": ("chest pain on exertion", "new atrial fibrillation", "abnormal ECG"),
    "orthopedics": ("knee pain, failed PT", "suspected rotator cuff tear", "hip osteoarthritis"),
    "dermatology": ("changing nevus", "café-au-lait spots", "refractory eczema"),
    "neurology": ("new-onset seizure", "chronic migraine", "peripheral neuropathy"),
    "gastroenterology": ("positive FIT test", "chronic GERD", "elevated liver enzymes"),
    "oncology": ("suspicious breast mass", "abnormal CBC", "lung nodule follow-up"),
    "behavioral_health": ("major depression", "generalized anxiety", "ADHD evaluation"),
    "endocrinology": ("uncontrolled type 2 diabetes", "thyroid nodule", "hypercalcemia"),
    "pulmonology": ("persistent cough", "COPD exacerbations", "abnormal PFTs"),
    "urology": ("hematuria", "elevated PSA", "recurrent kidney stones"),
}


@dataclass(frozen=True)
class OrgProfile:
    """How one health system behaves: volume, specialty mix, speed and leakage."""

    offsets: tuple[int, int]  # minutes east of UTC: standard time, daylight saving time
    volume: float
    specialties: tuple[tuple[str, float], ...]
    routing_factor: float  # multiplies the time to route
    scheduling_factor: float  # multiplies the time to schedule and the booking lead time
    decline_rate: float
    cancel_rate: float
    response_rate: float  # chance the patient answers one outreach attempt
    no_show_rate: float
    leak_rate: float  # completed out of network or care bought elsewhere
    oon_routing_rate: float  # routed to an out-of-network provider
    report_rate: float  # consult report reaches the referrer
    feedback_rate: float


PROFILES: dict[str, OrgProfile] = {
    # A large academic system in the east: fast, oncology- and cardiology-heavy.
    "northwind": OrgProfile(
        offsets=(-300, -240),
        volume=1.3,
        specialties=(
            ("cardiology", 3.0),
            ("oncology", 2.5),
            ("orthopedics", 2.0),
            ("neurology", 1.5),
            ("gastroenterology", 1.5),
            ("dermatology", 1.0),
            ("endocrinology", 1.0),
            ("behavioral_health", 1.0),
            ("pulmonology", 0.8),
            ("urology", 0.7),
        ),
        routing_factor=0.9,
        scheduling_factor=1.0,
        decline_rate=0.04,
        cancel_rate=0.05,
        response_rate=0.6,
        no_show_rate=0.07,
        leak_rate=0.03,
        oon_routing_rate=0.02,
        report_rate=0.9,
        feedback_rate=0.45,
    ),
    # A west-coast community system: slow to route and schedule, many no-shows.
    "lakeside": OrgProfile(
        offsets=(-480, -420),
        volume=1.0,
        specialties=(
            ("behavioral_health", 3.0),
            ("orthopedics", 2.5),
            ("dermatology", 1.5),
            ("cardiology", 1.2),
            ("gastroenterology", 1.2),
            ("neurology", 1.0),
            ("endocrinology", 1.0),
            ("pulmonology", 0.8),
            ("urology", 0.6),
            ("oncology", 0.5),
        ),
        routing_factor=1.4,
        scheduling_factor=2.0,
        decline_rate=0.06,
        cancel_rate=0.07,
        response_rate=0.5,
        no_show_rate=0.13,
        leak_rate=0.05,
        oon_routing_rate=0.03,
        report_rate=0.85,
        feedback_rate=0.35,
    ),
    # A mountain-region network with thin specialist coverage: patients leak.
    "summit": OrgProfile(
        offsets=(-420, -360),
        volume=0.8,
        specialties=(
            ("dermatology", 2.5),
            ("endocrinology", 2.0),
            ("gastroenterology", 2.0),
            ("orthopedics", 1.5),
            ("cardiology", 1.2),
            ("urology", 1.0),
            ("neurology", 0.8),
            ("pulmonology", 0.8),
            ("behavioral_health", 0.8),
            ("oncology", 0.6),
        ),
        routing_factor=1.0,
        scheduling_factor=1.2,
        decline_rate=0.05,
        cancel_rate=0.05,
        response_rate=0.55,
        no_show_rate=0.08,
        leak_rate=0.12,
        oon_routing_rate=0.08,
        report_rate=0.75,
        feedback_rate=0.4,
    ),
}


def profile_for(org: str) -> OrgProfile:
    """The built-in profile, or a plausible one derived from the org's name."""
    if org in PROFILES:
        return PROFILES[org]
    rng = random.Random(f"profile/{org}")
    standard = rng.choice((-600, -540, -480, -420, -360, -300, -240, 0, 60, 120))
    weights = tuple((s, round(rng.uniform(0.5, 3.0), 2)) for s in SPECIALTIES)
    return OrgProfile(
        offsets=(standard, standard + 60),
        volume=rng.uniform(0.6, 1.3),
        specialties=weights,
        routing_factor=rng.uniform(0.8, 1.5),
        scheduling_factor=rng.uniform(0.8, 2.0),
        decline_rate=rng.uniform(0.03, 0.07),
        cancel_rate=rng.uniform(0.04, 0.07),
        response_rate=rng.uniform(0.45, 0.65),
        no_show_rate=rng.uniform(0.06, 0.13),
        leak_rate=rng.uniform(0.03, 0.12),
        oon_routing_rate=rng.uniform(0.02, 0.08),
        report_rate=rng.uniform(0.75, 0.92),
        feedback_rate=rng.uniform(0.3, 0.45),
    )


@dataclass(frozen=True)
class _Pace:
    """Median hours of each wait for one priority (waits are log-normal)."""

    route: float
    accept: float
    outreach: float
    retry: float
    respond: float
    schedule: float
    lead: float  # booking to appointment
    report: float


_PACE: dict[Priority, _Pace] = {
    Priority.STAT: _Pace(0.6, 0.4, 0.4, 1.5, 0.6, 0.7, 10.0, 8.0),
    Priority.URGENT: _Pace(6.0, 3.0, 4.0, 14.0, 5.0, 5.0, 60.0, 30.0),
    Priority.ROUTINE: _Pace(26.0, 12.0, 20.0, 52.0, 22.0, 26.0, 260.0, 80.0),
}
_PRIORITY_WEIGHTS = ((Priority.ROUTINE, 0.72), (Priority.URGENT, 0.21), (Priority.STAT, 0.07))
_CHANNEL_WEIGHTS = (
    ("sms", 0.35),
    ("phone", 0.25),
    ("portal", 0.15),
    ("email", 0.15),
    ("letter", 0.10),
)
_SCORE_WEIGHTS = ((5, 0.45), (4, 0.30), (3, 0.12), (2, 0.07), (1, 0.06))
# Mean messages per referral with the default rates; live mode sizes its arrival rate by it.
_MESSAGES_PER_REFERRAL = 6.5


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


# -- one referral's story ----------------------------------------------------------------


@dataclass(slots=True)
class _Event:
    at: datetime  # UTC
    type: EventType
    source: Source
    data: dict[str, Any]


@dataclass(slots=True)
class _Referral:
    org: str
    referral_id: str
    created_at: datetime
    orphan: bool = False


class _Story:
    """Writes one referral's events in time order, each at least a minute after the last."""

    def __init__(self, rng: random.Random, profile: OrgProfile, ref: _Referral) -> None:
        self.rng = rng
        self.profile = profile
        self.ref = ref
        self.t = ref.created_at
        self.priority: Priority = _pick(rng, _PRIORITY_WEIGHTS)
        self.pace = _PACE[self.priority]
        self.events: list[_Event] = []
        self.appointments = 0

    def wait(self, median_hours: float, sigma: float = 0.8) -> float:
        return self.rng.lognormvariate(math.log(median_hours), sigma)

    def emit(self, kind: EventType, source: Source, after_hours: float, **data: Any) -> None:
        self.t += max(timedelta(hours=after_hours), _MIN_GAP)
        self.events.append(_Event(self.t, kind, source, data))

    def source(self, usual: Source, manual: float = 0.01) -> Source:
        return Source.MANUAL if self.rng.random() < manual else usual

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def slot(self, at: datetime) -> datetime:
        """A bookable slot: 15-minute grid; clinic hours on weekdays unless stat."""
        local = at.astimezone(local_zone(self.profile, at)).replace(second=0, microsecond=0)
        local += timedelta(minutes=(-local.minute) % 15)
        if self.priority is not Priority.STAT:
            if local.hour >= 16:
                local = (local + timedelta(days=1)).replace(hour=8)
            if local.hour < 8:
                local = local.replace(hour=8 + self.rng.randrange(8), minute=0)
            while local.weekday() >= 5:
                local += timedelta(days=1)
        return local

    def appointment_id(self) -> str:
        self.appointments += 1
        return f"A-{self.ref.referral_id[2:]}-{self.appointments}"

    # -- the lifecycle -------------------------------------------------------------------

    def tell(self) -> list[_Event]:
        p, rng = self.profile, self.rng
        specialty = _pick(rng, p.specialties)
        created: dict[str, Any] = {
            "priority": self.priority.value,
            "specialty": specialty,
            "referring_provider_id": f"PRV-{rng.randint(1000, 9999)}",
        }
        if self.chance(0.55):
            created["referred_to_provider_id"] = f"PRV-{rng.randint(1000, 9999)}"
        if self.chance(0.1):
            created["in_network"] = True
        created["reason"] = rng.choice(_REASONS.get(specialty, ("consultation",)))
        self.events.append(_Event(self.t, _E.REFERRAL_CREATED, Source.EHR, created))

        if self.chance(p.cancel_rate * 0.4):
            self._cancel(self.wait(30), "referring provider withdrew the referral")
            return self.events
        in_network = self._route()
        if in_network is None:
            return self.events
        if not self._reach_patient():
            return self.events
        if self.chance(p.cancel_rate * 0.4):
            self._cancel(self.wait(48), "patient declined the referral")
            return self.events
        seen = self._book(in_network)
        if seen is not None:
            self._after_visit(seen, in_network)
        return self.events

    def _cancel(self, after_hours: float, reason: str) -> None:
        source = self.source(Source.EHR, manual=0.2)
        self.emit(_E.REFERRAL_CANCELLED, source, after_hours, reason=reason)

    def _route(self) -> bool | None:
        """Routing and acceptance; returns in_network, or None when the referral ends."""
        p, pace = self.profile, self.pace
        route_hours = self.wait(pace.route * p.routing_factor)
        if self.chance(p.decline_rate):
            source = self.source(self.rng.choice((Source.EHR, Source.REFERRAL_PLATFORM)))
            reason = self.rng.choice(
                (
                    "outside scope of practice",
                    "insufficient clinical information",
                    "provider not accepting new patients",
                )
            )
            self.emit(_E.REFERRAL_DECLINED, source, route_hours, reason=reason)
            if not self.chance(0.4):
                return None
            route_hours = self.wait(pace.route * p.routing_factor)
        in_network = not self.chance(p.oon_routing_rate)
        platform = self.chance(0.3)
        if self.chance(0.12):  # the receiving clinic accepts straight from its work queue
            self.emit(_E.REFERRAL_ACCEPTED, Source.REFERRAL_PLATFORM, route_hours)
            return True
        routed: dict[str, Any] = {"referred_to_provider_id": f"PRV-{self.rng.randint(1000, 9999)}"}
        if not in_network or self.chance(0.3):
            routed["in_network"] = in_network
        source = Source.REFERRAL_PLATFORM if platform else self.source(Source.EHR)
        self.emit(_E.REFERRAL_ROUTED, source, route_hours, **routed)
        if self.chance(0.6):
            source = Source.REFERRAL_PLATFORM if platform else self.source(Source.EHR)
            self.emit(_E.REFERRAL_ACCEPTED, source, self.wait(pace.accept))
        return in_network

    def _reach_patient(self) -> bool:
        """Outreach attempts; False when the patient is never reached (the story ends)."""
        p, pace, rng = self.profile, self.pace, self.rng
        if self.chance(0.12):  # the patient called the clinic first
            return True
        attempts = _pick(rng, ((1, 0.4), (2, 0.3), (3, 0.2), (4, 0.1)))
        stat = self.priority is Priority.STAT
        for attempt in range(attempts):
            channel = "phone" if stat else _pick(rng, _CHANNEL_WEIGHTS)
            after = self.wait(pace.outreach if attempt == 0 else pace.retry)
            self.emit(_E.PATIENT_OUTREACH, self.source(Source.COMMS, 0.005), after, channel=channel)
            if self.chance(min(0.95, p.response_rate * (1.4 if stat else 1.0))):
                reply = channel if self.chance(0.8) else _pick(rng, _CHANNEL_WEIGHTS)
                data = {"channel": reply} if self.chance(0.85) else {}
                self.emit(_E.PATIENT_RESPONDED, Source.COMMS, self.wait(pace.respond), **data)
                return True
        fate = rng.random()
        if fate < 3 * p.leak_rate:
            self._went_elsewhere(self.wait(24 * 20, 0.5))
        elif fate < 3 * p.leak_rate + 0.3:
            self._cancel(self.wait(24 * 18, 0.4), "patient unreachable")
        return False  # otherwise it stays open: patient_unresponsive

    def _went_elsewhere(self, after_hours: float) -> None:
        data = {"provider_id": f"NPI-{self.rng.randint(10**9, 2 * 10**9 - 1)}"}
        if self.chance(0.2):
            data = {}
        self.emit(_E.CARE_OUT_OF_NETWORK, Source.CLAIMS, after_hours, **data)

    def _book_at(self, lead_hours: float, in_network: bool) -> datetime:
        """Give the event just emitted a slot `lead_hours` ahead (always in its future)."""
        event = self.events[-1]
        at = self.slot(self.t + timedelta(hours=max(lead_hours, 0.5)))
        event.data["appointment_at"] = at
        if not in_network or (event.type is _E.APPOINTMENT_SCHEDULED and self.chance(0.5)):
            event.data["in_network"] = in_network
        return at

    def _book(self, in_network: bool) -> datetime | None:
        """Scheduling through the visit; returns when the patient was seen, if ever."""
        p, pace, rng = self.profile, self.pace, self.rng
        sched = self.source(Source.SCHEDULING)
        lead = pace.lead * p.scheduling_factor
        appointment_id = self.appointment_id()
        self.emit(
            _E.APPOINTMENT_SCHEDULED,
            sched,
            self.wait(pace.schedule * p.scheduling_factor),
            appointment_id=appointment_id,
        )
        appointment_at = self._book_at(self.wait(lead, 0.5), in_network)
        for _ in range(4):
            if self.chance(0.12):  # the clinic moves the visit to a later slot
                before = self._hours_until(appointment_at) * rng.uniform(0.2, 0.8)
                self.emit(_E.APPOINTMENT_RESCHEDULED, sched, before, appointment_id=appointment_id)
                later = self._hours_until(appointment_at) + self.wait(pace.lead * 0.4, 0.6)
                appointment_at = self._book_at(later, in_network)
            outcome = rng.random()
            if outcome < 0.06:  # cancelled before the day
                before = self._hours_until(appointment_at) * rng.uniform(0.3, 0.9)
                reason = rng.choice(("patient request", "provider unavailable", "weather"))
                self.emit(
                    _E.APPOINTMENT_CANCELLED,
                    sched,
                    before,
                    appointment_id=appointment_id,
                    reason=reason,
                )
                rebook = 0.55
            elif outcome < 0.06 + p.no_show_rate:
                self.t = max(self.t, appointment_at)
                self.emit(
                    _E.APPOINTMENT_NO_SHOW,
                    sched,
                    rng.uniform(0.25, 1.0),
                    appointment_id=appointment_id,
                )
                rebook = 0.65
            else:
                self.t = max(self.t, appointment_at)
                leaked = not in_network or self.chance(p.leak_rate * 0.4)
                data: dict[str, Any] = {"appointment_id": appointment_id}
                if leaked or self.chance(0.4):
                    data["in_network"] = not leaked
                self.emit(_E.APPOINTMENT_COMPLETED, sched, rng.uniform(0.5, 1.5), **data)
                return self.t
            if not self.chance(rebook):
                if self.chance(0.4):
                    self._cancel(self.wait(24 * 10, 0.5), "patient did not rebook")
                return None  # otherwise open: no_show_not_rescheduled
            appointment_id = self.appointment_id()
            self.emit(
                _E.APPOINTMENT_RESCHEDULED,
                sched,
                self.wait(pace.schedule),
                appointment_id=appointment_id,
            )
            appointment_at = self._book_at(self.wait(lead, 0.5), in_network)
        return None

    def _hours_until(self, at: datetime) -> float:
        return max(0.0, (at - self.t).total_seconds() / 3600)

    def _after_visit(self, seen: datetime, in_network: bool) -> None:
        p, rng = self.profile, self.rng
        tail: list[_Event] = []
        if rng.random() < p.report_rate * (0.7 if not in_network else 1.0):
            at = seen + max(timedelta(hours=self.wait(self.pace.report, 1.0)), _MIN_GAP)
            tail.append(_Event(at, _E.REPORT_RECEIVED, self.source(Source.EHR, 0.03), {}))
        if rng.random() < p.feedback_rate:
            at = seen + timedelta(hours=rng.uniform(20, 120))
            score = _pick(rng, _SCORE_WEIGHTS)
            tail.append(_Event(at, _E.PATIENT_FEEDBACK, Source.COMMS, {"score": score}))
        if rng.random() < p.leak_rate * 0.5:  # follow-up care bought outside the network
            at = seen + timedelta(days=rng.uniform(10, 60))
            tail.append(
                _Event(
                    at,
                    _E.CARE_OUT_OF_NETWORK,
                    Source.CLAIMS,
                    {"provider_id": f"NPI-{rng.randint(10**9, 2 * 10**9 - 1)}"},
                )
            )
        tail.sort(key=lambda e: e.at)
        for event in tail:  # keep the one-minute spacing and time order
            if event.at < self.t + _MIN_GAP:
                event.at = self.t + _MIN_GAP
            self.t = event.at
            self.events.append(event)


# -- serialization -----------------------------------------------------------------------

_PRECISION = {
    Source.EHR: "seconds",
    Source.SCHEDULING: "seconds",
    Source.REFERRAL_PLATFORM: "milliseconds",
    Source.COMMS: "microseconds",
    Source.CLAIMS: "seconds",
    Source.MANUAL: "seconds",
}
_UTC_FEEDS = {Source.REFERRAL_PLATFORM, Source.CLAIMS}


def local_zone(profile: OrgProfile, at: datetime) -> timezone:
    """The org's UTC offset at `at`: daylight time from the second Sunday of March to the
    first Sunday of November (US rule, to the day; feeds disagree around 2 a.m. anyway)."""
    year = at.year
    march = datetime(year, 3, 8, tzinfo=UTC)
    november = datetime(year, 11, 1, tzinfo=UTC)
    dst_start = march + timedelta(days=(6 - march.weekday()) % 7)
    dst_end = november + timedelta(days=(6 - november.weekday()) % 7)
    minutes = profile.offsets[1] if dst_start <= at < dst_end else profile.offsets[0]
    return timezone(timedelta(minutes=minutes))


def _stamp(at: datetime, tz: tzinfo, timespec: str = "seconds") -> str:
    """RFC 3339 with an explicit offset, e.g. 2025-03-04T15:20:00-05:00."""
    return at.astimezone(tz).isoformat(timespec=timespec)


def _event_id(seed: int, org: str, referral_id: str, tag: str | int) -> str:
    digest = hashlib.blake2b(f"{seed}/{org}/{referral_id}/{tag}".encode(), digest_size=12)
    return "e-" + digest.hexdigest()


def _document(
    event: _Event,
    event_id: str,
    ref: _Referral,
    patient_id: str,
    profile: OrgProfile,
    rng: random.Random,
) -> dict[str, Any]:
    tz = UTC if event.source in _UTC_FEEDS else local_zone(profile, event.at)
    data = {  # appointment times are already in the clinic's local time
        k: v.isoformat(timespec="seconds") if isinstance(v, datetime) else v
        for k, v in event.data.items()
    }
    doc: dict[str, Any] = {
        "event_id": event_id,
        "referral_id": ref.referral_id,
        "org_id": ref.org,
        "type": event.type.value,
        "occurred_at": _stamp(event.at, tz, _PRECISION[event.source]),
        "source": event.source.value,
    }
    if event.source is not Source.REFERRAL_PLATFORM:
        doc["patient_id"] = patient_id
    doc["data"] = data
    if event.source is Source.REFERRAL_PLATFORM:  # unknown top-level fields are ignored
        doc["trace_id"] = f"{rng.getrandbits(64):016x}"
    elif rng.random() < 0.08:
        doc["schema_version"] = "1"
    return doc


def _dumps(doc: Any, pretty_separators: bool = False) -> bytes:
    separators = (", ", ": ") if pretty_separators else (",", ":")
    return json.dumps(doc, separators=separators, ensure_ascii=False).encode("utf-8")


class _Faults:
    """Turns a valid event document into an invalid message, cycling through FAULTS."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.kinds = list(FAULTS)
        random.Random(f"{seed}/faults").shuffle(self.kinds)
        self.count = 0

    def make(self, doc: dict[str, Any], rng: random.Random, now: datetime) -> tuple[str, bytes]:
        kind = self.kinds[self.count % len(self.kinds)]
        self.count += 1
        doc = {**doc, "data": dict(doc["data"])}
        doc["event_id"] = _event_id(
            self.seed, doc["org_id"], doc["referral_id"], f"invalid/{self.count}"
        )
        local = datetime.fromisoformat(doc["occurred_at"]).tzinfo
        data = doc["data"]
        if kind == "truncated_json":
            text = _dumps(doc).decode("utf-8")
            return kind, text[: rng.randint(1, len(text) - 2)].encode("utf-8")
        if kind == "not_an_object":
            return kind, _dumps([doc])
        if kind == "missing_event_id":
            del doc["event_id"]
        elif kind == "naive_occurred_at":
            doc["occurred_at"] = doc["occurred_at"][:19]
        elif kind == "naive_appointment_at":
            at = datetime.fromisoformat(doc["occurred_at"]) + timedelta(days=rng.randint(2, 30))
            doc["type"] = _E.APPOINTMENT_SCHEDULED.value
            doc["source"] = Source.SCHEDULING.value
            doc["data"] = {
                "appointment_id": f"A-{doc['referral_id'][2:]}-9",
                "appointment_at": at.replace(tzinfo=None).isoformat(),
            }
        elif kind == "unknown_type":
            doc["type"] = rng.choice(
                (
                    "referral.escalated",
                    "appointment.confirmed",
                    "Referral.Created",
                    "patient.outreach.v2",
                )
            )
        elif kind == "unknown_source":
            doc["source"] = rng.choice(("fax", "hl7", "EHR", "patient_portal"))
        elif kind == "missing_data_field":
            self._drop_required(doc)
        elif kind == "bad_enum":
            if doc["type"] == _E.REFERRAL_CREATED:
                data["priority"] = rng.choice(("ASAP", "high", "elective"))
            else:
                doc["type"] = _E.PATIENT_OUTREACH.value
                doc["data"] = {"channel": rng.choice(("voicemail", "mychart", "fax"))}
        elif kind == "string_boolean":
            doc["type"] = _E.REFERRAL_ROUTED.value
            doc["data"] = {
                "referred_to_provider_id": f"PRV-{rng.randint(1000, 9999)}",
                "in_network": rng.choice(("false", "Y", "yes")),
            }
        elif kind == "oversize":
            data["notes"] = "Clinical summary attached. " * 2800  # ~75 KB
        elif kind == "invalid_utf8":
            data["reason"] = "@@latin1@@"  # a Latin-1 producer: not UTF-8
            return kind, _dumps(doc).replace(b"@@latin1@@", b"Gu\xe9rin, caf\xe9 au lait")
        elif kind == "future_occurred_at":
            ahead = now + timedelta(days=rng.uniform(3, 60))
            doc["occurred_at"] = _stamp(ahead, local or UTC)
        elif kind == "zero_date":
            doc["occurred_at"] = "0001-01-01T00:00:00+00:00"
        return kind, _dumps(doc)

    @staticmethod
    def _drop_required(doc: dict[str, Any]) -> None:
        required = {
            _E.REFERRAL_CREATED: "priority",
            _E.PATIENT_OUTREACH: "channel",
            _E.APPOINTMENT_SCHEDULED: "appointment_id",
            _E.APPOINTMENT_RESCHEDULED: "appointment_at",
            _E.APPOINTMENT_CANCELLED: "appointment_id",
            _E.APPOINTMENT_NO_SHOW: "appointment_id",
            _E.APPOINTMENT_COMPLETED: "appointment_id",
            _E.PATIENT_FEEDBACK: "score",
        }.get(EventType(doc["type"]))
        if required is None:
            doc["type"] = _E.APPOINTMENT_NO_SHOW.value
            doc["data"] = {}
        else:
            doc["data"].pop(required, None)


# -- from stories to messages ------------------------------------------------------------


def _lag(rng: random.Random, median_hours: float, sigma: float, lo: float, hi: float) -> timedelta:
    hours = min(hi, max(lo, rng.lognormvariate(math.log(median_hours), sigma)))
    return timedelta(hours=hours)


def _referral_messages(
    config: SimConfig,
    ref: _Referral,
    cut: datetime | None,
    now: datetime,
    other_ids: Sequence[str],
    faults: _Faults,
) -> list[tuple[datetime, SimMessage]]:
    """One referral's messages with their delivery times (event time, plus delays)."""
    rng = random.Random(f"{config.seed}/{ref.org}/{ref.referral_id}")
    story = _Story(rng, profile_for(ref.org), ref)
    events = story.tell()
    patient_id = f"MRN-{rng.randint(100000, 999999)}"
    out: list[tuple[datetime, SimMessage]] = []
    for seq, event in enumerate(events):
        if cut is not None and event.at > cut:
            break
        if seq == 0 and ref.orphan:
            continue  # the referral.created that never arrives
        event_id = _event_id(config.seed, ref.org, ref.referral_id, seq)
        doc = _document(event, event_id, ref, patient_id, story.profile, rng)
        value = _dumps(doc, pretty_separators=event.source is Source.SCHEDULING)
        late = rng.random() < config.late_rate
        delay = _lag(rng, 8.0, 1.2, 0.5, 24 * 7) if late else timedelta(seconds=rng.uniform(0, 45))
        deliver_at = event.at + delay
        key = _key(rng, config, ref.referral_id, other_ids)
        out.append((deliver_at, SimMessage(key, value, True, False, late=late)))
        if rng.random() < config.duplicate_rate:
            again = deliver_at + _lag(rng, 1.0, 1.5, 1 / 3600, 72.0)
            dup_key = _key(rng, config, ref.referral_id, other_ids)
            out.append((again, SimMessage(dup_key, value, True, True, late=late)))
        if rng.random() < config.invalid_rate:
            kind, raw = faults.make(doc, rng, now)
            bad_key = _key(rng, config, ref.referral_id, other_ids)
            when = deliver_at + timedelta(seconds=rng.uniform(-30, 600))
            out.append((when, SimMessage(bad_key, raw, False, False, fault=kind)))
    return out


def _key(
    rng: random.Random, config: SimConfig, referral_id: str, other_ids: Sequence[str]
) -> bytes | None:
    """The Kafka key: usually the referral id, sometimes missing or another referral's."""
    r = rng.random()
    if r < config.null_key_rate:
        return None
    if r < config.null_key_rate + config.wrong_key_rate:
        other = rng.choice(other_ids) if other_ids else referral_id
        if other == referral_id:
            other = f"{referral_id}-0"
        return other.encode("utf-8")
    return referral_id.encode("utf-8")


def _plan(config: SimConfig) -> list[_Referral]:
    """Which org creates each batch referral, and when; ids count up per org."""
    rng = random.Random(f"{config.seed}/referrals")
    volumes = [profile_for(org).volume for org in config.orgs]
    drafts = []
    for _ in range(config.referrals):
        org = rng.choices(config.orgs, weights=volumes)[0]
        created = config.start + config.span * rng.random()
        drafts.append((created, org, rng.random() < config.orphan_rate))
    drafts.sort(key=lambda d: d[0])
    counters = dict.fromkeys(config.orgs, 100000)
    plan = []
    for created, org, orphan in drafts:
        counters[org] += 1
        plan.append(_Referral(org, f"R-{counters[org]}", created, orphan))
    return plan


def generate(config: SimConfig, now: datetime) -> list[SimMessage]:
    """A batch of traffic, in delivery order; nothing occurs after `now`.

    Referral ids count up per org (R-100001, ...), so two orgs share ids: a referral is
    the pair (org_id, referral_id). Deterministic for a config and `now`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    plan = _plan(config)
    other_ids = [ref.referral_id for ref in plan]
    faults = _Faults(config.seed)
    timed: list[tuple[datetime, SimMessage]] = []
    for ref in plan:
        if ref.created_at <= now:
            timed.extend(_referral_messages(config, ref, now, now, other_ids, faults))
    timed.sort(key=lambda item: item[0])  # stable: ties keep generation order
    return [message for _, message in timed]


def canonical_events(messages: Iterable[SimMessage]) -> list[dict[str, Any]]:
    """The distinct valid events as JSON dicts, first arrival wins (dedup by event_id)."""
    seen: set[str] = set()
    events = []
    for message in messages:
        if not message.valid:
            continue
        doc = json.loads(message.value)
        if doc["event_id"] not in seen:
            seen.add(doc["event_id"])
            events.append(doc)
    return events


def write_ndjson(messages: Iterable[SimMessage], path: str | Path) -> int:
    """Write each message's value bytes as one line for `reftrack produce FILE`.

    NDJSON cannot carry every message: values that are not UTF-8 (the `invalid_utf8`
    fault) are skipped, as would be any containing a line break; keys are not written
    (`produce` keys by the line's referral_id). Other invalid messages are kept byte for
    byte, non-JSON ones (`truncated_json`) too, so they reach the DLQ. Returns the number
    of lines written.
    """
    written = 0
    with Path(path).open("wb") as handle:
        for message in messages:
            try:
                message.value.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if b"\n" in message.value or b"\r" in message.value:
                continue
            handle.write(message.value + b"\n")
            written += 1
    return written


# -- live traffic ------------------------------------------------------------------------


class LiveTraffic:
    """Live referral traffic on a compressed clock that never passes the wall clock.

    The simulated clock starts `config.history` before the wall clock and runs
    `config.time_scale` times faster, so weeks of referral lifecycles unfold in minutes,
    yet every `occurred_at` is already in the past when its message leaves. Referrals
    arrive as a Poisson process sized so the traffic averages about `rate` messages per
    real second once lifecycles are under way; each message waits until the simulated
    clock reaches its delivery time. When the simulated clock catches up with the wall
    clock a new epoch starts `history` back again with fresh referral ids
    (R-<epoch tag>-<n>); the previous epoch's events that are not yet due are dropped
    (those referrals simply stay open, as in a batch cut at "now").
    """

    def __init__(self, config: SimConfig, rate: float, wall: datetime) -> None:
        if wall.tzinfo is None:
            raise ValueError("wall must be timezone-aware")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.config = config
        self.wall = wall
        self.referrals = 0
        self.epochs = 0
        self._rng = random.Random(f"{config.seed}/live")
        self._faults = _Faults(config.seed)
        self._volumes = [profile_for(org).volume for org in config.orgs]
        # Referrals per simulated second, so that messages per real second ~ rate.
        self._arrival_rate = rate / (_MESSAGES_PER_REFERRAL * config.time_scale)
        self._heap: list[tuple[datetime, int, SimMessage]] = []
        self._ready: deque[SimMessage] = deque()
        self._seq = 0
        self._recent: deque[str] = deque(maxlen=256)
        self._tag_value = 0
        self._start_epoch(wall, 0.0)

    @property
    def pending(self) -> int:
        """Messages generated and not yet handed out (due or not)."""
        return len(self._heap) + len(self._ready)

    def _start_epoch(self, wall: datetime, elapsed: float) -> None:
        self.epochs += 1
        self._anchor = wall - self.config.history
        self._epoch_started = elapsed
        # Epoch tags count up from the wall clock's seconds: unique even for short epochs.
        self._tag_value = max(int(wall.timestamp()), self._tag_value + 1)
        self._tag = _base36(self._tag_value)
        self._counters = dict.fromkeys(self.config.orgs, 0)
        self._heap.clear()
        self.sim_now = self._anchor
        self._next_arrival = self._anchor + self._interarrival()

    def _interarrival(self) -> timedelta:
        return timedelta(seconds=self._rng.expovariate(self._arrival_rate))

    def advance(self, wall: datetime, elapsed: float) -> None:
        """Move the simulated clock to `elapsed` real seconds in (never past `wall`)."""
        if wall.tzinfo is None:
            raise ValueError("wall must be timezone-aware")
        self.wall = wall
        scaled = timedelta(seconds=(elapsed - self._epoch_started) * self.config.time_scale)
        target = min(self._anchor + scaled, wall)
        self.sim_now = max(self.sim_now, target)
        self._create_until(self.sim_now)
        while self._heap and self._heap[0][0] <= self.sim_now:
            self._ready.append(heapq.heappop(self._heap)[2])
        if target >= wall:
            self._start_epoch(wall, elapsed)

    def _create_until(self, until: datetime) -> None:
        while self._next_arrival <= until:
            org = self._rng.choices(self.config.orgs, weights=self._volumes)[0]
            self._counters[org] += 1
            referral_id = f"R-{self._tag}-{self._counters[org]:05d}"
            orphan = self._rng.random() < self.config.orphan_rate
            ref = _Referral(org, referral_id, self._next_arrival, orphan)
            self._recent.append(referral_id)
            for deliver_at, message in _referral_messages(
                self.config, ref, None, self.wall, list(self._recent), self._faults
            ):
                self._seq += 1
                heapq.heappush(self._heap, (deliver_at, self._seq, message))
            self.referrals += 1
            self._next_arrival += self._interarrival()

    def due(self, limit: int) -> list[SimMessage]:
        """Up to `limit` messages whose delivery time the simulated clock has reached."""
        return [self._ready.popleft() for _ in range(min(limit, len(self._ready)))]


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _wall_clock() -> datetime:
    return datetime.now(UTC)


async def run(
    config: SimConfig,
    bootstrap: str,
    topic: str,
    rate: float,
    duration: float | None,
    now_fn: Callable[[], datetime] = _wall_clock,
    log: Callable[[str], Any] = print,
    raw_topics: dict[str, str] | None = None,
    raw_share: float = 0.0,
    kafka_options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Send live traffic to Kafka at about `rate` messages/s for `duration` seconds.

    `duration=None` runs until cancelled. Messages go out in small batches every tick
    (a token bucket caps the rate); each batch's send futures are awaited together.
    With `raw_topics` (adapter kind -> topic), about `raw_share` of the valid events go
    out as the FHIR resource, HL7 v2 message, webhook or claim an upstream system would
    send instead (streams.upstream). Returns {"sent", "invalid", "duplicates", "raw"}.
    """
    from aiokafka import AIOKafkaProducer

    traffic = LiveTraffic(config, rate, now_fn())
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks="all", **(kafka_options or {})
    )
    await producer.start()
    counts = {"sent": 0, "invalid": 0, "duplicates": 0, "raw": 0}
    share = int(raw_share * 1000) if raw_topics else 0
    tick, burst = 0.05, max(1.0, rate * 0.25)
    started = last = time.monotonic()
    next_log = started + 5.0
    tokens = 0.0
    try:
        while duration is None or time.monotonic() - started < duration:
            now = time.monotonic()
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            traffic.advance(now_fn(), now - started)
            batch = traffic.due(int(tokens))
            if batch:
                tokens -= len(batch)
                futures = []
                for m in batch:
                    target, value = topic, m.value
                    if share and m.valid and stable_hash(m.value.decode()) % 1000 < share:
                        rendered = render(json.loads(m.value))
                        if rendered is not None and raw_topics is not None:
                            target, value = raw_topics[rendered[1]], rendered[2]
                            counts["raw"] += 1
                    futures.append(await producer.send(target, value, key=m.key))
                await asyncio.gather(*futures)
                counts["sent"] += len(batch)
                counts["invalid"] += sum(not m.valid for m in batch)
                counts["duplicates"] += sum(m.duplicate for m in batch)
            if now >= next_log:
                next_log = now + 5.0
                log(
                    f"simulator: sent={counts['sent']} invalid={counts['invalid']} "
                    f"duplicates={counts['duplicates']} raw={counts['raw']} "
                    f"rate={counts['sent'] / max(now - started, 1e-9):.1f}/s "
                    f"referrals={traffic.referrals} pending={traffic.pending} "
                    f"clock={traffic.sim_now.isoformat(timespec='seconds')}"
                )
            await asyncio.sleep(tick)
    finally:
        await producer.stop()
        log(f"simulator: stopped after {counts['sent']} messages")
    return counts
