"""Read-only access for BI tools, with one role per org that sees only its org's rows.

`reftrack access-sql --org A --org B` prints the statements; an administrator runs them
once (and again when orgs are added: they are idempotent) with a user allowed to manage
access. What they create:

- role `reftrack_bi`: SELECT on the whole reftrack database (every org). SELECT is the
  only grant, so the role cannot write, alter or drop anything.
- role `reftrack_bi_<org>` per org: SELECT on the live contract views and the tables
  they read, and a row policy `org_id = '<org>'` on every table that has `org_id`.
  Normal views run as the caller (SQL SECURITY INVOKER, ClickHouse's default), so the
  policies filter `referral_status`, `kpi_summary_live`, ... too. The precomputed
  `kpi_summary`, `kpi_daily` and `stage_stats` hold every org's rows and are filled by
  the server, so org roles get their `_live` views instead.
- a policy `USING 1 TO ALL EXCEPT <org roles>` per table: once a table has a row policy,
  ClickHouse shows no rows to users without one, which would blind the workers and
  `reftrack_bi`.

Users are the administrator's: `CREATE USER analyst IDENTIFIED BY '…' DEFAULT ROLE
reftrack_bi_acme` (docs/security.md).
"""

from __future__ import annotations

import re

from sinks.cluster import ClusterLayout

# Tables whose rows belong to one org (all have `org_id`), and what an org role reads.
ORG_TABLES = ("referral_state", "stage_durations", "events", "event_rates", "alerts")
ORG_VIEWS = (
    "referral_status",
    "referral_facts",
    "kpi_summary_live",
    "kpi_daily_live",
    "stage_stats_live",
    "event_rates_1m",
)
# Precomputed by the server over every org: readable by `reftrack_bi` only.
ALL_ORGS_ONLY = ("kpi_summary", "kpi_daily", "stage_stats")
ALL_ORGS_ROLE = "reftrack_bi"
_ORG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def org_role(org: str) -> str:
    return f"reftrack_bi_{re.sub(r'[^A-Za-z0-9_]', '_', org)}"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def access_statements(
    database: str, orgs: list[str], cluster: ClusterLayout | None = None
) -> list[str]:
    """The SQL, in order. With a cluster layout everything is ON CLUSTER and the
    policies cover the `_local` tables too (what the shards read)."""
    bad = [o for o in orgs if not _ORG.match(o)]
    if bad:
        raise ValueError(f"not an org id: {bad} (letters, digits, . _ -; at most 64)")
    roles = {org: org_role(org) for org in sorted(set(orgs))}
    if len(set(roles.values())) != len(roles):
        raise ValueError("two org ids map to the same role name; rename one")
    on = cluster.on_cluster if cluster is not None else ""
    out = [
        f"CREATE ROLE IF NOT EXISTS {ALL_ORGS_ROLE}{on}",
        f"GRANT{on} SELECT ON {database}.* TO {ALL_ORGS_ROLE}",
    ]
    tables = [*ORG_TABLES]
    if cluster is not None:
        tables += [f"{t}_local" for t in ORG_TABLES]
    for role in roles.values():
        out.append(f"CREATE ROLE IF NOT EXISTS {role}{on}")
        for name in (*ORG_VIEWS, *tables):
            out.append(f"GRANT{on} SELECT ON {database}.{name} TO {role}")
    for table in tables:
        for org, role in roles.items():
            out.append(
                f"CREATE ROW POLICY OR REPLACE {role}{on} ON {database}.{table} "
                f"FOR SELECT USING org_id = {_literal(org)} TO {role}"
            )
        if roles:
            out.append(
                f"CREATE ROW POLICY OR REPLACE reftrack_all_orgs{on} ON {database}.{table} "
                f"FOR SELECT USING 1 TO ALL EXCEPT {', '.join(roles.values())}"
            )
    return out
