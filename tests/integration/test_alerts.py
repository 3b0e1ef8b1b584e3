"""SLA alerts end to end (SPEC §5, issue 4): a real worker on the embedded broker and chDB,
with an injected clock (REFTRACK_CLOCK=file:PATH). Referrals that miss each SLA raise
exactly the expected alerts, stamped at the instant the SLA was missed; later events
resolve them; a restarted worker rebuilds its deadline index and fires nothing again."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Deployment, Worker, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

BASE = (datetime.now(UTC) - timedelta(days=60)).replace(minute=0, second=0, microsecond=0)
H = timedelta(hours=1)
D = timedelta(days=1)
_seq = iter(range(1, 10_000))


def event(referral: str, kind: str, at: datetime, **data: Any) -> tuple[bytes, bytes]:
    body = {
        "event_id": f"{referral}-{next(_seq)}",
        "referral_id": referral,
        "org_id": "alertcare",
        "type": kind,
        "occurred_at": at.isoformat(),
        "source": "ehr",
        "data": data,
    }
    return referral.encode(), json.dumps(body).encode()


def created(referral: str, priority: str, at: datetime = BASE) -> tuple[bytes, bytes]:
    return event(referral, "referral.created", at, priority=priority, specialty="cardiology")


def scheduled(referral: str, at: datetime) -> tuple[bytes, bytes]:
    return event(
        referral,
        "appointment.scheduled",
        at,
        appointment_id=f"A-{referral}",
        appointment_at=(at + 2 * D).isoformat(),
    )


PHASE_1 = [
    created("R-ROUTE", "urgent"),  # routing 24 h, scheduling 72 h: both missed
    created("R-SCHED", "stat"),
    event("R-SCHED", "referral.routed", BASE + H),  # scheduling (stat) 24 h: missed
    created("R-UNRESP", "routine"),
    event("R-UNRESP", "referral.routed", BASE + H),
    event("R-UNRESP", "patient.outreach", BASE + 2 * H, channel="sms"),  # + 7 d: missed
    created("R-NOSHOW", "routine"),
    event("R-NOSHOW", "referral.routed", BASE + H),
    scheduled("R-NOSHOW", BASE + 2 * H),
    event("R-NOSHOW", "appointment.no_show", BASE + 3 * D, appointment_id="A-R-NOSHOW"),
    created("R-LOOP", "routine", BASE - 10 * D),
    event("R-LOOP", "referral.routed", BASE - 10 * D + H),
    scheduled("R-LOOP", BASE - 10 * D + 2 * H),
    event("R-LOOP", "appointment.completed", BASE - 9 * D, appointment_id="A-R-LOOP"),
    created("R-OON", "routine"),
    event("R-OON", "referral.routed", BASE + H, in_network=False),
    created("R-OK", "routine"),  # on time all the way: no alert, ever
    event("R-OK", "referral.routed", BASE + H),
    scheduled("R-OK", BASE + 2 * H),
    event("R-OK", "appointment.completed", BASE + 3 * D, appointment_id="A-R-OK"),
    event("R-OK", "report.received", BASE + 4 * D),
]
# (referral, rule) -> raised_at: when each SLA was missed.
FIRING_1 = {
    ("R-ROUTE", "routing_overdue"): BASE + 24 * H,
    ("R-ROUTE", "scheduling_overdue"): BASE + 72 * H,
    ("R-SCHED", "scheduling_overdue"): BASE + 24 * H,
    ("R-UNRESP", "patient_unresponsive"): BASE + 2 * H + 7 * D,
    ("R-NOSHOW", "no_show_not_rescheduled"): BASE + 6 * D,
    ("R-LOOP", "loop_not_closed"): BASE - 9 * D + 14 * D,
    ("R-OON", "out_of_network"): BASE + H,
}
LATER = BASE + 10 * D + H
PHASE_2 = [
    event("R-ROUTE", "referral.routed", LATER),
    scheduled("R-ROUTE", LATER),
    scheduled("R-SCHED", LATER),
    event("R-UNRESP", "patient.responded", LATER),
    event("R-NOSHOW", "referral.cancelled", LATER),
    event("R-LOOP", "report.received", LATER),
]
STILL_FIRING = {("R-OON", "out_of_network")}


def set_clock(path: Path, at: datetime) -> None:
    path.write_text(at.isoformat(), encoding="utf-8")
    time.sleep(0.05)  # a distinct mtime for the next write


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_missed_slas_fire_once_resolve_on_events_and_survive_a_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    clock = tmp_path / "clock"
    # Before every deadline: however the backlog is batched, only out-of-network holds.
    set_clock(clock, BASE - 10 * D + 2 * H)
    deployment.extra_env.update(
        {"REFTRACK_CLOCK": f"file:{clock}", "REFTRACK_ALERT_TICK_SECONDS": "0.2"}
    )
    topic = f"{deployment.prefix}.alerts.v1"

    def alerts() -> list[dict[str, Any]]:
        return [json.loads(m.value) for m in read_topic(deployment.bootstrap, topic, timeout=5)]

    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, PHASE_1)
        worker.wait_accounted(len(PHASE_1))
        # Only the out-of-network alert holds before any deadline has passed.
        wait_for(lambda: len(alerts()) == 1, 30, what="the out-of-network alert")
        assert [(a["referral_id"], a["rule"]) for a in alerts()] == [("R-OON", "out_of_network")]

        set_clock(clock, BASE + 10 * D)
        wait_for(lambda: len(alerts()) == len(FIRING_1), 30, what="every missed SLA alert")
        fired = alerts()
        assert {(a["referral_id"], a["rule"]): a["raised_at"] for a in fired} == {
            key: stamp(at) for key, at in FIRING_1.items()
        }
        assert all(a["state"] == "firing" and a["resolved_at"] is None for a in fired)
        assert len({a["alert_id"] for a in fired}) == len(FIRING_1)
        sev = {(a["referral_id"], a["rule"]): a["severity"] for a in fired}
        assert sev[("R-SCHED", "scheduling_overdue")] == "critical"  # stat pages higher
        assert sev[("R-OON", "out_of_network")] == "low"

        # The status snapshots carry the same flags.
        flags = "SELECT referral_id, flags FROM referral_status WHERE org_id = 'alertcare'"
        want_flags = {r: sorted(k for (rr, k) in FIRING_1 if rr == r) for r, _ in FIRING_1}
        want_flags["R-OK"] = []

        def flags_now() -> dict[str, list[str]]:
            return {row["referral_id"]: sorted(row["flags"]) for row in worker.query(flags)}

        wait_for(lambda: flags_now() == want_flags, 30, what="flags in referral_status")

        set_clock(clock, LATER + H)
        produce(deployment.bootstrap, deployment.events_topic, PHASE_2)
        resolved_count = len(FIRING_1) - len(STILL_FIRING)
        wait_for(lambda: len(alerts()) == len(FIRING_1) + resolved_count, 30, what="resolutions")
        resolved = [a for a in alerts() if a["state"] == "resolved"]
        assert {(a["referral_id"], a["rule"]) for a in resolved} == set(FIRING_1) - STILL_FIRING
        ids = {(a["referral_id"], a["rule"]): a["alert_id"] for a in fired}
        for a in resolved:
            assert a["alert_id"] == ids[(a["referral_id"], a["rule"])]
            assert a["resolved_at"] == stamp(LATER)
            assert a["raised_at"] == stamp(FIRING_1[(a["referral_id"], a["rule"])])

        # ClickHouse: one row per alert, in its latest state.
        rows_sql = (
            "SELECT referral_id, rule, state, toString(resolved_at) AS resolved "
            "FROM alerts FINAL WHERE org_id = 'alertcare'"
        )
        wait_for(
            lambda: (
                sorted((r["referral_id"], r["rule"], r["state"]) for r in worker.query(rows_sql))
                == sorted(
                    (r, k, "firing" if (r, k) in STILL_FIRING else "resolved") for r, k in FIRING_1
                )
            ),
            30,
            what="alert rows in ClickHouse",
        )
        metrics = worker.get("/metrics")[1]
        assert 'reftrack_alerts_firing{org_id="alertcare",rule="out_of_network"} 1.0' in metrics
        assert (
            'reftrack_alerts_raised_total{org_id="alertcare",rule="routing_overdue"} 1.0' in metrics
        )
    finally:
        assert worker.stop() == 0, worker.logs()
    total = len(alerts())

    # A restart: the deadline index and gauges are rebuilt from the table; nothing fires
    # again, not even as the clock moves on.
    restarted = Worker(deployment, name="worker-restarted")
    try:
        restarted.wait_ready()
        set_clock(clock, LATER + 2 * H)
        time.sleep(3)  # many ticks
        assert len(alerts()) == total
        metrics = restarted.get("/metrics")[1]
        assert 'reftrack_alerts_firing{org_id="alertcare",rule="out_of_network"} 1.0' in metrics
        assert 'reftrack_alerts_firing{org_id="alertcare",rule="routing_overdue"}' not in metrics
    finally:
        assert restarted.stop() == 0, restarted.logs()


def test_event_time_clock_gives_the_same_alerts_however_the_stream_is_batched(
    broker: Any, tmp_path: Path
) -> None:
    """REFTRACK_CLOCK=event (replays): now is the partition's watermark, advanced event by
    event, so the alerts and their times depend on the events alone, not on batching."""
    # The last event moves the watermark past every deadline of FIRING_1.
    stream = [*PHASE_1, *PHASE_2, created("R-CLOCK", "routine", LATER + 2 * H)]
    runs = []
    for batch in ("1", "500"):
        deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path / batch)
        deployment.partitions = 1  # one watermark for the whole stream
        deployment.extra_env.update({"REFTRACK_CLOCK": "event", "REFTRACK_TRACKER_BATCH": batch})
        worker = Worker(deployment, name=f"worker-batch-{batch}")
        try:
            worker.wait_ready()
            produce(deployment.bootstrap, deployment.events_topic, stream)
            worker.wait_accounted(len(stream))
            topic = f"{deployment.prefix}.alerts.v1"

            def settled(
                topic: str = topic, bootstrap: str = deployment.bootstrap
            ) -> list[dict[str, Any]] | None:
                first = read_topic(bootstrap, topic, timeout=5)
                time.sleep(1)
                again = read_topic(bootstrap, topic, timeout=5)
                return [json.loads(m.value) for m in again] if len(first) == len(again) else None

            runs.append(wait_for(settled, 30, what="the alert stream to settle"))
        finally:
            assert worker.stop() == 0, worker.logs()

    one_by_one, batched = (sorted(run, key=lambda a: (a["alert_id"], a["state"])) for run in runs)
    assert one_by_one == batched  # the order across referrals may differ, the alerts not
    by_key = {(a["referral_id"], a["rule"], a["state"]): a for a in batched}
    route = by_key[("R-ROUTE", "routing_overdue", "resolved")]
    assert (route["raised_at"], route["resolved_at"]) == (stamp(BASE + 24 * H), stamp(LATER))
    assert ("R-OON", "out_of_network", "firing") in by_key
    assert ("R-OON", "out_of_network", "resolved") not in by_key
    assert not any(a["referral_id"] == "R-OK" for a in batched)
