"""The ClickHouse cluster layout: the same migrations, written for a cluster.

With REFTRACK_CLICKHOUSE_CLUSTER set, every storage table `<name>` of the migrations
becomes two tables, both created ON CLUSTER:

- `<name>_local` on every node: the migration's engine made replicated
  (`ReplacingMergeTree(version)` -> `ReplicatedReplacingMergeTree(version)`), or kept
  as it is when REFTRACK_CLICKHOUSE_REPLICATED=false (shards without replicas);
- `<name>`, a Distributed table over `<name>_local`, sharded by the key in
  `SHARDING_KEYS`. Every version of a row lands on one shard, so `FINAL` (run per shard)
  still collapses them: the contract views read `<name>` and stay exactly as written.

Views and the refreshable KPI views are created ON CLUSTER as they are: each node keeps
its own copy of the KPI results, computed over the whole cluster through the Distributed
tables. The rewrite is textual and strict: a statement it has no rule for is an error,
so a new migration cannot silently skip the cluster (a test renders the whole chain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Storage tables and how their rows are spread over shards. The key must keep every
# row that ReplacingMergeTree may collapse (same ORDER BY key) on the same shard.
SHARDING_KEYS = {
    "schema_migrations": "version",
    "referral_state": "cityHash64(org_id, referral_id)",
    "stage_durations": "cityHash64(org_id, referral_id)",
    "events": "cityHash64(org_id, referral_id)",
    "events_by_month": "cityHash64(org_id, referral_id)",
    "alerts": "cityHash64(org_id, referral_id)",
    "event_rates": "cityHash64(org_id, type, window_start)",
}
LOCAL_SUFFIX = "_local"

_NAME = r"(?P<db>[A-Za-z_][A-Za-z0-9_]*)\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
_CREATE_TABLE = re.compile(
    rf"^CREATE TABLE (?:IF NOT EXISTS )?{_NAME}\s*(?P<columns>\(.*\))\s*"
    r"ENGINE = (?P<engine>[A-Za-z]*MergeTree)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$",
    re.S,
)
_CREATE_VIEW = re.compile(rf"^(?P<head>CREATE (?:OR REPLACE )?(?:MATERIALIZED )?VIEW) {_NAME}\b")
_RENAME = re.compile(rf"^RENAME TABLE {_NAME} TO (?P<db2>\w+)\.(?P<to>\w+)$")
_EXCHANGE = re.compile(rf"^EXCHANGE TABLES {_NAME} AND (?P<db2>\w+)\.(?P<other>\w+)$")
_DROP = re.compile(rf"^DROP TABLE (?:IF EXISTS )?{_NAME}$")
_CREATE_DATABASE = re.compile(r"^CREATE DATABASE (?:IF NOT EXISTS )?(?P<db>\w+)$")
# Run as they are: node-local by nature, or DML through the Distributed tables.
_AS_IS = ("SYSTEM WAIT VIEW ", "INSERT INTO ")

# Settings for every statement and insert in the cluster layout: an insert returns once
# each shard has the rows (not when they sit in the node's send queue), so an
# acknowledged sink batch is stored as SPEC §6 requires.
CLUSTER_SETTINGS = {"insert_distributed_sync": 1}


class NoClusterForm(ValueError):
    """A migration statement the cluster rewrite has no rule for."""


@dataclass(frozen=True)
class ClusterLayout:
    """Where and how the tables are created: REFTRACK_CLICKHOUSE_CLUSTER and friends."""

    cluster: str
    replicated: bool = True
    # Keeper path and replica name of each `_local` table. Empty: the server's
    # `default_replica_path` / `default_replica_name` (`/clickhouse/tables/{uuid}/{shard}`,
    # `{replica}`), which follow a table through RENAME and EXCHANGE.
    replica_path: str = ""
    replica_name: str = "{replica}"

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}"

    def engine(self, engine: str, args: str | None) -> str:
        if not self.replicated:
            return f"{engine}({args})" if args else engine
        params = [a.strip() for a in (args or "").split(",") if a.strip()]
        if self.replica_path:
            params = [_quote(self.replica_path), _quote(self.replica_name), *params]
        return f"Replicated{engine}({', '.join(params)})"

    def distributed(self, db: str, name: str) -> str:
        key = SHARDING_KEYS.get(name)
        if key is None:
            raise NoClusterForm(
                f"table {name} has no sharding key: add it to sinks.cluster.SHARDING_KEYS"
            )
        return (
            f"CREATE OR REPLACE TABLE {db}.{name}{self.on_cluster} AS {db}.{name}{LOCAL_SUFFIX} "
            f"ENGINE = Distributed({self.cluster}, {db}, {name}{LOCAL_SUFFIX}, {key})"
        )

    def rewrite(self, statement: str) -> list[str]:
        """The statements that do on the cluster what `statement` does on one server."""
        s = statement.strip()
        if m := _CREATE_DATABASE.match(s):
            return [f"CREATE DATABASE IF NOT EXISTS {m['db']}{self.on_cluster}"]
        if m := _CREATE_TABLE.match(s):
            db, name = m["db"], m["name"]
            self.distributed(db, name)  # fails early for a table without a sharding key
            local = (
                f"CREATE TABLE IF NOT EXISTS {db}.{name}{LOCAL_SUFFIX}{self.on_cluster}\n"
                f"{m['columns']}\nENGINE = {self.engine(m['engine'], m['args'])}{m['rest']}"
            )
            front = self.distributed(db, name).replace(
                "CREATE OR REPLACE TABLE", "CREATE TABLE IF NOT EXISTS", 1
            )
            return [local, front]
        if m := _CREATE_VIEW.match(s):
            head = f"{m['head']} {m['db']}.{m['name']}"
            return [head + self.on_cluster + s[m.end() :]]
        if m := _RENAME.match(s):
            if m["name"] in SHARDING_KEYS or m["to"] in SHARDING_KEYS:
                raise NoClusterForm(f"renaming a storage table has no cluster form: {s}")
            return [s + self.on_cluster]
        if m := _EXCHANGE.match(s):
            db, a, b = m["db"], m["name"], m["other"]
            if a not in SHARDING_KEYS or b not in SHARDING_KEYS:
                raise NoClusterForm(f"exchange of tables without a sharding key: {s}")
            return [
                f"EXCHANGE TABLES {db}.{a}{LOCAL_SUFFIX} AND {db}.{b}{LOCAL_SUFFIX}"
                + self.on_cluster,
                # Each Distributed front takes the structure of its new local table.
                self.distributed(db, a),
                self.distributed(db, b),
            ]
        if m := _DROP.match(s):
            db, name = m["db"], m["name"]
            drop = [f"DROP TABLE IF EXISTS {db}.{name}{self.on_cluster} SYNC"]
            if name in SHARDING_KEYS:
                drop.append(f"DROP TABLE IF EXISTS {db}.{name}{LOCAL_SUFFIX}{self.on_cluster} SYNC")
            return drop
        if s.startswith(_AS_IS):
            return [s]
        raise NoClusterForm(f"no cluster form for migration statement: {s[:120]}")

    def truncate(self, db: str, table: str) -> str:
        return f"TRUNCATE TABLE IF EXISTS {db}.{table}{LOCAL_SUFFIX}{self.on_cluster} SYNC"

    def alter(self, db: str, name: str, action: str) -> str:
        return f"ALTER TABLE {db}.{name}{self.on_cluster} {action}"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
