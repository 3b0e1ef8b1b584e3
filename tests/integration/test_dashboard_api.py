"""The dashboard's JSON API (issue 6) on real traffic: one worker processes simulated
referrals through the embedded broker into chDB, then every endpoint is checked against
the views and direct SQL over the same tables; a second worker checks the token rule."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from streams.simulator import SimConfig, generate, write_ndjson
from streams.web import ROUTES
from tests.integration.harness import Deployment, Worker, produce, wait_for
from tests.integration.kpi_reference import Reference
from tests.integration.test_kpi import wait_until_stored

pytestmark = pytest.mark.integration

TILES = (
    "referrals",
    "completion_rate",
    "closed_loop_rate",
    "leakage_rate",
    "engagement_rate",
    "no_show_rate",
    "median_hours_to_schedule",
    "median_hours_to_appointment",
    "open",
    "at_risk",
    "avg_satisfaction",
)
OPEN = {"created", "routed", "contacted", "scheduled", "seen"}


def no_patient_ref(value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        assert "patient_ref" not in value, f"patient_ref in {where}"
        for key, item in value.items():
            no_patient_ref(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            no_patient_ref(item, where)


def api(worker: Worker, path: str, token: str | None = None, **params: Any) -> tuple[int, Any]:
    """GET an endpoint; every JSON answer is checked for patient_ref."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    request = urllib.request.Request(worker.url + path + (f"?{query}" if query else ""))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    if kind and kind.startswith("application/json"):
        body = json.loads(raw)
        no_patient_ref(body, path)
        return status, body
    return status, raw.decode(errors="replace")


def instants(stamps: Any) -> list[datetime]:
    """Timestamps as instants, to compare their order: as text, "…:50Z" sorts after
    "…:50.991057Z" (a whole second is written without a fraction)."""
    return [datetime.fromisoformat(stamp) for stamp in stamps]


def ok(worker: Worker, path: str, **params: Any) -> Any:
    status, body = api(worker, path, **params)
    assert status == 200, (path, params, body)
    return body


def close(actual: Any, expected: Any, where: str) -> None:
    if expected is None or isinstance(expected, bool | str):
        assert actual == expected, f"{where}: got {actual!r}, want {expected!r}"
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12), f"{where}: {actual!r}"
    else:
        assert actual == expected, f"{where}: got {actual!r}, want {expected!r}"


def scenario(tmp_path: Path) -> tuple[Path, list[bytes], Reference]:
    """About 900 referrals of three orgs over 60 days, every event at least 15 days old."""
    now = datetime.now(UTC)
    config = SimConfig(
        seed=11, referrals=900, start=now - timedelta(days=75), span=timedelta(days=60)
    )
    traffic = tmp_path / "traffic.ndjson"
    write_ndjson(generate(config, now=now - timedelta(days=15)), traffic)
    lines = [line for line in traffic.read_bytes().splitlines() if line.strip()]
    return traffic, lines, Reference(lines, now)


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the module, with every referral stored and the KPI views refreshed."""
    base = tmp_path_factory.mktemp("dashboard")
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=base)
    traffic, lines, reference = scenario(base)
    running = Worker(deployment)
    try:
        running.wait_ready()
        sent = deployment.cli("produce", str(traffic))
        assert sent.returncode == 0, sent.stderr
        running.wait_accounted(len(lines))
        wait_until_stored(running, reference)
        running.wait_kpi_refreshed()
        yield running
    finally:
        assert running.stop() == 0, running.logs()


def org_ranges(worker: Worker) -> dict[str, tuple[str, str]]:
    rows = worker.query(
        "SELECT org_id, toString(min(day)) AS lo, toString(max(day)) AS hi "
        "FROM referral_facts GROUP BY org_id"
    )
    return {row["org_id"]: (row["lo"], row["hi"]) for row in rows}


def test_filters_list_what_is_stored(worker: Worker) -> None:
    body = ok(worker, "/api/filters")
    ranges = org_ranges(worker)
    assert body["orgs"] == sorted(ranges) and len(ranges) == 3
    specialties = worker.query(
        "SELECT DISTINCT specialty FROM referral_facts WHERE specialty IS NOT NULL"
    )
    assert body["specialties"] == sorted(row["specialty"] for row in specialties)
    assert body["date_min"] == min(lo for lo, _ in ranges.values())
    assert body["date_max"] == max(hi for _, hi in ranges.values())
    assert body["priorities"] == ["routine", "urgent", "stat"]
    assert "routing_overdue" in body["flags"] and "closed" in body["statuses"]


def test_kpis_of_an_org_over_its_whole_range_equal_kpi_summary_live(worker: Worker) -> None:
    live = {row["org_id"]: row for row in worker.query("SELECT * FROM kpi_summary_live")}
    for org, (lo, hi) in org_ranges(worker).items():
        body = ok(worker, "/api/kpis", org=org, **{"from": lo, "to": hi})
        assert body["period"] == {"from": lo, "to": hi}
        days = (date.fromisoformat(hi) - date.fromisoformat(lo)).days + 1
        before = date.fromisoformat(lo) - timedelta(days=1)
        assert body["previous"] == {
            "from": (before - timedelta(days=days - 1)).isoformat(),
            "to": before.isoformat(),
        }
        assert set(body["tiles"]) == set(TILES)
        for tile in TILES:
            close(body["tiles"][tile]["value"], live[org][tile], f"{org} {tile}")
        # Nothing was created before the first day: the previous period is empty.
        assert body["tiles"]["referrals"]["previous"] == 0
        assert body["tiles"]["median_hours_to_appointment"]["previous"] is None
        assert body["tiles"]["completion_rate"]["unit"] == "ratio"
        assert body["tiles"]["median_hours_to_schedule"]["unit"] == "hours"
        assert body["tiles"]["avg_satisfaction"]["unit"] == "score"
        assert body["tiles"]["open"]["unit"] == "count"


DIRECT_KPIS = """
SELECT count() AS referrals,
       countIf(is_completed) / count() AS completion_rate,
       countIf(is_leaked) / count() AS leakage_rate,
       countIf(is_closed) / count() AS closed_loop_rate,
       quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment,
       avg(feedback_score) AS avg_satisfaction,
       countIf(is_open) AS open,
       countIf(is_at_risk) AS at_risk
FROM referral_facts
WHERE org_id = '{org}' AND specialty = '{specialty}' AND day BETWEEN '{lo}' AND '{hi}'
"""


def test_a_specialty_filter_equals_direct_sql(worker: Worker) -> None:
    org, (lo, hi) = sorted(org_ranges(worker).items())[0]
    top = worker.query(
        f"SELECT specialty, count() AS n FROM referral_facts WHERE org_id = '{org}' "
        "AND specialty IS NOT NULL GROUP BY specialty ORDER BY n DESC, specialty LIMIT 1"
    )[0]["specialty"]
    whole = ok(worker, "/api/kpis", org=org, **{"from": lo, "to": hi})["tiles"]
    body = ok(worker, "/api/kpis", org=org, specialty=top, **{"from": lo, "to": hi})["tiles"]
    assert body["referrals"]["value"] < whole["referrals"]["value"]
    want = worker.query(DIRECT_KPIS.format(org=org, specialty=top, lo=lo, hi=hi))[0]
    for tile, value in want.items():
        close(body[tile]["value"], value, f"{org}/{top} {tile}")

    # A later period: `previous` is the same number of days just before it.
    mid = date.fromisoformat(lo) + (date.fromisoformat(hi) - date.fromisoformat(lo)) / 2
    start, end = mid, mid + timedelta(days=9)
    prev_start, prev_end = start - timedelta(days=10), start - timedelta(days=1)
    body = ok(
        worker,
        "/api/kpis",
        org=org,
        specialty=top,
        **{"from": start.isoformat(), "to": end.isoformat()},
    )
    assert body["previous"] == {"from": prev_start.isoformat(), "to": prev_end.isoformat()}
    for period, key in (((start, end), "value"), ((prev_start, prev_end), "previous")):
        sql = DIRECT_KPIS.format(org=org, specialty=top, lo=period[0], hi=period[1])
        want = worker.query(sql)[0]
        close(body["tiles"]["referrals"][key], want["referrals"], f"{period} referrals")
        close(body["tiles"]["at_risk"][key], want["at_risk"], f"{period} at_risk")


def test_default_period_is_the_last_30_days_with_data(worker: Worker) -> None:
    hi = max(hi for _, hi in org_ranges(worker).values())
    body = ok(worker, "/api/kpis")
    lo = (date.fromisoformat(hi) - timedelta(days=29)).isoformat()
    assert body["period"] == {"from": lo, "to": hi}
    want = worker.query(f"SELECT count() AS n FROM referral_facts WHERE day >= '{lo}'")[0]["n"]
    assert body["tiles"]["referrals"]["value"] == want


def test_funnel_and_stages_equal_direct_sql(worker: Worker) -> None:
    orgs = sorted(org_ranges(worker))
    lo, hi = ok(worker, "/api/filters")["date_min"], ok(worker, "/api/filters")["date_max"]
    chosen = ",".join(orgs[:2])
    funnel = ok(worker, "/api/funnel", org=chosen, **{"from": lo, "to": hi})
    org_list = ", ".join(f"'{o}'" for o in orgs[:2])
    want = worker.query(
        "SELECT countIf(created_at IS NOT NULL) AS created, countIf(routed_at IS NOT NULL) "
        "AS routed, countIf(contacted_at IS NOT NULL) AS contacted, countIf(scheduled_at IS "
        "NOT NULL) AS scheduled, countIf(seen_at IS NOT NULL) AS seen, countIf(closed_at IS "
        f"NOT NULL) AS closed FROM referral_status WHERE org_id IN ({org_list}) "
        f"AND created_at IS NOT NULL AND toDate(created_at) BETWEEN '{lo}' AND '{hi}'"
    )[0]
    assert funnel["stages"] == [{"stage": s, "referrals": n} for s, n in want.items()]
    assert funnel["stages"][0]["referrals"] > funnel["stages"][-1]["referrals"]

    stages = ok(worker, "/api/stages", org=orgs[0], **{"from": lo, "to": hi})["rows"]
    want_rows = worker.query(
        "SELECT specialty, stage, count() AS referrals, "
        "quantileExact(0.5)(duration_us / 3600000000) AS median_hours, "
        "quantileExact(0.9)(duration_us / 3600000000) AS p90_hours, "
        "avg(duration_us / 3600000000) AS avg_hours FROM stage_durations FINAL "
        f"WHERE org_id = '{orgs[0]}' AND referral_id IN (SELECT referral_id FROM "
        f"referral_facts WHERE org_id = '{orgs[0]}') GROUP BY specialty, stage"
    )
    got = {(r["specialty"], r["stage"]): r for r in stages}
    assert len(got) == len(stages) == len(want_rows)
    for row in want_rows:
        for column in ("referrals", "median_hours", "p90_hours", "avg_hours"):
            close(got[(row["specialty"], row["stage"])][column], row[column], column)


def test_rates_add_up_to_the_stored_events(worker: Worker) -> None:
    span = worker.query(
        "SELECT toString(toDate(min(window_start))) AS lo, "
        "toString(toDate(max(window_start))) AS hi FROM event_rates_1m"
    )[0]
    events = worker.query("SELECT count() AS n FROM events FINAL")[0]["n"]
    for bucket in ("day", "hour", "minute"):
        body = ok(worker, "/api/rates", bucket=bucket, **{"from": span["lo"], "to": span["hi"]})
        assert body["bucket"] == bucket and not body["truncated"]
        assert sum(row["events"] for row in body["rows"]) == events, bucket
        times = [row["t"] for row in body["rows"]]
        assert all(t.endswith("Z") for t in times)
        assert instants(times) == sorted(instants(times))
    one = sorted(org_ranges(worker))[0]
    body = ok(worker, "/api/rates", org=one, bucket="day", **{"from": span["lo"], "to": span["hi"]})
    want = worker.query(f"SELECT count() AS n FROM events FINAL WHERE org_id = '{one}'")[0]["n"]
    assert sum(row["events"] for row in body["rows"]) == want


def test_worklist_is_open_flagged_sorted_and_filtered(worker: Worker) -> None:
    everything = worker.query(
        "SELECT count() AS n FROM referral_status WHERE status IN "
        "('created', 'routed', 'contacted', 'scheduled', 'seen') AND length(flags) > 0"
    )[0]["n"]
    body = ok(worker, "/api/worklist", limit=2000)
    assert body["total"] == everything == len(body["rows"]) > 10
    for row in body["rows"]:
        assert row["status"] in OPEN and row["flags"], row
    ages = [row["age_hours"] for row in body["rows"]]
    assert ages == sorted(ages, reverse=True)  # default: oldest first

    created = ok(worker, "/api/worklist", sort="created_at", order="asc", limit=2000)["rows"]
    assert instants(r["created_at"] for r in created) == sorted(
        instants(r["created_at"] for r in created)
    )
    ranked = ok(worker, "/api/worklist", sort="priority", order="desc", limit=2000)["rows"]
    rank = {"stat": 3, "urgent": 2, "routine": 1, None: 0}
    assert [rank[r["priority"]] for r in ranked] == sorted(
        (rank[r["priority"]] for r in ranked), reverse=True
    )

    flag = body["rows"][0]["flags"][0]
    flagged = ok(worker, "/api/worklist", flag=flag, limit=2000)
    assert flagged["rows"] and all(flag in r["flags"] for r in flagged["rows"])
    assert flagged["total"] == sum(flag in r["flags"] for r in body["rows"])
    priority = body["rows"][0]["priority"]
    urgent = ok(worker, "/api/worklist", priority=priority, limit=2000)
    assert urgent["total"] == sum(r["priority"] == priority for r in body["rows"])
    assert all(r["priority"] == priority for r in urgent["rows"])
    org = body["rows"][0]["org_id"]
    aged = ok(worker, "/api/worklist", org=org, min_age_hours=24 * 40, limit=2000)["rows"]
    assert aged and all(r["org_id"] == org and r["age_hours"] >= 24 * 40 for r in aged)

    limited = ok(worker, "/api/worklist", limit=5)
    assert len(limited["rows"]) == 5 and limited["total"] == everything
    ids = [(r["org_id"], r["referral_id"]) for r in limited["rows"]]
    assert ids == [(r["org_id"], r["referral_id"]) for r in body["rows"][:5]]
    assert set(limited["rows"][0]) == {
        "org_id",
        "referral_id",
        "specialty",
        "priority",
        "status",
        "flags",
        "created_at",
        "updated_at",
        "age_hours",
    }


def test_one_referral_with_its_events_in_order(worker: Worker) -> None:
    row = ok(worker, "/api/worklist", limit=1)["rows"][0]
    org, rid = row["org_id"], row["referral_id"]
    body = ok(worker, f"/api/referrals/{org}/{urllib.parse.quote(rid, safe='')}")
    assert body["referral"]["referral_id"] == rid and body["referral"]["org_id"] == org
    assert body["referral"]["flags"] == row["flags"]
    assert body["milestones"]["created"] == body["referral"]["created_at"] == row["created_at"]
    want = worker.query(
        "SELECT event_id FROM events FINAL "
        f"WHERE org_id = '{org}' AND referral_id = '{rid}' ORDER BY occurred_at, event_id"
    )
    assert [e["event_id"] for e in body["events"]] == [w["event_id"] for w in want]
    assert all(isinstance(e["data"], dict) for e in body["events"])
    times = instants(e["occurred_at"] for e in body["events"])
    assert times == sorted(times)
    stages = worker.query(
        "SELECT count() AS n FROM stage_durations FINAL "
        f"WHERE org_id = '{org}' AND referral_id = '{rid}'"
    )[0]["n"]
    assert len(body["stages"]) == stages
    alerts = worker.query(
        f"SELECT count() AS n FROM alerts FINAL WHERE org_id = '{org}' AND referral_id = '{rid}'"
    )[0]["n"]
    assert len(body["alerts"]) == alerts

    status, missing = api(worker, f"/api/referrals/{org}/no-such-referral")
    assert status == 404 and missing["error"] == "not_found"


def test_alerts_newest_first(worker: Worker) -> None:
    rows = ok(worker, "/api/alerts", limit=2000)["rows"]
    stored = worker.query("SELECT count() AS n FROM alerts FINAL")[0]["n"]
    assert len(rows) == min(stored, 2000) and rows
    raised = instants(row["raised_at"] for row in rows)
    assert raised == sorted(raised, reverse=True)
    firing = ok(worker, "/api/alerts", state="firing", limit=2000)["rows"]
    assert all(row["state"] == "firing" for row in firing)
    assert len(ok(worker, "/api/alerts", limit=3)["rows"]) == min(3, stored)


@pytest.mark.parametrize(
    ("path", "params", "mentions"),
    [
        ("/api/kpis", {"from": "2024-13-01"}, "from"),
        ("/api/kpis", {"from": "yesterday"}, "from"),
        ("/api/funnel", {"from": "2024-05-02", "to": "2024-05-01"}, "after"),
        ("/api/stages", {"to": "2024-02-30"}, "to"),
        ("/api/rates", {"bucket": "week"}, "bucket"),
        ("/api/worklist", {"limit": "99999"}, "limit"),
        ("/api/worklist", {"limit": "ten"}, "limit"),
        ("/api/worklist", {"sort": "patient_ref"}, "sort"),
        ("/api/worklist", {"order": "sideways"}, "order"),
        ("/api/worklist", {"flag": "nope"}, "flag"),
        ("/api/worklist", {"priority": "whenever"}, "priority"),
        ("/api/worklist", {"min_age_hours": "-1"}, "min_age_hours"),
        ("/api/alerts", {"state": "sleeping"}, "state"),
    ],
)
def test_bad_parameters_are_400_with_a_message(
    worker: Worker, path: str, params: dict[str, str], mentions: str
) -> None:
    status, body = api(worker, path, **params)
    assert status == 400, body
    assert body["error"] == "bad_request" and mentions in body["message"]


def test_user_values_are_data_not_sql(worker: Worker) -> None:
    sneaky = "x') OR 1=1 --"
    body = ok(worker, "/api/kpis", org=sneaky, specialty="'; DROP TABLE events; --")
    assert body["tiles"]["referrals"]["value"] == 0
    assert ok(worker, "/api/worklist", org=sneaky)["total"] == 0
    status, _ = api(worker, f"/api/referrals/{urllib.parse.quote(sneaky, safe='')}/x")
    assert status == 404
    assert worker.query("SELECT count() AS n FROM events")[0]["n"] > 0


def test_openapi_document_is_served(worker: Worker) -> None:
    document = ok(worker, "/api/openapi.json")
    assert document["openapi"].startswith("3.1")
    assert "/api/kpis" in document["paths"]


def _event(event_id: str, kind: str, at: datetime, **data: Any) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "referral_id": "R-TOKEN-1",
            "org_id": "tokencare",
            "type": kind,
            "occurred_at": at.isoformat(),
            "source": "ehr",
            "data": data,
        }
    ).encode()


def test_token_guards_every_api_endpoint_but_not_the_page(deployment: Deployment) -> None:
    token = "s3cret-token"
    deployment.extra_env.update({"REFTRACK_API_TOKEN": token, "REFTRACK_WEB_BIND": "0.0.0.0"})
    guarded = Worker(deployment)
    try:
        guarded.wait_ready()
        at = datetime.now(UTC) - timedelta(days=2)
        created = _event("t-1", "referral.created", at, priority="routine", specialty="cardiology")
        produce(deployment.bootstrap, deployment.events_topic, [(b"R-TOKEN-1", created)])

        def stored() -> bool:
            status, body = api(guarded, "/api/filters", token=token)
            return status == 200 and body["orgs"] == ["tokencare"]

        wait_for(stored, 60, what="the referral stored")
        paths = [
            path.replace("{org_id}", "tokencare").replace("{referral_id}", "R-TOKEN-1")
            for method, path, _ in ROUTES
            if method == "GET" and path.startswith("/api/")
        ]
        assert len(paths) >= 10
        for path in paths:
            status, body = api(guarded, path)
            assert status == 401 and body["error"] == "unauthorized", path
            status, body = api(guarded, path, token="wrong")
            assert status == 401, path
            status, body = api(guarded, path, token=token)
            assert status == 200, (path, body)
        status, body = api(guarded, "/api/referrals/tokencare/R-TOKEN-1", token=token)
        assert body["referral"]["specialty"] == "cardiology"
        request = urllib.request.Request(
            guarded.url + "/api/query", data=b'{"sql": "SELECT 1"}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        # The page and its assets carry no data: open, with their content types.
        for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript")):
            with urllib.request.urlopen(guarded.url + path, timeout=10) as response:
                assert response.status == 200, path
                assert response.headers["Content-Type"].startswith(kind), path
        for path in ("/static/nope.js", "/static/__init__.py", "/static/.hidden.js"):
            assert api(guarded, path)[0] == 404, path
        for path in ("/static/..%2Fweb.py", "/static/../web.py", "/static/%2e%2e/api/pipeline"):
            assert api(guarded, path)[0] in (401, 404), path
        assert api(guarded, "/healthz")[0] == 200
    finally:
        assert guarded.stop() == 0, guarded.logs()
