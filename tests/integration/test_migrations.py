"""Migrations upgrade an existing database in place, keeping its data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sinks.clickhouse import ClickHouse
from sinks.migrate import applied_versions, available, migrate
from sinks.rows import REFERRAL_STATE_COLUMNS

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
