"""The cluster rewrite of the migrations (sinks/cluster.py), statement by statement.

The engine runs the result in tests/integration/test_clickhouse_cluster.py; here: the
rules, and that a statement without a rule is refused rather than run on one node.
"""

from __future__ import annotations

import os
import re

import pytest

from sinks.cluster import SHARDING_KEYS, ClusterLayout, NoClusterForm
from sinks.migrate import MIGRATIONS_TABLE, available
from streams.config import ConfigError, load_settings

CLUSTER = ClusterLayout("main")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REFTRACK_"):
            monkeypatch.delenv(name)


TABLE = """CREATE TABLE IF NOT EXISTS db.alerts
(
    alert_id String,
    version  UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(raised_at)
ORDER BY (alert_id)"""


def test_a_storage_table_becomes_a_replicated_local_table_and_a_distributed_front() -> None:
    local, front = CLUSTER.rewrite(TABLE)
    assert local.startswith("CREATE TABLE IF NOT EXISTS db.alerts_local ON CLUSTER main\n(")
    assert "ENGINE = ReplicatedReplacingMergeTree(version)\nPARTITION BY" in local
    assert local.endswith("ORDER BY (alert_id)")
    assert front == (
        "CREATE TABLE IF NOT EXISTS db.alerts ON CLUSTER main AS db.alerts_local "
        "ENGINE = Distributed(main, db, alerts_local, cityHash64(org_id, referral_id))"
    )


def test_explicit_replica_path_and_shards_without_replicas() -> None:
    explicit = ClusterLayout("main", replica_path="/ch/{shard}/{database}/{table}")
    local, _ = explicit.rewrite(TABLE)
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/ch/{shard}/{database}/{table}', "
        "'{replica}', version)" in local
    )
    plain, _ = ClusterLayout("main", replicated=False).rewrite(TABLE)
    assert "ENGINE = ReplacingMergeTree(version)" in plain
    bare = CLUSTER.rewrite(MIGRATIONS_TABLE.replace("{db}", "db"))[0]
    assert "ENGINE = ReplicatedReplacingMergeTree() ORDER BY version" in bare


def test_views_renames_and_drops_run_on_the_cluster() -> None:
    assert CLUSTER.rewrite("CREATE OR REPLACE VIEW db.v AS SELECT 1") == [
        "CREATE OR REPLACE VIEW db.v ON CLUSTER main AS SELECT 1"
    ]
    mv = (
        "CREATE MATERIALIZED VIEW db.k\nREFRESH EVERY 30 SECOND\n"
        "ENGINE = MergeTree ORDER BY x\nAS SELECT 1"
    )
    assert CLUSTER.rewrite(mv) == [mv.replace("db.k\n", "db.k ON CLUSTER main\n")]
    assert CLUSTER.rewrite("RENAME TABLE db.kpi TO db.kpi_live") == [
        "RENAME TABLE db.kpi TO db.kpi_live ON CLUSTER main"
    ]
    assert CLUSTER.rewrite("DROP TABLE db.events_by_month") == [
        "DROP TABLE IF EXISTS db.events_by_month ON CLUSTER main SYNC",
        "DROP TABLE IF EXISTS db.events_by_month_local ON CLUSTER main SYNC",
    ]
    assert CLUSTER.rewrite("DROP TABLE db.some_view") == [
        "DROP TABLE IF EXISTS db.some_view ON CLUSTER main SYNC"
    ]
    assert CLUSTER.rewrite("SYSTEM WAIT VIEW db.k") == ["SYSTEM WAIT VIEW db.k"]


def test_exchange_swaps_the_local_tables_and_rebuilds_both_fronts() -> None:
    swap, a, b = CLUSTER.rewrite("EXCHANGE TABLES db.events AND db.events_by_month")
    assert swap == "EXCHANGE TABLES db.events_local AND db.events_by_month_local ON CLUSTER main"
    assert a.startswith("CREATE OR REPLACE TABLE db.events ON CLUSTER main AS db.events_local ")
    assert "Distributed(main, db, events_by_month_local, " in b


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE db.new_table (x UInt8) ENGINE = MergeTree ORDER BY x",  # no key
        "RENAME TABLE db.events TO db.events_old",  # a storage table
        "EXCHANGE TABLES db.v1 AND db.v2",
        "ALTER TABLE db.events ADD COLUMN y UInt8",
        "OPTIMIZE TABLE db.events FINAL",
    ],
)
def test_a_statement_without_a_cluster_rule_is_refused(statement: str) -> None:
    with pytest.raises(NoClusterForm):
        CLUSTER.rewrite(statement)


def test_the_whole_migration_chain_has_a_cluster_form() -> None:
    for migration in available():
        for statement in migration.statements("db", CLUSTER):
            assert (
                statement.startswith(("INSERT", "SYSTEM WAIT")) or " ON CLUSTER main" in statement
            )


def test_every_sharding_key_uses_only_columns_of_the_order_key() -> None:
    # A key built from other columns could send two versions of a row to two shards,
    # where FINAL cannot collapse them.
    statements = [MIGRATIONS_TABLE.replace("{db}", "db")]
    statements += [s for m in available() for s in m.statements("db")]
    order_keys = {}
    for statement in statements:
        created = re.match(r"CREATE TABLE (?:IF NOT EXISTS )?db\.(\w+)", statement)
        if created:
            order = re.search(r"ORDER BY \(?([\w, ]+)\)?\s*$", statement)
            assert order, statement
            order_keys[created[1]] = {c.strip() for c in order[1].split(",")}
    assert set(order_keys) == set(SHARDING_KEYS)
    for table, key in SHARDING_KEYS.items():
        columns = set(key.removeprefix("cityHash64(").removesuffix(")").split(", "))
        assert columns <= order_keys[table], table


def test_truncate_and_alter_on_the_cluster() -> None:
    assert CLUSTER.truncate("db", "events") == (
        "TRUNCATE TABLE IF EXISTS db.events_local ON CLUSTER main SYNC"
    )
    assert CLUSTER.alter("db", "kpi_daily", "MODIFY REFRESH EVERY 5 SECOND") == (
        "ALTER TABLE db.kpi_daily ON CLUSTER main MODIFY REFRESH EVERY 5 SECOND"
    )


def test_settings_build_the_layout_and_refuse_a_cluster_on_the_embedded_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_CLUSTER", "main")
    with pytest.raises(ConfigError, match="embedded engine has no cluster"):
        load_settings()
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_DSN", "https://u:p@ch.example:8443/")
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_REPLICATED", "false")
    settings = load_settings()
    assert settings.cluster_layout == ClusterLayout("main", replicated=False)
    ch = settings.clickhouse()
    assert ch.cluster == ClusterLayout("main", replicated=False)
    assert ch._settings == {"insert_distributed_sync": 1}
    monkeypatch.delenv("REFTRACK_CLICKHOUSE_CLUSTER")
    assert load_settings().clickhouse()._settings == {}


def test_embedded_dsn_takes_only_a_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_DSN", "chdb:///var/ch?config_file=/etc/ch.xml")
    assert load_settings().embedded_clickhouse
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_DSN", "chdb:///var/ch?verbose=1")
    with pytest.raises(ConfigError, match=r"only \?config_file="):
        load_settings()
