"""The simulator makes realistic, deterministic traffic: every event type, every failure
mode the pipeline must survive, and nothing the contract (SPEC §3-§4) would not expect."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import EventRejected
from schemas.events import EventType, Source, parse_event, to_tracked
from schemas.referral import OPEN_STATUSES, ReferralState, Status, fold
from streams import simulator
from streams.simulator import (
    FAULTS,
    LiveTraffic,
    SimConfig,
    SimMessage,
    canonical_events,
    generate,
    write_ndjson,
)

NOW = datetime(2025, 6, 2, 15, 30, tzinfo=UTC)
CONFIG = SimConfig(seed=7, referrals=500, start=NOW - timedelta(days=90), span=timedelta(days=90))


@pytest.fixture(scope="module")
def messages() -> list[SimMessage]:
    return generate(CONFIG, NOW)


@pytest.fixture(scope="module")
def events(messages: list[SimMessage]) -> list[dict[str, Any]]:
    return canonical_events(messages)


@pytest.fixture(scope="module")
def states(messages: list[SimMessage]) -> dict[tuple[str, str], ReferralState]:
    grouped = defaultdict(list)
    for m in messages:
        if m.valid:
            event = to_tracked(parse_event(m.value, NOW), None)
            grouped[(event.org_id, event.referral_id)].append(event)
    return {key: fold(evs) for key, evs in grouped.items()}


def _at(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def test_valid_messages_parse_and_invalid_ones_get_their_dlq_code(
    messages: list[SimMessage],
) -> None:
    invalid = 0
    for m in messages:
        if m.valid:
            assert m.fault is None
            parse_event(m.value, NOW)
            continue
        invalid += 1
        assert m.fault in FAULTS and not m.duplicate
        with pytest.raises(EventRejected) as caught:
            parse_event(m.value, NOW)
        assert caught.value.code == FAULTS[m.fault], (m.fault, m.value[:200])
    assert 0.004 < invalid / len(messages) < 0.02


def test_every_fault_appears(messages: list[SimMessage]) -> None:
    assert {m.fault for m in messages if not m.valid} == set(FAULTS)
    oversize = [m for m in messages if m.fault == "oversize"]
    assert all(len(m.value) > 64 * 1024 for m in oversize)
    for m in (m for m in messages if m.fault == "invalid_utf8"):
        with pytest.raises(UnicodeDecodeError):
            m.value.decode("utf-8")


def test_same_seed_same_bytes_other_seed_other_bytes(messages: list[SimMessage]) -> None:
    assert generate(CONFIG, NOW) == messages
    other = generate(replace(CONFIG, seed=8), NOW)
    assert [m.value for m in other] != [m.value for m in messages]
    assert {json.loads(m.value)["event_id"] for m in other if m.valid}.isdisjoint(
        json.loads(m.value)["event_id"] for m in messages if m.valid
    )


def test_all_event_types_from_the_systems_that_send_them(events: list[dict[str, Any]]) -> None:
    types = Counter(e["type"] for e in events)
    assert set(types) == {t.value for t in EventType}
    usual = {
        "referral": {Source.EHR, Source.REFERRAL_PLATFORM, Source.MANUAL},
        "patient": {Source.COMMS, Source.MANUAL},
        "appointment": {Source.SCHEDULING, Source.MANUAL},
        "report": {Source.EHR, Source.MANUAL},
        "care": {Source.CLAIMS},
    }
    by_source = Counter(e["source"] for e in events)
    assert set(by_source) == {s.value for s in Source}
    assert by_source["manual"] < 0.05 * len(events)
    for e in events:
        assert e["source"] in usual[e["type"].split(".")[0]], e
        if e["type"] == "referral.created":
            assert e["source"] == "ehr"
    assert all(e.get("patient_id", "MRN-000000")[:4] == "MRN-" for e in events)
    assert len({e["event_id"] for e in events}) == len(events)


def test_nothing_occurs_after_now_and_timestamps_carry_offsets(
    events: list[dict[str, Any]],
) -> None:
    offsets = Counter()
    for e in events:
        occurred = _at(e["occurred_at"])
        offsets[e["occurred_at"][-6:]] += 1
        assert occurred <= NOW
        assert occurred >= CONFIG.start or e["type"] != "referral.created"
        if "appointment_at" in e["data"]:
            assert _at(e["data"]["appointment_at"]) > occurred
    assert {"-05:00", "-04:00", "-08:00", "-07:00", "-06:00", "+00:00"} <= set(offsets)


def test_duplicates_are_later_byte_copies_of_valid_messages(messages: list[SimMessage]) -> None:
    first_seen: dict[bytes, int] = {}
    duplicates = 0
    for position, m in enumerate(messages):
        if m.duplicate:
            duplicates += 1
            assert m.valid and m.value in first_seen
            assert first_seen[m.value] < position
        else:
            assert m.value not in first_seen, "only flagged duplicates repeat"
            first_seen[m.value] = position
    assert 0.015 < duplicates / len(messages) < 0.05


def test_keys_are_sometimes_missing_or_wrong(messages: list[SimMessage]) -> None:
    kinds = Counter()
    for m in messages:
        if not m.valid:
            continue
        own = json.loads(m.value)["referral_id"].encode()
        kinds["none" if m.key is None else "own" if m.key == own else "other"] += 1
    total = sum(kinds.values())
    assert 0.01 < kinds["none"] / total < 0.04
    assert 0.01 < kinds["other"] / total < 0.04


def test_late_messages_arrive_after_later_events(messages: list[SimMessage]) -> None:
    late = [m for m in messages if m.late]
    assert 0.03 < len(late) / len(messages) < 0.08
    newest = datetime.min.replace(tzinfo=UTC)
    overtaken = 0
    for m in messages:
        if m.valid:
            occurred = _at(json.loads(m.value)["occurred_at"])
            if m.late and occurred < newest - timedelta(hours=1):
                overtaken += 1
            newest = max(newest, occurred)
    assert overtaken > 0.8 * len(late)


def test_statuses_cover_terminal_open_and_orphan(
    states: dict[tuple[str, str], ReferralState],
) -> None:
    statuses = Counter(s.status for s in states.values())
    terminal = {Status.CLOSED, Status.CANCELLED, Status.DECLINED, Status.LEAKED}
    assert terminal | {Status.ORPHAN} <= set(statuses)
    assert len(set(statuses) & OPEN_STATUSES) >= 4
    assert statuses[Status.CLOSED] == max(statuses.values())
    assert 0 < statuses[Status.ORPHAN] < 0.05 * len(states)
    # Orgs share referral numbers: identity is the pair (org_id, referral_id).
    assert len({rid for _, rid in states}) < len(states)


def test_lifecycles_make_sense(states: dict[tuple[str, str], ReferralState]) -> None:
    hours: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    leaked: dict[str, list[bool]] = defaultdict(list)
    for s in states.values():
        created, scheduled = s.milestone_at("created"), s.milestone_at("scheduled")
        if created is None:
            continue
        leaked[s.org_id].append(s.leaked)
        if scheduled is not None:
            assert scheduled > created
            hours[s.org_id][s.priority].append((scheduled - created) / 3.6e9)
        if s.outreach_attempts:
            assert 1 <= s.outreach_attempts <= 4
        if s.feedback_score is not None:
            assert 1 <= s.feedback_score <= 5
    for org in CONFIG.orgs:  # stat is fastest everywhere
        assert statistics.median(hours[org]["stat"]) < statistics.median(hours[org]["routine"])
    routine = {org: statistics.median(hours[org]["routine"]) for org in CONFIG.orgs}
    assert routine["lakeside"] > 1.3 * routine["northwind"]  # the slow scheduler
    leakage = {org: sum(v) / len(v) for org, v in leaked.items()}
    assert leakage["summit"] == max(leakage.values())  # the leaky network


def test_canonical_events_dedups_first_arrival(
    messages: list[SimMessage], events: list[dict[str, Any]]
) -> None:
    valid_ids = [json.loads(m.value)["event_id"] for m in messages if m.valid]
    assert [e["event_id"] for e in events] == list(dict.fromkeys(valid_ids))
    assert len(valid_ids) - len(events) == sum(m.duplicate for m in messages)


def test_write_ndjson_keeps_every_utf8_line_byte_for_byte(
    messages: list[SimMessage], tmp_path: Path
) -> None:
    path = tmp_path / "traffic.ndjson"
    written = write_ndjson(messages, path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == written
    expected = [m.value for m in messages if m.fault != "invalid_utf8"]
    assert lines[:-1] == expected


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SimConfig(start=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        SimConfig(duplicate_rate=1.5)
    with pytest.raises(ValueError):
        SimConfig(orgs=("a/b",))
    with pytest.raises(ValueError):
        generate(CONFIG, datetime(2025, 6, 1))


def test_unknown_orgs_get_a_derived_profile() -> None:
    config = replace(CONFIG, orgs=("riverbend",), referrals=40)
    out = generate(config, NOW)
    assert out == generate(config, NOW)
    assert {json.loads(m.value)["org_id"] for m in out if m.valid} == {"riverbend"}


def test_live_traffic_is_never_in_the_future() -> None:
    wall0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
    config = SimConfig(time_scale=86400.0, history=timedelta(days=20))  # one day per second
    traffic = LiveTraffic(config, rate=200.0, wall=wall0)
    types: Counter[str] = Counter()
    sent = 0
    for step in range(1, 121):  # 30 real seconds in quarter-second ticks
        elapsed = step / 4
        wall = wall0 + timedelta(seconds=elapsed)
        traffic.advance(wall, elapsed)
        for m in traffic.due(200):
            sent += 1
            if not m.valid:
                continue
            event = parse_event(m.value, wall)
            assert event.occurred_at <= wall
            assert event.referral_id.startswith("R-")
            types[event.type] += 1
    assert traffic.epochs == 2  # 20 simulated days took 20 s; then a new epoch began
    assert len(types) >= 12
    assert 0.3 * 200 * 30 < sent < 1.2 * 200 * 30


def test_run_paces_batches_through_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka

    sent: list[tuple[str, bytes, bytes | None]] = []
    lifecycle: list[str] = []

    class FakeProducer:
        def __init__(self, **kwargs: Any) -> None:
            assert kwargs["acks"] == "all" and kwargs["linger_ms"] == 5

        async def start(self) -> None:
            lifecycle.append("start")

        async def stop(self) -> None:
            lifecycle.append("stop")

        async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
            sent.append((topic, value, key))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    config = SimConfig(time_scale=86400.0)
    logs: list[str] = []
    counts = asyncio.run(
        simulator.run(config, "localhost:9", "referrals.events.v1", 400.0, 1.0, log=logs.append)
    )
    assert lifecycle == ["start", "stop"]
    assert counts["sent"] == len(sent) and 20 < len(sent) <= 400 * 1.0 + 100
    assert {topic for topic, _, _ in sent} == {"referrals.events.v1"}
    assert counts["invalid"] == sum(1 for _, v, _ in sent if not _parses(v))
    assert logs and "stopped" in logs[-1]


def _parses(value: bytes) -> bool:
    try:
        parse_event(value, datetime.now(UTC))
    except EventRejected:
        return False
    return True
