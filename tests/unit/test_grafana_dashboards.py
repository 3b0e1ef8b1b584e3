"""Grafana provisioning and dashboards (deploy/grafana), checked offline.

The dashboards are JSON a reviewer cannot run by eye, so the test does what Grafana and
its data sources would do with them, without Grafana:

- the structure Grafana needs (stable uids, unique panel ids, a grid without overlaps)
  and data sources that deploy/grafana/provisioning/datasources provisions;
- every ClickHouse query, after the ClickHouse plugin's macros and the template variables
  are expanded the way the plugin expands them, runs against the real schema
  (sinks/migrations) in an embedded chDB engine, read-only, and returns rows for a small
  fixture; it reads only the BI contract views and never a patient identifier;
- every Prometheus expression passes `promtool check rules` and uses only metrics that
  streams/metrics.py registers or the recording rules define, with labels they carry.

chDB allows one engine per process and other tests in this pytest process open one, so
the SQL runs in a child process (run_sql_check).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
PROVISIONING_DIR = GRAFANA_DIR / "provisioning"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "reftrack.rules.yml"

DASHBOARDS = {"reftrack-kpis": "reftrack-kpis.json", "reftrack-pipeline": "reftrack-pipeline.json"}
GRID_WIDTH = 24
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
# The BI contract (docs/metrics.md): dashboards read these views and nothing else.
CONTRACT_VIEWS = {
    "kpi_summary",
    "kpi_daily",
    "stage_stats",
    "referral_status",
    "event_rates_1m",
    "alerts",
}
ORG_FILTER = "$__conditionalAll(org_id IN (${org:singlequote}), $org)"

# The time range the macros expand to, and the fixture rows inside it (run_sql_check).
TIME_FROM = datetime(2025, 1, 1, tzinfo=UTC)
TIME_TO = datetime(2025, 12, 31, tzinfo=UTC)
# (org selection, $__interval_s): one org, several, and "All" (None).
SELECTIONS: list[tuple[list[str] | None, int]] = [
    (["acme"], 60),
    (["acme", "globex"], 20),
    (None, 300),
]

# Labels every scraped series carries (the target's, and deploy/*/prometheus.yml's relabel).
TARGET_LABELS = {"job", "instance", "service"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}
# Grafana's values for the Prometheus dashboard's variables and interval macros.
PROMETHEUS_VARIABLES = {
    "job": "reftrack",
    "instance": ".*",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}


# -- loading ---------------------------------------------------------------------------


@cache
def dashboard(uid: str) -> dict[str, Any]:
    return json.loads((DASHBOARD_DIR / DASHBOARDS[uid]).read_text(encoding="utf-8"))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel, target


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board.get("templating", {}).get("list", [])


@cache
def provisioned_datasources() -> dict[str, str]:
    """uid -> type of the data sources Grafana provisions."""
    found = {}
    for path in sorted((PROVISIONING_DIR / "datasources").glob("*.y*ml")):
        for ds in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            found[ds["uid"]] = ds["type"]
    return found


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return query if isinstance(query, str) else query.get("rawSql") or query["query"]


def clickhouse_queries() -> list[tuple[str, str, dict[str, Any] | None]]:
    """(name, SQL, panel or None for a variable) of every ClickHouse query."""
    queries = []
    for board in map(dashboard, DASHBOARDS):
        for variable in variables(board):
            if variable.get("datasource", {}).get("type") == CLICKHOUSE_TYPE:
                queries.append(
                    (f"{board['uid']} ${variable['name']}", variable_query(variable), None)
                )
        for panel, target in targets(board):
            if target["datasource"]["type"] == CLICKHOUSE_TYPE:
                name = f"{board['uid']} #{panel['id']} {panel['title']} {target['refId']}"
                queries.append((name, target["rawSql"], panel))
    return queries


def prometheus_exprs() -> list[tuple[str, str]]:
    """(name, PromQL) of every Prometheus query, variables' label_values() selectors too."""
    exprs = []
    for board in map(dashboard, DASHBOARDS):
        for variable in variables(board):
            if variable.get("datasource", {}).get("type") == "prometheus":
                query = variable_query(variable)
                match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
                assert match, f"${variable['name']}: not label_values(selector, label): {query}"
                exprs.append((f"{board['uid']} ${variable['name']}", match[1]))
        for panel, target in targets(board):
            if target["datasource"]["type"] == "prometheus":
                exprs.append((f"{board['uid']} #{panel['id']} {target['refId']}", target["expr"]))
    return exprs


# -- expanding Grafana's macros and variables ------------------------------------------


def macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the macro whose "(" is at open_paren, split on top-level commas, and
    the index after its ")" (the plugin's getMacroArgs)."""
    depth, start, args = 0, open_paren + 1, []
    for i in range(open_paren, len(sql)):
        char = sql[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif char == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise ValueError(f"unbalanced macro at {open_paren}: {sql}")


def expand_clickhouse(sql: str, orgs: list[str] | None, interval_s: int) -> str:
    """SQL as the ClickHouse plugin (v4) sends it for this time range, org selection
    (None: "All") and interval. Anything left with a "$" is an unhandled macro or
    variable: ValueError."""
    # Frontend first (CHDatasource.applyTemplateVariables): $__conditionalAll becomes 1=1
    # when the variable is "All", else its condition; then Grafana's variables.
    while (at := sql.rfind("$__conditionalAll(")) != -1:
        args, end = macro_args(sql, at + len("$__conditionalAll"))
        assert len(args) == 2, f"$__conditionalAll takes 2 arguments: {args}"
        variable = re.fullmatch(r"\s*\$\{?(\w+)\}?\s*", args[1])
        assert variable and variable[1] == "org", args[1]
        sql = sql[:at] + ("1=1" if orgs is None else args[0]) + sql[end:]
    selected = orgs if orgs is not None else ["acme", "globex", "initech"]  # All: every option
    quoted = ",".join("'" + org.replace("'", "\\'") + "'" for org in selected)
    sql = re.sub(r"\$\{org(?::singlequote)?\}|\$org\b", lambda _: quoted, sql)

    # Then the backend's macros (pkg/macros/macros.go).
    start, end = int(TIME_FROM.timestamp()), int(TIME_TO.timestamp())

    def column_macro(name: str, expand: Any) -> None:
        nonlocal sql
        while (at := sql.find(f"$__{name}(")) != -1:
            args, stop = macro_args(sql, at + len(f"$__{name}"))
            sql = sql[:at] + expand(*[a.strip() for a in args]) + sql[stop:]

    column_macro("timeFilter", lambda c: f"{c} >= toDateTime({start}) AND {c} <= toDateTime({end})")
    column_macro(
        "dateFilter",
        lambda c: f"{c} >= toDate('{TIME_FROM:%Y-%m-%d}') AND {c} <= toDate('{TIME_TO:%Y-%m-%d}')",
    )
    column_macro(
        "timeInterval",
        lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {interval_s} second)",
    )
    sql = sql.replace("$__fromTime", f"toDateTime({start})").replace(
        "$__toTime", f"toDateTime({end})"
    )
    sql = sql.replace("$__interval_s", str(interval_s))
    if "$" in sql:
        raise ValueError(f"unexpanded macro or variable: {sql}")
    return sql


def expand_prometheus(expr: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in PROMETHEUS_VARIABLES:
            raise ValueError(f"unknown variable ${name} in {expr}")
        return PROMETHEUS_VARIABLES[name]

    expanded = re.sub(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}", substitute, expr)
    if "$" in expanded:
        raise ValueError(f"unexpanded variable: {expanded}")
    return expanded


def test_the_macro_expansion_is_not_vacuous() -> None:
    sql = f"SELECT 1 FROM t WHERE $__timeFilter(ts) AND {ORG_FILTER}"
    assert expand_clickhouse(sql, ["acme", "o'x"], 60) == (
        "SELECT 1 FROM t WHERE ts >= toDateTime(1735689600) AND ts <= toDateTime(1767139200)"
        " AND org_id IN ('acme','o\\'x')"
    )
    assert expand_clickhouse(sql, None, 60).endswith("AND 1=1")
    for unknown in ("$__timeGroup(ts, 1m)", "$region", "${__from}"):
        with pytest.raises(ValueError):
            expand_clickhouse(f"SELECT {unknown}", ["acme"], 60)
    with pytest.raises(ValueError):
        expand_prometheus('up{zone="$zone"}')


# -- structure -------------------------------------------------------------------------


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_is_provisionable(uid: str) -> None:
    board = dashboard(uid)
    assert board["uid"] == uid, f"{DASHBOARDS[uid]}: uid {board['uid']}"
    assert board["title"].strip()
    assert board.get("id") is None, "a provisioned dashboard carries no database id"
    assert board["schemaVersion"] >= 39
    assert board["tags"] == ["reftrack"]
    assert board["refresh"] == "30s"
    assert board["editable"] is False
    assert board["time"]["from"].startswith("now-") and board["time"]["to"] == "now"
    assert board["panels"], "no panels"


def test_uids_and_titles_are_unique() -> None:
    boards = [dashboard(uid) for uid in DASHBOARDS]
    assert sorted(DASHBOARDS) == sorted(b["uid"] for b in boards)
    assert len({b["title"] for b in boards}) == len(boards)
    on_disk = sorted(p.name for p in DASHBOARD_DIR.glob("*.json"))
    assert on_disk == sorted(DASHBOARDS.values()), f"unexpected dashboards: {on_disk}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panel_ids_are_unique_and_the_grid_has_no_overlaps(uid: str) -> None:
    board = dashboard(uid)
    ids = [p["id"] for p in panels(board)]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    boxes = []
    for panel in panels(board):
        grid = panel.get("gridPos")
        assert grid, f"#{panel['id']} {panel['title']}: no gridPos"
        x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= GRID_WIDTH, (panel["title"], grid)
        boxes.append((panel["title"], x, y, w, h))
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1 :]:
            overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
            assert not overlap, f"{a!r} and {b!r} overlap"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_datasource_is_a_provisioned_one(uid: str) -> None:
    board = dashboard(uid)
    provisioned = provisioned_datasources()
    assert provisioned == {"prometheus": "prometheus", "clickhouse": CLICKHOUSE_TYPE}

    def check(where: str, ds: Any) -> None:
        assert isinstance(ds, dict), f"{where}: datasource {ds!r} is not {{type, uid}}"
        assert ds.get("uid") in provisioned, f"{where}: unknown datasource uid {ds}"
        assert ds.get("type") == provisioned[ds["uid"]], f"{where}: type of {ds}"

    for panel in panels(board):
        if panel["type"] == "row":
            continue
        check(f"#{panel['id']} {panel['title']}", panel.get("datasource"))
        assert panel.get("targets"), f"#{panel['id']} {panel['title']}: no targets"
        for target in panel["targets"]:
            check(f"#{panel['id']} {target['refId']}", target.get("datasource"))
            assert target["datasource"] == panel["datasource"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    for variable in variables(board):
        if variable["type"] == "query":
            check(f"${variable['name']}", variable.get("datasource"))


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_queries_use_only_defined_variables(uid: str) -> None:
    board = dashboard(uid)
    defined = {v["name"] for v in variables(board)}
    texts = [t.get("rawSql") or t.get("expr") or "" for _, t in targets(board)]
    texts += [variable_query(v) for v in variables(board) if v["type"] == "query"]
    for text in texts:
        for match in re.finditer(r"\$\{?(\w+)", text):
            name = match[1]
            assert name.startswith("__") or name in defined, f"${name} is not defined: {text}"


def test_provider_loads_the_dashboards_that_compose_mounts() -> None:
    from tests.unit.test_deploy_compose_docker import host_path, services

    (provider,) = yaml.safe_load(
        (PROVISIONING_DIR / "dashboards" / "reftrack.yml").read_text(encoding="utf-8")
    )["providers"]
    assert provider["type"] == "file" and provider["folder"] == "reftrack"
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/reftrack"

    grafana = services()["grafana"]
    assert host_path(grafana, provider["options"]["path"]) == DASHBOARD_DIR
    provider_dir = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert provider_dir == PROVISIONING_DIR / "dashboards"
    assert host_path(grafana, "/etc/grafana/provisioning/datasources") == (
        PROVISIONING_DIR / "datasources"
    )


# -- ClickHouse ------------------------------------------------------------------------


def test_clickhouse_queries_read_the_contract_views_only_and_no_patient_id() -> None:
    queries = clickhouse_queries()
    assert len(queries) >= 10
    for name, sql, panel in queries:
        lowered = sql.lower()
        assert "patient" not in lowered, f"{name}: mentions a patient id"
        assert not re.search(r"select\s+\*|,\s*\*|\.\*", lowered), f"{name}: selects *"
        sources = re.findall(r"\b(?:from|join)\s+([\w.`\"]+)", lowered)
        assert sources, f"{name}: reads no table"
        for source in sources:
            database, _, view = source.strip('`"').rpartition(".")
            assert database == "reftrack" and view in CONTRACT_VIEWS, f"{name}: reads {source}"
        if panel is not None:
            assert ORG_FILTER in sql, f"{name}: not filtered by $org"


# Rows for the fixture: every panel finds something for org "acme" in TIME_FROM..TIME_TO.
FIXTURE_SQL = """
INSERT INTO reftrack.referral_state
    (org_id, referral_id, version, status, priority, specialty, patient_ref, created_at,
     routed_at, contacted_at, scheduled_at, seen_at, closed_at, outreach_attempts, no_shows,
     completions, leaked, flags, updated_at, evaluated_at)
VALUES
    ('acme', 'R-1', 2, 'scheduled', 'urgent', 'cardiology', 'p1', '2025-03-01 08:00:00',
     '2025-03-01 09:00:00', '2025-03-01 10:00:00', '2025-03-02 08:00:00', NULL, NULL, 1, 0,
     0, false, ['appointment_overdue'], '2025-03-02 08:00:00', '2025-03-09 00:00:00'),
    ('acme', 'R-2', 5, 'closed', 'routine', NULL, NULL, '2025-03-03 08:00:00',
     '2025-03-03 09:00:00', '2025-03-04 10:00:00', '2025-03-05 08:00:00',
     '2025-03-10 08:00:00', '2025-03-12 08:00:00', 2, 1, 1, false, [],
     '2025-03-12 08:00:00', '2025-03-12 08:00:00'),
    ('acme', 'R-3', 3, 'leaked', 'routine', 'dermatology', 'p3', '2025-03-04 08:00:00',
     NULL, NULL, NULL, NULL, NULL, 0, 0, 0, true, [], '2025-03-06 08:00:00',
     '2025-03-06 08:00:00'),
    ('globex', 'R-9', 1, 'created', 'urgent', 'cardiology', 'p9', '2025-04-01 08:00:00',
     NULL, NULL, NULL, NULL, NULL, 0, 0, 0, false, ['not_routed'], '2025-04-01 08:00:00',
     '2025-04-02 08:00:00');
INSERT INTO reftrack.stage_durations
    (org_id, referral_id, stage, version, priority, specialty, entered_at, left_at, duration_us)
VALUES
    ('acme', 'R-2', 'created', 5, 'routine', NULL, '2025-03-03 08:00:00',
     '2025-03-03 09:00:00', 3600000000),
    ('acme', 'R-1', 'routed', 2, 'urgent', 'cardiology', '2025-03-01 09:00:00',
     '2025-03-01 10:00:00', 3600000000);
INSERT INTO reftrack.event_rates (org_id, type, window_start, partition, segment, events, version)
VALUES
    ('acme', 'referral.created', '2025-03-01 08:00:00', 0, 0, 3, 1),
    ('acme', 'referral.routed', '2025-03-01 09:01:00', 1, 0, 2, 1),
    ('globex', 'referral.created', '2025-04-01 08:00:00', 0, 0, 1, 1);
INSERT INTO reftrack.alerts
    (alert_id, org_id, referral_id, rule, severity, state, raised_at, resolved_at, details,
     version)
VALUES
    ('A-1', 'acme', 'R-1', 'appointment_overdue', 'critical', 'firing',
     '2025-03-05 08:00:00', NULL,
     '{"priority":"urgent","specialty":"cardiology","status":"scheduled"}', 1),
    ('A-2', 'acme', 'R-2', 'not_contacted', 'warning', 'firing', '2025-03-03 10:00:00',
     NULL, '{"priority":"routine","specialty":null,"status":"routed"}', 1),
    ('A-2', 'acme', 'R-2', 'not_contacted', 'warning', 'resolved', '2025-03-03 10:00:00',
     '2025-03-04 10:00:00', '{"priority":"routine","specialty":null,"status":"contacted"}', 2);
"""


def run_sql_check(workdir: str) -> None:
    """Child process: migrate a chDB engine in workdir, load the fixture, then run each
    query of stdin's JSON list [{"name", "sql"}] read-only; print one JSON result per
    query and exit without closing chDB."""
    from sinks.clickhouse import ClickHouse
    from sinks.kpi_refresh import refresh_now
    from sinks.migrate import migrate

    queries = json.load(sys.stdin)
    ch = ClickHouse(f"chdb://{workdir}/engine", "reftrack")
    migrate(ch)
    for statement in FIXTURE_SQL.split(";"):
        if statement.strip():
            ch.command(statement)
    refresh_now(ch)
    results = []
    for query in queries:
        try:
            columns, rows = ch.query(query["sql"], read_only=True)
            results.append({**query, "columns": columns, "rows": len(rows), "error": None})
        except Exception as exc:  # report every failing query, not just the first
            results.append({**query, "columns": [], "rows": 0, "error": str(exc)[:600]})
    print(json.dumps(results), flush=True)
    os._exit(0)


def test_clickhouse_queries_run_against_the_schema(tmp_path: Path) -> None:
    jobs = []
    for name, sql, _ in clickhouse_queries():
        for orgs, interval_s in SELECTIONS:
            jobs.append(
                {
                    "name": name,
                    "selection": "All" if orgs is None else ",".join(orgs),
                    "sql": expand_clickhouse(sql, orgs, interval_s),
                }
            )
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.unit.test_grafana_dashboards import run_sql_check; "
            "run_sql_check(sys.argv[1])",
            str(tmp_path),
        ],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(results) == len(jobs)

    errors = [f"{r['name']} [{r['selection']}]: {r['error']}" for r in results if r["error"]]
    assert not errors, "\n".join(errors)
    empty = [f"{r['name']} [{r['selection']}]" for r in results if r["rows"] == 0]
    assert not empty, f"no rows for the fixture (wrong filter or join?): {empty}"
    panel_of = {name: panel for name, _, panel in clickhouse_queries()}
    for result in results:
        columns = result["columns"]
        assert not any("patient" in c.lower() for c in columns), (result["name"], columns)
        panel = panel_of[result["name"]]
        if panel is None:
            continue
        for target in panel["targets"]:
            if target["format"] == 0:  # time series: the plugin wants `time` first
                assert target["queryType"] == "timeSeries" and columns[0] == "time", result
            else:
                assert target["format"] == 1 and target["queryType"] == "table", result
        check_fields_exist(panel, columns, result["name"])


def check_fields_exist(panel: dict[str, Any], columns: list[str], name: str) -> None:
    """Fields the panel's options name are columns its query returns."""
    fields = panel["options"].get("reduceOptions", {}).get("fields", "")
    if fields:
        pattern = re.fullmatch(r"/(.*)/", fields)
        assert pattern and any(re.search(pattern[1], c) for c in columns), (name, fields, columns)
    x_field = panel["options"].get("xField")
    if x_field:
        assert x_field in columns, (name, x_field, columns)
    display = panel["fieldConfig"]["defaults"].get("displayName", "")
    for field in re.findall(r"\$\{__data\.fields\.(\w+)\}", display):
        assert field in columns, (name, display, columns)


# -- Prometheus ------------------------------------------------------------------------


@cache
def known_series() -> dict[str, set[str] | None]:
    """Series name -> its labels (None: any), for what the dashboards may select: the
    samples streams/metrics.py exposes, the recording rules, `up` and `ALERTS`."""
    from prometheus_client.metrics import MetricWrapperBase

    from streams.metrics import Metrics

    metrics = Metrics()
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    labels_of = {
        m._name: set(m._labelnames)  # private: prometheus_client has no public accessor
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    known: dict[str, set[str] | None] = {}
    for family in metrics.registry.collect():
        for suffix in suffixes[family.type]:
            labels = labels_of[family.name] | TARGET_LABELS
            known[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    assert "reftrack_messages_in_total" in known and "reftrack_sink_flush_seconds_bucket" in known

    rules = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                by = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
                assert by, f"{rule['record']}: no `by (...)`, labels unknown"
                known[rule["record"]] = {label.strip() for label in by[1].split(",")}
    known["up"] = set(TARGET_LABELS)
    known["ALERTS"] = None
    return known


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, keywords, label names, label
    values and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        if match[1].lower() not in PROMQL_KEYWORDS:
            names.add(match[1])
    return names


def label_problems(expr: str) -> list[str]:
    known = known_series()
    problems = []
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used = metric_names(expr)
    for name in sorted(used - set(known)):
        problems.append(f"unknown metric {name}")
    for name, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", text):
        labels = known.get(name)
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if labels is not None and label not in labels:
                problems.append(f"{name} has no label {label}")
    available: set[str] = set()
    for name in used & set(known):
        available |= known[name] or set()
    open_labels = any(known.get(name) is None for name in used)
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if not open_labels and label not in available:
                problems.append(f"aggregation by {label}, which no series here carries")
    return problems


def test_prometheus_metric_names_and_labels_exist() -> None:
    exprs = prometheus_exprs()
    assert len(exprs) >= 20
    problems = []
    for name, expr in exprs:
        if not metric_names(expr):
            problems.append(f"{name}: selects no metric: {expr}")
        problems += [f"{name}: {p}: {expr}" for p in label_problems(expr)]
    assert not problems, "\n".join(problems)


def test_the_metric_check_is_not_vacuous() -> None:
    assert metric_names('sum by (le) (rate(x_bucket{job="a"}[5m])) / on (job) up') == {
        "x_bucket",
        "up",
    }
    assert label_problems('rate(reftrack_sink_flush_seconds{job="$job"}[5m])')  # no suffix
    assert label_problems('reftrack_sink_rows_total{topic="x"}')  # label of another metric
    assert label_problems('reftrack:alerts_firing:sum_by_org{job="reftrack"}')  # summed away
    assert label_problems("sum by (table) (reftrack:messages_in:rate5m)")
    assert not label_problems('sum by (table, le) (reftrack_sink_flush_seconds_bucket{job="a"})')


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (Debian) provides it"
    return found


def check_rules(exprs: list[tuple[str, str]], path: Path) -> subprocess.CompletedProcess[str]:
    rules = [
        {"record": f"grafana:query_{i}:check", "expr": expand_prometheus(expr)}
        for i, (_, expr) in enumerate(exprs)
    ]
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "grafana-dashboards", "rules": rules}]}),
        encoding="utf-8",
    )
    return subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_prometheus_exprs_are_valid_promql(tmp_path: Path) -> None:
    exprs = prometheus_exprs()
    result = check_rules(exprs, tmp_path / "dashboards.rules.yml")
    names = "\n".join(f"grafana:query_{i}:check = {name}" for i, (name, _) in enumerate(exprs))
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + names
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout

    broken = check_rules([("broken", "sum by (job (up)")], tmp_path / "broken.rules.yml")
    assert broken.returncode != 0, "promtool accepts broken PromQL: the check is vacuous"
