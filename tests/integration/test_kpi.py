"""The SPEC §7 KPI views on real traffic: a worker processes simulated referrals through the
embedded broker into chDB, and every column of kpi_summary, kpi_daily and stage_stats must
equal an independent reference computed from the same raw lines (kpi_reference.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.simulator import SimConfig, generate, write_ndjson
from tests.integration.harness import Deployment, Worker, produce, wait_for
from tests.integration.kpi_reference import Reference

pytestmark = pytest.mark.integration

HOUR = 3_600_000_000


def compare(
    view: str,
    keys: tuple[str, ...],
    rows: list[dict[str, Any]],
    want: dict[tuple[Any, ...], dict[str, Any]],
) -> None:
    """Every row and every column of a view against the reference, naming what differs."""
    got = {tuple(row[k] for k in keys): row for row in rows}
    assert len(got) == len(rows), f"{view}: duplicate rows for keys {keys}"
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"{view}: rows missing {missing[:5]}, unexpected {extra[:5]}"
    for key, expected in want.items():
        row = got[key]
        assert set(row) == set(expected), f"{view} {key}: columns {sorted(row)}"
        for column, value in expected.items():
            actual = row[column]
            where = f"{view} row {dict(zip(keys, key, strict=True))} column {column!r}"
            if value is None or isinstance(value, str):
                assert actual == value, f"{where}: got {actual!r}, want {value!r}"
            elif isinstance(value, float):
                assert actual is not None, f"{where}: got None, want {value!r}"
                ok = actual == pytest.approx(value, rel=1e-9, abs=1e-9)
                assert ok, f"{where}: got {actual!r}, want {value!r}"
            else:
                assert isinstance(actual, int) and actual == value, (
                    f"{where}: got {actual!r}, want {value!r}"
                )


def reference_scenario(tmp_path: Path) -> tuple[Path, list[bytes], Reference]:
    """About 2,000 referrals of simulated traffic (seeded) and what the views should say.

    Every event is at least 15 days old, so each flag (longest target 14 d) is already
    decided whatever the wall clock says when the worker makes the snapshot; the events are
    last year's and this year's, so the rate windows are far behind the wall clock.
    """
    now = datetime.now(UTC)
    config = SimConfig(
        seed=5, referrals=2000, start=now - timedelta(days=75), span=timedelta(days=60)
    )
    traffic = tmp_path / "traffic.ndjson"
    write_ndjson(generate(config, now=now - timedelta(days=15)), traffic)
    lines = [line for line in traffic.read_bytes().splitlines() if line.strip()]
    reference = Reference(lines, now)
    assert len(reference.facts) > 1950, len(reference.facts)  # all-invalid referrals are unknown
    return traffic, lines, reference


def wait_until_stored(
    worker: Worker, reference: Reference, timeout: float = 90, rates: bool = True
) -> None:
    """Every referral at its final version and (with `rates`) every distinct event in a
    rate window."""

    want = (len(reference.facts), reference.distinct_events, reference.distinct_events)
    seen: list[tuple[int, int, int]] = []

    def stored() -> bool:
        status = worker.query("SELECT count() AS n, sum(version) AS v FROM referral_status")[0]
        counted = worker.query("SELECT sum(events) AS n FROM event_rates_1m")[0] if rates else {}
        seen[:] = [(status["n"], status["v"], counted.get("n", want[2]))]
        return seen[0] == want

    wait_for(
        stored,
        timeout,
        interval=0.5,
        what="every snapshot and rate window in ClickHouse",
        explain=lambda: (
            f"(referrals, sum of versions, events in rate windows): "
            f"stored {seen[0] if seen else None}, want {want}\n{worker.diagnosis()}"
        ),
    )


def assert_views_match(worker: Worker, reference: Reference, rates: bool = True) -> None:
    """Every KPI view, both the exact `_live` one and the precomputed one of the contract
    (after a refresh that started once everything was stored), against the reference."""
    worker.wait_kpi_refreshed()
    for suffix in ("_live", ""):
        summary = worker.query(f"SELECT * FROM kpi_summary{suffix} ORDER BY org_id")
        compare(f"kpi_summary{suffix}", ("org_id",), summary, reference.kpi_summary())
        daily = worker.query(f"SELECT * FROM kpi_daily{suffix} ORDER BY org_id, specialty, day")
        compare(f"kpi_daily{suffix}", ("org_id", "specialty", "day"), daily, reference.kpi_daily())
        stages = worker.query(
            f"SELECT * FROM stage_stats{suffix} ORDER BY org_id, specialty, stage"
        )
        compare(
            f"stage_stats{suffix}",
            ("org_id", "specialty", "stage"),
            stages,
            reference.stage_stats(),
        )
    if rates:
        rows = worker.query(
            "SELECT toString(window_start) AS window_start, org_id, type, events "
            "FROM event_rates_1m"
        )
        compare(
            "event_rates_1m", ("window_start", "org_id", "type"), rows, reference.event_rates_1m()
        )
    # The scenario exercises what it should: at-risk referrals, no-shows, NULL cells, stages.
    assert all(row["at_risk"] > 0 and row["no_shows"] > 0 for row in summary)
    assert any(row["median_hours_to_appointment"] is None for row in daily)
    assert {row["stage"] for row in stages} == {
        "created",
        "routed",
        "contacted",
        "scheduled",
        "seen",
    }


def test_reference_scenario_kpis(deployment: Deployment, tmp_path: Path) -> None:
    traffic, lines, reference = reference_scenario(tmp_path)
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        sent = deployment.cli("produce", str(traffic))
        assert sent.returncode == 0, sent.stderr
        worker.wait_accounted(len(lines))
        wait_until_stored(worker, reference)
        assert_views_match(worker, reference)
        refreshes = worker.pipeline()["kpi_views"]
        assert set(refreshes) == {"kpi_summary", "kpi_daily", "stage_stats"}, refreshes
        assert all(r["last_success"] and not r["error"] for r in refreshes.values()), refreshes
    finally:
        assert worker.stop() == 0, worker.logs()


def _event(event_id: str, kind: str, at: datetime, source: str, **data: Any) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "referral_id": "R-LATE-1",
            "org_id": "latecare",
            "type": kind,
            "occurred_at": at.isoformat(),
            "source": source,
            "data": data,
        }
    ).encode()


def test_late_routed_splits_the_stage(deployment: Deployment) -> None:
    t0 = (datetime.now(UTC) - timedelta(days=20)).replace(microsecond=0)
    created = _event(
        "e-1", "referral.created", t0, "ehr", priority="routine", specialty="cardiology"
    )
    scheduled = _event(
        "e-2",
        "appointment.scheduled",
        t0 + timedelta(hours=48),
        "scheduling",
        appointment_id="A-1",
        appointment_at=(t0 + timedelta(days=9)).isoformat(),
    )
    routed = _event("e-3", "referral.routed", t0 + timedelta(hours=10), "referral_platform")

    def stages() -> dict[str, int]:
        rows = worker.query(
            "SELECT stage, duration_us FROM stage_durations FINAL "
            "WHERE org_id = 'latecare' AND referral_id = 'R-LATE-1'"
        )
        return {row["stage"]: row["duration_us"] for row in rows}

    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, [(b"R-LATE-1", created)])
        produce(deployment.bootstrap, deployment.events_topic, [(b"R-LATE-1", scheduled)])
        wait_for(lambda: stages() == {"created": 48 * HOUR}, 60, what="created stage = 48 h")

        produce(deployment.bootstrap, deployment.events_topic, [(b"R-LATE-1", routed)])
        want = {"created": 10 * HOUR, "routed": 38 * HOUR}
        wait_for(lambda: stages() == want, 60, what="created 10 h + routed 38 h")
        version = "SELECT version FROM referral_status WHERE referral_id = 'R-LATE-1'"
        wait_for(lambda: worker.query(version) == [{"version": 3}], 30, what="version 3")
        worker.wait_kpi_refreshed()

        stats = worker.query(
            "SELECT stage, referrals, median_hours, p90_hours, avg_hours FROM stage_stats "
            "WHERE org_id = 'latecare' ORDER BY stage"
        )
        summary = worker.query(
            "SELECT referrals, open, median_hours_to_schedule, p90_hours_to_schedule "
            "FROM kpi_summary WHERE org_id = 'latecare'"
        )
        status = worker.query(
            "SELECT status, version FROM referral_status WHERE referral_id = 'R-LATE-1'"
        )
    finally:
        assert worker.stop() == 0, worker.logs()

    assert stats == [
        {
            "stage": "created",
            "referrals": 1,
            "median_hours": 10.0,
            "p90_hours": 10.0,
            "avg_hours": 10.0,
        },
        {
            "stage": "routed",
            "referrals": 1,
            "median_hours": 38.0,
            "p90_hours": 38.0,
            "avg_hours": 38.0,
        },
    ]
    assert summary == [
        {"referrals": 1, "open": 1, "median_hours_to_schedule": 48.0, "p90_hours_to_schedule": 48.0}
    ]
    assert status == [{"status": "scheduled", "version": 3}]
