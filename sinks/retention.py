"""Retention: how long event-level rows stay in ClickHouse (REFTRACK_EVENT_RETENTION_DAYS).

`events` (one row per distinct event, by `occurred_at`) and `event_rates` (per-minute
counts, by `window_start`) get a ClickHouse TTL; merges then drop rows older than that,
whole monthly partitions at a time where they can. Referral-level tables
(`referral_state`, `stage_durations`, `alerts`) are not touched: the KPI views need every
referral, and they carry no event payloads. Kafka keeps its own retention (topic configs).

Applied at each worker start, like the KPI refresh interval. A changed TTL is applied to
the rows already stored too (ClickHouse materializes it), so shortening it on a large
table costs one rewrite; unchanged, nothing happens. Unset: rows are kept.
"""

from __future__ import annotations

from sinks.clickhouse import ClickHouse

# table -> the event-time column its TTL counts from.
RETAINED = {"events": "occurred_at", "event_rates": "window_start"}


def ttl_clause(column: str, days: int) -> str:
    return f"toDateTime({column}) + toIntervalDay({int(days)})"


def current_ttl(ch: ClickHouse, table: str) -> str | None:
    """The TTL expression a table has now (None: none), read from its CREATE statement."""
    target = f"{table}_local" if ch.cluster is not None else table
    _, rows = ch.query(
        "SELECT create_table_query FROM system.tables "
        f"WHERE database = '{ch.database}' AND name = '{target}'"
    )
    if not rows:
        raise LookupError(f"{ch.database}.{target} does not exist: migrate first")
    create = str(rows[0][0])
    if " TTL " not in create:
        return None
    return create.split(" TTL ", 1)[1].split(" SETTINGS ", 1)[0].strip()


def set_retention(ch: ClickHouse, days: int | None) -> list[str]:
    """Give each event-level table the TTL for `days` (None removes it); return the
    tables changed."""
    if days is not None and days < 1:
        raise ValueError("the event retention is at least 1 day")
    changed = []
    for table, column in RETAINED.items():
        wanted = ttl_clause(column, days) if days is not None else None
        have = current_ttl(ch, table)
        if have == wanted or (have is None and wanted is None):
            continue
        action = f"MODIFY TTL {wanted}" if wanted is not None else "REMOVE TTL"
        if ch.cluster is not None:
            ch.command(ch.cluster.alter(ch.database, f"{table}_local", action))
        else:
            ch.command(f"ALTER TABLE {ch.database}.{table} {action}")
        changed.append(table)
    return changed
