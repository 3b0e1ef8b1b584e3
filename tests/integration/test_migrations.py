"""Migrations upgrade an existing database in place, keeping its data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from schemas.events import TrackedEvent, to_micros
from schemas.snapshot import iso
from sinks.access import ALL_ORGS_ONLY, ORG_TABLES, ORG_VIEWS, access_statements
from sinks.clickhouse import ClickHouse
from sinks.cluster import ClusterLayout
from sinks.kpi_refresh import KPI_VIEWS, refresh_now, refresh_status, set_refresh_interval
from sinks.migrate import applied_versions, available, migrate, pending
from sinks.retention import set_retention
from sinks.rows import (
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    RATE_COLUMNS,
    REFERRAL_STATE_COLUMNS,
    STAGE_COLUMNS,
    alert_rows,
    event_rows,
    rate_rows,
    referral_state_rows,
    stage_rows,
)
from streams.config import ConfigError
from streams.worker import prepare_schema

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    # chDB opens one engine path per process: this module is the only in-process user.
    path: Path = tmp_path_factory.mktemp("chdb") / "engine"
    ch = ClickHouse(f"chdb://{path}", "reftrack_migration_test")
    yield ch
    ch.close_blocking()


def old_row(referral_id: str, version: int) -> list[object]:
    values: dict[str, object] = {
        "org_id": "acme",
        "referral_id": referral_id,
        "version": version,
        "status": "seen",
        "priority": "urgent",
        "specialty": "cardiology",
        "patient_ref": None,
        "created_at": datetime(2025, 1, 1, 8, tzinfo=UTC),
        "scheduled_at": datetime(2025, 1, 2, 8, tzinfo=UTC),
        "seen_at": datetime(2025, 1, 5, 8, tzinfo=UTC),
        "outreach_attempts": 1,
        "no_shows": 1,
        "completions": 1,
        "leaked": False,
        "flags": ["loop_not_closed"],
        "updated_at": datetime(2025, 1, 5, 8, tzinfo=UTC),
        "evaluated_at": datetime(2025, 2, 1, tzinfo=UTC),
    }
    return [values.get(c) for c in REFERRAL_STATE_COLUMNS]


def test_upgrade_from_the_first_schema_keeps_data(clickhouse: ClickHouse) -> None:
    first = migrate(clickhouse, target=1)
    assert [m.version for m in first] == [1]
    clickhouse.insert(
        "referral_state", [old_row("R-1", 3), old_row("R-1", 2)], REFERRAL_STATE_COLUMNS
    )
    _, before = clickhouse.query("SELECT referral_id, version FROM referral_status")
    assert before == [("R-1", 3)]

    upgraded = migrate(clickhouse)
    assert [m.version for m in upgraded] == [m.version for m in available()][1:]
    assert applied_versions(clickhouse) == [m.version for m in available()]
    assert migrate(clickhouse) == []  # idempotent

    # The old row is still there, through the new view with its new columns ...
    _, rows = clickhouse.query(
        "SELECT referral_id, version, completions, no_shows FROM referral_status"
    )
    assert rows == [("R-1", 3, 1, 1)]
    # ... and the new KPI views compute over it.
    columns, kpi = clickhouse.query(
        "SELECT referrals, completed, no_shows, no_show_rate, median_hours_to_schedule, "
        "median_hours_to_appointment, open, at_risk FROM kpi_summary"
    )
    assert dict(zip(columns, kpi[0], strict=True)) == {
        "referrals": 1,
        "completed": 1,
        "no_shows": 1,
        "no_show_rate": 0.5,
        "median_hours_to_schedule": 24.0,
        "median_hours_to_appointment": 96.0,
        "open": 1,
        "at_risk": 1,
    }

    # The contract names are precomputed (migration 0005): stored rows, refreshed on a
    # schedule, equal to the exact `_live` views after a refresh.
    _, kinds = clickhouse.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
        "AND name IN ('kpi_summary', 'kpi_daily', 'stage_stats') ORDER BY name"
    )
    assert kinds == [(v, "MaterializedView") for v in ("kpi_daily", "kpi_summary", "stage_stats")]
    clickhouse.insert("referral_state", [old_row("R-2", 1)], REFERRAL_STATE_COLUMNS)
    _, stale = clickhouse.query("SELECT referrals FROM kpi_summary")
    _, live = clickhouse.query("SELECT referrals FROM kpi_summary_live")
    assert (stale, live) == ([(1,)], [(2,)])  # not refreshed yet (30 s interval)
    refresh_now(clickhouse)
    _, fresh = clickhouse.query("SELECT referrals FROM kpi_summary")
    assert fresh == [(2,)]
    for view in KPI_VIEWS:
        _, stored = clickhouse.query(f"SELECT * FROM {view} ORDER BY ALL")
        _, exact = clickhouse.query(f"SELECT * FROM {view}_live ORDER BY ALL")
        assert stored == exact, view

    set_refresh_interval(clickhouse, 7)
    _, create = clickhouse.query("SHOW CREATE TABLE kpi_daily")
    assert "REFRESH EVERY 7 SECOND" in create[0][0]
    with pytest.raises(ValueError):
        set_refresh_interval(clickhouse, 0)
    status = refresh_status(clickhouse)
    assert set(status) == set(KPI_VIEWS)
    assert all(s["last_success"] and s["error"] == "" for s in status.values()), status


def test_events_move_to_monthly_partitions_keeping_rows(clickhouse: ClickHouse) -> None:
    """Migration 0006 rebuilds `events` partitioned by month; old rows survive, and a copy
    read again later (a replay) replaces its old row instead of adding one."""
    ch = ClickHouse(clickhouse.dsn, "reftrack_events_migration_test")  # same engine
    try:
        migrate(ch, target=5)
        columns = [c for c in EVENT_COLUMNS if c != "version"]
        march = datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
        april = datetime(2025, 4, 30, 23, 59, tzinfo=UTC)
        ch.insert(
            "events",
            [
                ["acme", "R-1", "e-1", "referral.created", "ehr", march, "p_1", "{}"],
                ["acme", "R-1", "e-2", "referral.routed", "ehr", april, None, "{}"],
            ],
            columns,
        )
        assert [m.version for m in migrate(ch)] == [6]
        _, rows = ch.query(
            "SELECT event_id, occurred_at, patient_ref, version, _partition_id "
            "FROM events FINAL ORDER BY event_id"
        )
        assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
            ("e-1", "p_1", 0, "202503"),
            ("e-2", None, 0, "202504"),
        ]
        assert rows[0][1].replace(tzinfo=UTC) == march  # to the microsecond

        # Two copies of e-1 read again at offsets 7 and 3: the first read (3) wins.
        def copy(n: int) -> bytes:
            return TrackedEvent(
                event_id="e-1",
                org_id="acme",
                referral_id="R-1",
                type="referral.created",
                occurred_at=to_micros(march),
                source="ehr",
                patient_ref="p_1",
                data={"n": n},
            ).to_json()

        later, first = event_rows(copy(2), 7), event_rows(copy(1), 3)
        ch.insert("events", later + first, EVENT_COLUMNS)
        _, kept = ch.query("SELECT data FROM events FINAL WHERE event_id = 'e-1'")
        assert kept == [('{"n":1}',)]
        _, total = ch.query("SELECT count() FROM events FINAL")
        assert total == [(2,)]
    finally:
        ch.close_blocking()


def test_a_worker_that_must_not_migrate_refuses_a_database_behind(
    clickhouse: ClickHouse,
) -> None:
    """REFTRACK_CLICKHOUSE_MIGRATE_ON_START=false: `reftrack migrate` runs once, workers
    check. A worker finding migrations missing stops with what to do, not a half schema."""
    ch = ClickHouse(clickhouse.dsn, "reftrack_check_only_test")  # same engine
    ch._client = clickhouse._connect()
    everything = [m.version for m in available()]
    assert [m.version for m in pending(ch)] == everything  # no database yet
    with pytest.raises(
        ConfigError, match="lacks migrations 0001_referral_state, .*reftrack migrate"
    ):
        prepare_schema(ch, migrate_on_start=False)
    migrate(ch, target=4)
    assert [m.version for m in pending(ch)] == everything[4:]
    with pytest.raises(ConfigError, match="lacks migrations 0005_kpi_precomputed, 0006"):
        prepare_schema(ch, migrate_on_start=False)
    assert [m.version for m in prepare_schema(ch, migrate_on_start=True)] == everything[4:]
    assert pending(ch) == []
    assert prepare_schema(ch, migrate_on_start=False) == []


def test_event_retention_drops_old_event_rows_only(clickhouse: ClickHouse) -> None:
    """REFTRACK_EVENT_RETENTION_DAYS: a TTL by event time on `events` and `event_rates`,
    applied to stored rows too; referral-level tables keep everything; unset removes it."""
    ch = ClickHouse(clickhouse.dsn, "reftrack_retention_test")  # same engine
    ch._client = clickhouse._connect()
    migrate(ch)
    now = datetime.now(UTC).replace(microsecond=0)
    old, recent = now - timedelta(days=400), now - timedelta(days=3)
    columns = [c for c in EVENT_COLUMNS if c not in ("inserted_at",)]
    for event_id, at in (("e-old", old), ("e-new", recent)):
        row = {
            "org_id": "acme",
            "referral_id": "R-1",
            "event_id": event_id,
            "type": "referral.created",
            "source": "ehr",
            "occurred_at": at,
            "patient_ref": None,
            "data": "{}",
            "version": 1,
        }
        ch.insert("events", [[row[c] for c in columns]], columns)
    rate_columns = ["org_id", "type", "window_start", "partition", "segment", "events", "version"]
    ch.insert(
        "event_rates",
        [
            ["acme", "referral.created", old, 0, 0, 1, 1],
            ["acme", "referral.created", recent, 0, 0, 1, 1],
        ],
        rate_columns,
    )
    ch.insert("referral_state", [old_row("R-old", 1)], REFERRAL_STATE_COLUMNS)

    assert set_retention(ch, 30) == ["events", "event_rates"]
    assert set_retention(ch, 30) == []  # unchanged: nothing to do at the next start
    for table in ("events", "event_rates", "referral_state"):
        ch.command(f"OPTIMIZE TABLE {ch.database}.{table} FINAL")
    _, events = ch.query("SELECT event_id FROM events")
    _, rates = ch.query("SELECT toDate(window_start) FROM event_rates")
    _, states = ch.query("SELECT referral_id FROM referral_state")
    assert events == [("e-new",)]
    assert rates == [(recent.date(),)]
    assert states == [("R-old",)]  # referral-level rows are kept

    assert set_retention(ch, None) == ["events", "event_rates"]
    _, create = ch.query("SHOW CREATE TABLE events")
    assert " TTL " not in create[0][0]
    with pytest.raises(ValueError):
        set_retention(ch, 0)


def test_access_sql_parses_and_each_policy_keeps_its_org(clickhouse: ClickHouse) -> None:
    """The engine parses every statement of `reftrack access-sql` (chDB has no access
    management to run them: docs/security.md has the manual check), each policy's
    condition keeps exactly its org's rows, every granted object exists, and every table
    or view with an `org_id` column is either policed, read through policed tables, or
    kept from org roles."""
    ch = ClickHouse(clickhouse.dsn, "reftrack_access_test")  # same engine
    ch._client = clickhouse._connect()
    migrate(ch)
    orgs = ["acme", "beta-health"]
    ch.insert("referral_state", [old_row("R-1", 1)], REFERRAL_STATE_COLUMNS)  # acme
    other = old_row("R-2", 1)
    other[REFERRAL_STATE_COLUMNS.index("org_id")] = "beta-health"
    ch.insert("referral_state", [other], REFERRAL_STATE_COLUMNS)
    for cluster in (None, ClusterLayout("main")):
        for statement in access_statements(ch.database, orgs, cluster):
            _, parsed = ch.query(f"SELECT formatQuery({_sql_literal(statement)})")
            assert parsed, statement

    statements = access_statements(ch.database, orgs)
    for statement in statements:
        policy = re.fullmatch(
            r"CREATE ROW POLICY OR REPLACE (\w+) ON (\w+)\.(\w+) FOR SELECT USING (.+) TO (.+)",
            statement,
        )
        if policy is None:
            continue
        _, rows = ch.query(f"SELECT DISTINCT org_id FROM {policy[2]}.{policy[3]} WHERE {policy[4]}")
        if policy[1] == "reftrack_all_orgs":
            assert policy[4] == "1"
        elif policy[3] == "referral_state":
            assert rows == [({"reftrack_bi_acme": "acme"}.get(policy[1], "beta-health"),)]

    _, objects = ch.query(f"SELECT name FROM system.tables WHERE database = '{ch.database}'")
    names = {r[0] for r in objects}
    for statement in statements:
        granted = re.fullmatch(rf"GRANT SELECT ON {ch.database}\.(\w+) TO \w+", statement)
        if granted:
            assert granted[1] in names, statement
    _, with_org = ch.query(
        "SELECT DISTINCT table FROM system.columns "
        f"WHERE database = '{ch.database}' AND name = 'org_id' AND table NOT LIKE '.inner%'"
    )
    covered = set(ORG_TABLES) | set(ORG_VIEWS) | set(ALL_ORGS_ONLY)
    assert {r[0] for r in with_org} <= covered


def _sql_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_each_sink_table_stores_the_instants_its_messages_hold(clickhouse: ClickHouse) -> None:
    """The row mappings hand ClickHouse integer ticks (sinks/rows.py): microseconds for the
    DateTime64(6) columns, seconds for `event_rates.window_start`. Read back, each is the
    instant the message named, to the microsecond; a missing time stays NULL."""
    ch = ClickHouse(clickhouse.dsn, "reftrack_ticks_test")  # same engine
    ch._client = clickhouse._connect()
    migrate(ch)
    created = datetime(2026, 3, 4, 15, 20, 0, 123456, tzinfo=UTC)
    seen = datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)  # before the epoch
    snapshot = orjson.dumps(
        {
            "org_id": "acme",
            "referral_id": "R-1",
            "version": 4,
            "status": "seen",
            "outreach_attempts": 0,
            "no_shows": 0,
            "completions": 0,
            "leaked": False,
            "created_at": iso(to_micros(created)),
            "seen_at": iso(to_micros(seen)),
            "updated_at": "2026-03-05T10:00:00+00:00",  # another offset spelling
            "evaluated_at": "2026-03-05T10:00:00",  # no offset: UTC
            "flags": [],
            "stages": [
                {
                    "stage": "routing",
                    "entered_at": iso(to_micros(created)),
                    "left_at": iso(to_micros(created) + 90_000_001),
                }
            ],
        }
    )
    ch.insert("referral_state", referral_state_rows(snapshot, 0), REFERRAL_STATE_COLUMNS)
    ch.insert("stage_durations", stage_rows(snapshot, 0), STAGE_COLUMNS)
    event = TrackedEvent("e-1", "acme", "R-1", "referral.created", to_micros(created), "ehr")
    ch.insert("events", event_rows(event.to_json(), 5), EVENT_COLUMNS)
    alert = {
        "alert_id": "a-1",
        "org_id": "acme",
        "referral_id": "R-1",
        "rule": "not_scheduled",
        "severity": "warning",
        "state": "firing",
        "raised_at": iso(to_micros(created)),
        "resolved_at": None,
        "details": {},
    }
    ch.insert("alerts", alert_rows(orjson.dumps(alert), 0), ALERT_COLUMNS)
    cell = {
        "org_id": "acme",
        "type": "referral.created",
        "window_start": iso(to_micros(created.replace(second=0, microsecond=0))),
        "partition": 0,
        "segment": 9,
        "events": 1,
        "version": 9,
    }
    ch.insert("event_rates", rate_rows(orjson.dumps(cell), 0), RATE_COLUMNS)

    _, state = ch.query(
        "SELECT created_at, seen_at, scheduled_at, updated_at, evaluated_at FROM referral_state"
    )
    ten = datetime(2026, 3, 5, 10, tzinfo=UTC)
    assert [tuple(_utc(t) for t in row) for row in state] == [(created, seen, None, ten, ten)]
    _, stages = ch.query("SELECT entered_at, left_at, duration_us FROM stage_durations")
    left = created + timedelta(seconds=90, microseconds=1)
    assert [(_utc(a), _utc(b), d) for a, b, d in stages] == [(created, left, 90_000_001)]
    _, events = ch.query("SELECT occurred_at FROM events")
    _, alerts = ch.query("SELECT raised_at, resolved_at FROM alerts")
    _, rates = ch.query("SELECT window_start FROM event_rates")
    assert [_utc(t) for (t,) in events] == [created]
    assert [(_utc(a), b) for a, b in alerts] == [(created, None)]
    assert [_utc(t) for (t,) in rates] == [datetime(2026, 3, 4, 15, 20, tzinfo=UTC)]


def _utc(value: datetime | None) -> datetime | None:
    """A time read back, as an aware UTC datetime (chDB may hand naive UTC ones)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
