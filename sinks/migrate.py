"""Versioned DDL migrations: ordered SQL files in sinks/migrations/, applied once each.

`{db}` in a file is the configured database. Applied versions are recorded in
`<db>.schema_migrations`; applying is idempotent and runs at worker start (unless
REFTRACK_CLICKHOUSE_MIGRATE_ON_START=false) and from `reftrack migrate`. With a cluster
layout each statement is rewritten for the cluster (sinks/cluster.py).

Run one migrator at a time: some migrations rename and exchange tables, and two
processes applying them at the same moment on a fresh server would race.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from sinks.clickhouse import ClickHouse, ClickHouseError
from sinks.cluster import ClusterLayout

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str, cluster: ClusterLayout | None = None) -> list[str]:
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        plain = [s.strip().replace("{db}", database) for s in text.split(";") if s.strip()]
        return _for(cluster, plain)


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
    "(version UInt32, name String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
    "ENGINE = ReplacingMergeTree ORDER BY version"
)


def _for(cluster: ClusterLayout | None, statements: list[str]) -> list[str]:
    if cluster is None:
        return statements
    return [out for statement in statements for out in cluster.rewrite(statement)]


def applied_versions(ch: ClickHouse) -> list[int]:
    _, rows = ch.query(
        f"SELECT version FROM {ch.database}.schema_migrations FINAL ORDER BY version"
    )
    return [int(r[0]) for r in rows]


def available() -> list[Migration]:
    found = []
    for entry in resources.files("sinks.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def pending(ch: ClickHouse) -> list[Migration]:
    """Migrations this reftrack has that the database has not applied (all of them when
    it has none); for a worker that must not migrate on start."""
    try:
        done = set(applied_versions(ch))
    except ClickHouseError:  # no database or no schema_migrations table yet
        done = set()
    return [m for m in available() if m.version not in done]


def migrate(ch: ClickHouse, target: int | None = None) -> list[Migration]:
    """Create the database if needed and apply, in order, every migration not yet applied
    (up to `target`, when given: tests use it to build an older schema)."""
    db = ch.database
    for statement in _for(ch.cluster, [f"CREATE DATABASE IF NOT EXISTS {db}"]):
        ch.command(statement)
    ch.use_database()
    for statement in _for(ch.cluster, [MIGRATIONS_TABLE.replace("{db}", db)]):
        ch.command(statement)
    _, rows = ch.query(f"SELECT version FROM {db}.schema_migrations FINAL")
    done = {int(r[0]) for r in rows}
    applied = []
    for migration in available():
        if migration.version in done or (target is not None and migration.version > target):
            continue
        for statement in migration.statements(db, ch.cluster):
            ch.command(statement)
        ch.insert("schema_migrations", [[migration.version, migration.name]], ["version", "name"])
        log.info("applied migration %04d_%s", migration.version, migration.name)
        applied.append(migration)
    return applied
