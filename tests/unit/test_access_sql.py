"""The read-only BI roles and per-org row policies (sinks/access.py, `reftrack access-sql`).

The engine parses every statement and evaluates every policy's condition on real rows in
tests/integration/test_migrations.py; here: what is granted to whom.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sinks.access import ALL_ORGS_ONLY, ORG_TABLES, ORG_VIEWS, access_statements, org_role
from sinks.cluster import ClusterLayout

ROOT = Path(__file__).resolve().parents[2]


def test_org_roles_read_their_views_and_tables_only_through_their_policy() -> None:
    sql = access_statements("reftrack", ["acme", "beta-health"])
    assert sql[:2] == [
        "CREATE ROLE IF NOT EXISTS reftrack_bi",
        "GRANT SELECT ON reftrack.* TO reftrack_bi",
    ]
    assert org_role("beta-health") == "reftrack_bi_beta_health"
    for role in ("reftrack_bi_acme", "reftrack_bi_beta_health"):
        granted = {
            m[1]
            for s in sql
            if (m := re.fullmatch(rf"GRANT SELECT ON reftrack\.(\w+) TO {role}", s))
        }
        assert granted == set(ORG_VIEWS) | set(ORG_TABLES)
        assert not granted & set(ALL_ORGS_ONLY)  # precomputed over every org
    for table in ORG_TABLES:
        policies = [s for s in sql if s.startswith("CREATE ROW") and f" ON reftrack.{table} " in s]
        assert policies == [
            f"CREATE ROW POLICY OR REPLACE reftrack_bi_acme ON reftrack.{table} "
            "FOR SELECT USING org_id = 'acme' TO reftrack_bi_acme",
            f"CREATE ROW POLICY OR REPLACE reftrack_bi_beta_health ON reftrack.{table} "
            "FOR SELECT USING org_id = 'beta-health' TO reftrack_bi_beta_health",
            f"CREATE ROW POLICY OR REPLACE reftrack_all_orgs ON reftrack.{table} "
            "FOR SELECT USING 1 TO ALL EXCEPT reftrack_bi_acme, reftrack_bi_beta_health",
        ]
    assert not [s for s in sql if re.match(r"GRANT .*(INSERT|ALTER|DROP|ALL)", s)]


def test_on_a_cluster_everything_runs_on_it_and_covers_local_tables() -> None:
    sql = access_statements("reftrack", ["acme"], ClusterLayout("main"))
    assert all(" ON CLUSTER main" in s for s in sql)
    assert any(" ON reftrack.events_local FOR SELECT USING org_id = 'acme'" in s for s in sql)


@pytest.mark.parametrize("org", ["", "a b", "x' OR 1=1 --", "-lead", "a" * 65])
def test_org_ids_that_are_not_ids_are_refused(org: str) -> None:
    with pytest.raises(ValueError, match="not an org id"):
        access_statements("reftrack", [org])


def test_two_orgs_with_one_role_name_are_refused() -> None:
    with pytest.raises(ValueError, match="same role name"):
        access_statements("reftrack", ["a.b", "a_b"])


def test_the_example_file_is_what_the_command_prints() -> None:
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "access-sql",
            "--org",
            "northwind",
            "--org",
            "lakeside",
            "--org",
            "summit",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert printed == (ROOT / "deploy/clickhouse/access.example.sql").read_text()
