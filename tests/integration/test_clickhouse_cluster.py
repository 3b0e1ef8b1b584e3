"""The cluster layout (REFTRACK_CLICKHOUSE_CLUSTER) run against the real engine, chDB.

chDB is one node, so what it can check is checked here and the rest is said:

- It cannot run distributed DDL (`ON CLUSTER` -> "Replicated DDL queries are disabled"),
  so the statements run without that clause. Every production statement, `ON CLUSTER`
  and the Replicated engines included, is parsed by the engine itself (`formatQuery`).
- Replicated tables need Keeper. With ClickHouse's in-memory stand-in (`testkeeper`)
  chDB creates them read-only and then aborts the process within seconds (a background
  thread), so they are parsed, not run.
- Distributed tables over a one-shard cluster work for real: the sharded layout (no
  replicas) migrates an old schema with data, takes the same rows as a single-node
  database, and every contract view answers the same. With one shard, what this does
  not show is rows spread over several: that rests on the sharding keys keeping every
  version of a row on one shard (sinks/cluster.py).

chDB opens one engine per process and this one needs its own configuration file, so
each check runs in a fresh interpreter and returns what it saw.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sinks.clickhouse import ClickHouse
from sinks.cluster import ClusterLayout

pytestmark = pytest.mark.integration

CLUSTER = "reftrack"
CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER}>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>localhost</host><port>9000</port></replica>
      </shard>
    </{CLUSTER}>
  </remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>
"""
# The contract views (SPEC §7) and the tables behind them, compared row for row.
VIEWS = (
    "referral_status",
    "kpi_summary",
    "kpi_daily",
    "stage_stats",
    "kpi_summary_live",
    "kpi_daily_live",
    "stage_stats_live",
    "event_rates_1m",
)
TABLES = ("referral_state", "stage_durations", "events", "event_rates", "alerts")


class NodeLocal(ClusterLayout):
    """The production layout minus `ON CLUSTER`, which a single chDB node cannot run."""

    @property
    def on_cluster(self) -> str:
        return ""


def _client(workdir: str, database: str, layout: ClusterLayout | None) -> ClickHouse:
    config = Path(workdir) / "config.xml"
    config.write_text(CONFIG, encoding="utf-8")
    return ClickHouse(f"chdb://{workdir}/engine?config_file={config}", database, layout)


def _rows(ch: ClickHouse, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in ch.query(sql)[1]]


def parse_production_statements(ch: ClickHouse) -> list[tuple[str, str]]:
    """Every statement of the production cluster chain (ON CLUSTER, replicated, server
    default replica paths) with the engine's own formatting of it."""
    from sinks.migrate import MIGRATIONS_TABLE, available

    production = ClusterLayout(CLUSTER)
    db = "rt_production"
    plain = [f"CREATE DATABASE IF NOT EXISTS {db}", MIGRATIONS_TABLE.replace("{db}", db)]
    plain += [s for m in available() for s in m.statements(db)]
    return [
        (sql, _rows(ch, f"SELECT formatQuery({_literal(sql)})")[0][0])
        for statement in plain
        for sql in production.rewrite(statement)
    ]


def cluster_checks(workdir: str) -> dict[str, Any]:
    """Parse the production chain; build the same data in a single-node database and in
    the sharded layout, through an upgrade (0001-0005, data, then 0006); return what the
    engine said and both databases' rows."""
    from bench import kpi_views as gen
    from sinks.kpi_refresh import refresh_now
    from sinks.migrate import applied_versions, available, migrate

    layouts: dict[str, ClusterLayout | None] = {
        "rt_single": None,
        "rt_sharded": NodeLocal(CLUSTER, replicated=False),
    }
    first = _client(workdir, "rt_single", None)  # not closed: see _in_fresh_process
    seen: dict[str, Any] = {"parsed": parse_production_statements(first)}
    for db, layout in layouts.items():
        ch = ClickHouse(first.dsn, db, layout)
        ch._client = first._connect()  # one engine per process: share its client
        migrate(ch, target=5)
        referrals = 3_000
        for sql in (
            gen.insert_referrals_sql(referrals, newer_of_updated=False),
            gen.insert_referrals_sql(referrals, newer_of_updated=True),  # newer versions
            gen.insert_stages_sql("true"),
            gen.insert_events_sql(0, 20_000, referrals),
            gen.insert_events_sql(0, 500, referrals),  # the same events again
        ):
            ch.command(sql)
        migrate(ch)  # 0006 rebuilds `events` with data in it
        ch.command(gen.INSERT_RATES_SQL)
        ch.insert(
            "alerts",
            [
                [
                    "a-1",
                    "acme",
                    "R-100001",
                    "not_scheduled",
                    "warning",
                    "firing",
                    datetime(2025, 3, 1, tzinfo=UTC),
                    None,
                    "{}",
                    1,
                ]
            ],
            [
                "alert_id",
                "org_id",
                "referral_id",
                "rule",
                "severity",
                "state",
                "raised_at",
                "resolved_at",
                "details",
                "version",
            ],
        )
        refresh_now(ch)
        seen[db] = {
            "versions": applied_versions(ch),
            "engines": dict(
                _rows(ch, f"SELECT name, engine FROM system.tables WHERE database = '{db}'")
            ),
            "views": {v: _rows(ch, f"SELECT * FROM {v} ORDER BY ALL") for v in VIEWS},
            "tables": {
                t: _rows(ch, f"SELECT * EXCEPT inserted_at FROM {t} FINAL ORDER BY ALL")
                for t in TABLES
            },
        }
    seen["all_versions"] = [m.version for m in available()]
    return seen


def _literal(sql: str) -> str:
    return "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _in_fresh_process(fn: Any, workdir: Path) -> Any:
    """Run `fn(workdir)` in a new interpreter and return its result. The child leaves
    with os._exit once the result is written, without closing chDB: the engine's Keeper
    stand-in aborts the process in its teardown."""
    out = workdir / "result.pickle"
    code = (
        "import os, pickle, sys\n"
        f"from {__name__} import {fn.__name__} as fn\n"
        "result = fn(sys.argv[1])\n"
        "with open(sys.argv[2], 'wb') as f:\n"
        "    pickle.dump(result, f)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(workdir), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0 and out.exists(), done.stderr[-3000:]
    with out.open("rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _in_fresh_process(cluster_checks, tmp_path_factory.mktemp("cluster"))


def test_every_production_cluster_statement_parses(seen: dict[str, Any]) -> None:
    parsed = seen["parsed"]
    creates = [sql for sql, _ in parsed if sql.startswith("CREATE TABLE IF NOT EXISTS")]
    locals_ = [sql for sql in creates if "_local ON CLUSTER" in sql]
    fronts = [sql for sql in creates if "ENGINE = Distributed(" in sql]
    assert len(locals_) == len(fronts) == 7  # six storage tables + schema_migrations
    for sql in locals_:
        assert "ENGINE = Replicated" in sql, sql
    for sql, formatted in parsed:
        if not sql.startswith(("INSERT", "SYSTEM WAIT")):
            assert f"ON CLUSTER {CLUSTER}" in formatted, sql


def test_sharded_layout_answers_every_view_like_one_server(seen: dict[str, Any]) -> None:
    single, sharded = seen["rt_single"], seen["rt_sharded"]

    assert single["versions"] == sharded["versions"] == seen["all_versions"]
    assert sharded["engines"]["referral_state"] == "Distributed"
    assert sharded["engines"]["referral_state_local"] == "ReplacingMergeTree"
    assert single["engines"]["referral_state"] == "ReplacingMergeTree"
    assert "referral_state_local" not in single["engines"]

    for table, rows in single["tables"].items():
        assert rows, f"{table} is empty: the comparison would prove nothing"
        assert sharded["tables"][table] == rows, table
    # Older versions were written and collapsed: fewer state rows than inserts.
    assert len(single["tables"]["referral_state"]) == 3_000
    for view, rows in single["views"].items():
        assert rows, f"{view} is empty"
        other = sharded["views"][view]
        assert len(other) == len(rows), view
        for mine, theirs in zip(rows, other, strict=True):
            assert _close(mine, theirs), (view, mine, theirs)


def _close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal, floats up to summation order (a Distributed query merges partial sums)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if not (math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) or (x != x and y != y)):
                return False
        elif x != y:
            return False
    return True
