"""The precomputed KPI views (migration 0005): how often they refresh, and how fresh they are.

`kpi_summary`, `kpi_daily` and `stage_stats` are refreshable materialized views over the
exact `<name>_live` views. ClickHouse runs the refreshes itself (chDB in the process that
holds the engine, a server in its own scheduler), so nothing here is on the hot path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sinks.clickhouse import ClickHouse

KPI_VIEWS = ("kpi_summary", "kpi_daily", "stage_stats")


def set_refresh_interval(ch: ClickHouse, seconds: int) -> None:
    """Refresh every `seconds` (REFTRACK_KPI_REFRESH_SECONDS); applied at each worker start."""
    if seconds < 1:
        raise ValueError("the KPI refresh interval is at least 1 second")
    for view in KPI_VIEWS:
        action = f"MODIFY REFRESH EVERY {int(seconds)} SECOND"
        if ch.cluster is not None:  # every node keeps (and refreshes) its own copy
            ch.command(ch.cluster.alter(ch.database, view, action))
        else:
            ch.command(f"ALTER TABLE {ch.database}.{view} {action}")


def refresh_now(ch: ClickHouse) -> None:
    """Recompute the three views now and return when every one is done (after a
    replay). On a cluster: the connected node's copies (ClickHouse has no ON CLUSTER
    form of SYSTEM REFRESH VIEW); the others follow on their schedule."""
    for view in KPI_VIEWS:
        ch.command(f"SYSTEM REFRESH VIEW {ch.database}.{view}")
    for view in KPI_VIEWS:
        ch.command(f"SYSTEM WAIT VIEW {ch.database}.{view}")


def refresh_status(ch: ClickHouse) -> dict[str, dict[str, Any]]:
    """Per view: when its last successful refresh started (UTC), how long it took, the
    next one, and the last error (empty when none)."""
    columns, rows = ch.query(
        "SELECT view, status, last_success_time, last_success_duration_ms, "
        "next_refresh_time, exception FROM system.view_refreshes "
        f"WHERE database = '{ch.database}'",
        True,
    )
    status = {}
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        status[record["view"]] = {
            "status": record["status"],
            "last_success": _iso(record["last_success_time"]),
            "last_success_ms": record["last_success_duration_ms"],
            "next_refresh": _iso(record["next_refresh_time"]),
            "error": record["exception"],
        }
    return status


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # chDB returns naive UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
