"""Versioned DDL migrations: ordered SQL files in sinks/migrations/, applied once each.

`{db}` in a file is the configured database. Applied versions are recorded in
`<db>.schema_migrations`; applying is idempotent and runs at worker start and from
`reftrack migrate`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from sinks.clickhouse import ClickHouse

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self, database: str) -> list[str]:
        text = "\n".join(
            line for line in self.sql.splitlines() if not line.strip().startswith("--")
        )
        return [s.strip().replace("{db}", database) for s in text.split(";") if s.strip()]


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


def migrate(ch: ClickHouse, target: int | None = None) -> list[Migration]:
    """Create the database if needed and apply, in order, every migration not yet applied
    (up to `target`, when given: tests use it to build an older schema)."""
    db = ch.database
    ch.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    ch.use_database()
    ch.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    _, rows = ch.query(f"SELECT version FROM {db}.schema_migrations FINAL")
    done = {int(r[0]) for r in rows}
    applied = []
    for migration in available():
        if migration.version in done or (target is not None and migration.version > target):
            continue
        for statement in migration.statements(db):
            ch.command(statement)
        ch.insert("schema_migrations", [[migration.version, migration.name]], ["version", "name"])
        log.info("applied migration %04d_%s", migration.version, migration.name)
        applied.append(migration)
    return applied
