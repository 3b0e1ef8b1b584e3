"""The dashboard's query layer (streams/dashboard_queries.py) and its OpenAPI document:
parameter validation, the periods, SQL that carries user values only as parameters."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import date
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from clickhouse_connect.driver.binding import format_query_value
from jsonschema import Draft202012Validator
from multidict import MultiDict
from pydantic import SecretStr

from streams import dashboard_queries as dq
from streams.web import OPEN_ROUTES, ROUTES, WebService

SNEAKY = "o'rg\\\"); DROP TABLE events; --"


# -- filters and periods ---------------------------------------------------------------------


def test_filters_parse_lists_dates_and_defaults() -> None:
    f = dq.parse_filters(
        MultiDict(
            [("org", "a, b,,a"), ("org", "c"), ("specialty", "cardiology"), ("from", "2024-05-01")]
        )
    )
    assert f.orgs == ("a", "b", "c") and f.specialties == ("cardiology",)
    assert f.date_from == date(2024, 5, 1) and f.date_to is None
    assert dq.parse_filters({}) == dq.Filters()
    assert dq.parse_filters({"org": "", "to": ""}) == dq.Filters()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2024-13-01"}, "from: expected a date"),
        ({"to": "2024-02-30"}, "to: expected a date"),
        ({"from": "20240501"}, "from: expected a date"),
        ({"from": "2024-05-01T00:00:00"}, "from: expected a date"),
        ({"from": "2024-05-02", "to": "2024-05-01"}, "is after"),
        ({"from": "1990-01-01", "to": "2024-05-01"}, "longer than"),
        ({"org": "x" * 201}, "longer than 200"),
        ({"org": ",".join(str(i) for i in range(201))}, "more than 200"),
    ],
)
def test_bad_filters_are_rejected_with_a_message(params: dict[str, str], message: str) -> None:
    with pytest.raises(dq.BadRequest, match=message):
        dq.parse_filters(params)


def test_default_period_and_previous_period() -> None:
    today = date(2024, 7, 15)
    assert dq.resolve_period(dq.Filters(), date(2024, 6, 30), today) == dq.Period(
        date(2024, 6, 1), date(2024, 6, 30)
    )
    assert dq.resolve_period(dq.Filters(), None, today) == dq.Period(
        date(2024, 6, 16), date(2024, 7, 15)
    )
    only_to = dq.Filters(date_to=date(2024, 3, 10))
    assert dq.resolve_period(only_to, date(2024, 6, 30), today).start == date(2024, 2, 10)
    only_from = dq.Filters(date_from=date(2024, 3, 1))
    assert dq.resolve_period(only_from, None, today).end == date(2024, 3, 30)

    month = dq.Period(date(2024, 3, 1), date(2024, 3, 31))
    assert month.days == 31
    assert month.previous() == dq.Period(date(2024, 1, 30), date(2024, 2, 29))
    assert dq.Period(date(2024, 1, 1), date(2024, 1, 1)).previous() == dq.Period(
        date(2023, 12, 31), date(2023, 12, 31)
    )
    assert month.as_json() == {"from": "2024-03-01", "to": "2024-03-31"}


def test_worklist_parameters() -> None:
    p = dq.parse_worklist(
        {
            "priority": "stat,urgent",
            "flag": "routing_overdue",
            "min_age_hours": "12.5",
            "sort": "priority",
            "order": "asc",
            "limit": "2000",
        }
    )
    assert p.priorities == ("stat", "urgent") and p.flags == ("routing_overdue",)
    assert (p.min_age_hours, p.sort, p.order, p.limit) == (12.5, "priority", "asc", 2000)
    default = dq.parse_worklist({})
    assert (default.sort, default.order, default.limit) == ("age_hours", "desc", 200)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "2001"}, "limit: must be between 1 and 2000"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1e9"}, "limit: expected an integer"),
        ({"sort": "patient_ref"}, "sort: expected one of"),
        ({"sort": "age_hours; DROP"}, "sort"),
        ({"order": "up"}, "order"),
        ({"flag": "made_up"}, "flag: unknown"),
        ({"priority": "whenever"}, "priority: unknown"),
        ({"min_age_hours": "nan"}, "min_age_hours"),
        ({"min_age_hours": "-3"}, "min_age_hours"),
        ({"min_age_hours": "old"}, "min_age_hours"),
    ],
)
def test_bad_worklist_parameters(params: dict[str, str], message: str) -> None:
    with pytest.raises(dq.BadRequest, match=message):
        dq.parse_worklist(params)


def test_other_parameters() -> None:
    assert dq.parse_bucket({}) == "hour" and dq.parse_bucket({"bucket": "minute"}) == "minute"
    with pytest.raises(dq.BadRequest, match="bucket"):
        dq.parse_bucket({"bucket": "week"})
    assert dq.parse_alerts({}) == dq.AlertParams(state="all", limit=100)
    with pytest.raises(dq.BadRequest, match="state"):
        dq.parse_alerts({"state": "sleeping"})
    with pytest.raises(dq.BadRequest, match="limit"):
        dq.parse_alerts({"limit": "5000"})


# -- SQL: user values only ever travel as parameters -----------------------------------------


def all_queries() -> list[dq.Query]:
    filters = dq.Filters(orgs=(SNEAKY, "b"), specialties=(SNEAKY,))
    period = dq.Period(date(2024, 3, 1), date(2024, 3, 31))
    worklist = dq.WorklistParams(
        orgs=(SNEAKY,),
        specialties=(SNEAKY,),
        priorities=("PRIORITY-SENTINEL",),
        flags=("FLAG-SENTINEL",),
        min_age_hours=7.25,
        sort="priority",
        order="asc",
        limit=17,
    )
    return [
        dq.filters_query(),
        dq.max_day_query(filters),
        dq.rates_max_day_query(filters.orgs),
        dq.kpi_query(filters, period, period.previous()),
        dq.kpi_query(filters, period, period.previous(), by_org=True),
        dq.funnel_query(filters, period),
        dq.stages_query(filters, period),
        dq.stages_query(filters, period, by_specialty=False),
        dq.rates_query(filters.orgs, period, "minute"),
        dq.worklist_query(worklist),
        *dq.referral_queries(SNEAKY, SNEAKY + "-id").values(),
        dq.alerts_query(dq.AlertParams(orgs=(SNEAKY,), state="firing", limit=9)),
        dq.weekly_trend_query(filters, period),
        dq.leakage_query(filters, period),
    ]


def test_user_values_never_appear_in_the_sql_text() -> None:
    for query in all_queries():
        for fragment in ("o'rg", "DROP", "2024-03", "7.25", "17", "SENTINEL", "state = 'firing"):
            assert fragment not in query.sql, (fragment, query.sql)
        placeholders = set(re.findall(r"\{(\w+):[^{}]+\}", query.sql))
        assert placeholders == set(query.parameters), query.sql


def test_parameters_carry_the_values() -> None:
    filters = dq.Filters(orgs=(SNEAKY,), specialties=("cardiology",))
    period = dq.Period(date(2024, 3, 1), date(2024, 3, 31))
    q = dq.kpi_query(filters, period, period.previous())
    assert q.parameters == {
        "orgs": [SNEAKY],
        "specialties": ["cardiology"],
        "date_from": date(2024, 1, 30),
        "date_to": date(2024, 3, 31),
        "current_from": date(2024, 3, 1),
    }
    assert "org_id IN {orgs:Array(String)}" in q.sql
    assert "day BETWEEN {date_from:Date} AND {date_to:Date}" in q.sql
    # No filter, no condition: nothing is bound that the SQL does not use.
    assert "WHERE" not in dq.max_day_query(dq.Filters()).sql


def test_inline_escapes_every_value_with_clickhouse_connect() -> None:
    q = dq.Query(
        "SELECT 1 WHERE org_id IN {orgs:Array(String)} AND d = {d:Date} AND x = {x:Float64}",
        {"orgs": [SNEAKY], "d": date(2024, 3, 1), "x": 1.5},
    )
    sql = dq.inline(q)
    literal = format_query_value([SNEAKY])
    assert literal.startswith("['o\\'rg\\\\") and "o'rg" not in sql  # quote, backslash escaped
    assert f"IN CAST({literal} AS Array(String))" in sql
    assert "CAST('2024-03-01' AS Date)" in sql and "CAST(1.5 AS Float64)" in sql
    with pytest.raises(KeyError):
        dq.inline(dq.Query("SELECT {missing:String}"))


def test_sort_columns_come_from_a_fixed_table() -> None:
    for sort in dq.WORKLIST_SORTS:
        for order in ("asc", "desc"):
            q = dq.worklist_query(dq.WorklistParams(sort=sort, order=order))
            assert f"ORDER BY {dq.WORKLIST_SORTS[sort]} {order.upper()} NULLS LAST" in q.sql
    with pytest.raises(dq.BadRequest):
        dq.worklist_query(dq.WorklistParams(sort="1; DROP TABLE x"))


# -- shapes ---------------------------------------------------------------------------------


def test_tiles_of_an_empty_period_are_what_kpi_summary_says_of_nothing() -> None:
    rows: list[dict[str, Any]] = [
        {**dq.EMPTY_KPIS, "period": "current", "referrals": 4, "completion_rate": 0.5}
    ]
    tiles = dq.kpi_tiles(rows)
    assert list(tiles) == list(dq.TILE_NAMES)
    assert tiles["referrals"] == {"value": 4, "previous": 0, "unit": "count"}
    assert tiles["completion_rate"] == {"value": 0.5, "previous": 0.0, "unit": "ratio"}
    assert tiles["median_hours_to_appointment"]["previous"] is None
    assert tiles["avg_satisfaction"]["unit"] == "score"


def test_values_are_json_safe() -> None:
    assert dq.number(float("nan")) is None and dq.number(float("inf")) is None
    assert dq.number(3) == 3 and dq.number(None) is None
    assert dq.iso("2024-03-01 10:00:00.250000+00:00") == "2024-03-01T10:00:00.250000Z"
    assert dq.iso("2024-03-01 10:00:00") == "2024-03-01T10:00:00Z"
    assert dq.day("2024-03-01") == date(2024, 3, 1) and dq.day("1970-01-01") is None


def test_referral_document_drops_patient_ref_everywhere() -> None:
    doc = dq.referral_document(
        {
            "referral": [
                {
                    "org_id": "a",
                    "referral_id": "r",
                    "patient_ref": "p",
                    "created_at": "2024-03-01 10:00:00",
                    "flags": ["routing_overdue"],
                }
            ],
            "events": [
                {
                    "event_id": "e",
                    "type": "referral.created",
                    "source": "ehr",
                    "occurred_at": "2024-03-01 10:00:00",
                    "data": json.dumps({"patient_ref": "p", "nested": [{"patient_ref": "q"}]}),
                }
            ],
            "stages": [],
            "alerts": [],
        }
    )
    assert doc is not None
    assert "patient_ref" not in json.dumps(doc)
    assert doc["milestones"]["created"] == "2024-03-01T10:00:00Z"
    assert dq.referral_document({"referral": []}) is None


# -- the OpenAPI document -------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    text = resources.files("streams.static").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [r for item in value.values() for r in _refs(item)]
    if isinstance(value, list):
        return [r for item in value for r in _refs(item)]
    return []


def test_openapi_documents_exactly_the_routes_the_app_serves() -> None:
    document = openapi()
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"] and document["info"]["version"]
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    routed = {(method, path) for method, path, _ in ROUTES}
    assert documented == routed
    for method, path, _ in ROUTES:
        operation = document["paths"][path][method.lower()]
        assert operation["responses"]["200"], path
        assert operation.get("operationId"), path
        templated = set(re.findall(r"\{(\w+)\}", path))
        in_path = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"}
        assert templated == in_path, path
        if path not in OPEN_ROUTES:
            assert {"bearer": []} in operation["security"], path
            assert "401" in operation["responses"], path


def test_openapi_schemas_are_valid_and_every_ref_resolves() -> None:
    document = openapi()
    components = document["components"]
    for name, schema in components["schemas"].items():
        Draft202012Validator.check_schema(schema)  # OpenAPI 3.1 schemas are JSON Schema
        assert isinstance(name, str)
    for ref in _refs(document):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert part in node, ref
            node = node[part]
    kpis = components["schemas"]["Kpis"]["properties"]["tiles"]
    assert set(kpis["required"]) == set(dq.TILE_NAMES)
    worklist = components["schemas"]["WorklistRow"]
    assert "patient_ref" not in worklist["properties"]
    assert "patient_ref" not in components["schemas"]["Referral"]["properties"]


def test_a_response_shape_validates_against_its_schema() -> None:
    document = openapi()
    schema = {"$ref": "#/components/schemas/Kpis", "components": document["components"]}
    validator = Draft202012Validator(schema)
    tiles = dq.kpi_tiles([{**dq.EMPTY_KPIS, "period": "current"}])
    body = {"period": {"from": "2024-03-01", "to": "2024-03-31"}, "previous": {}, "tiles": tiles}
    errors = list(validator.iter_errors(body))
    assert errors and all("required" in e.message for e in errors)  # `previous` is empty
    body["previous"] = {"from": "2024-01-30", "to": "2024-02-29"}
    validator.validate(body)


# -- the token rule and static files, through the real route table ---------------------------


def _statuses(paths: list[str], token: str | None) -> dict[str, tuple[int, str]]:
    settings = SimpleNamespace(api_token=SecretStr("unit-token"))
    service = WebService(SimpleNamespace(settings=settings))  # type: ignore[arg-type]

    async def fetch() -> dict[str, tuple[int, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        out = {}
        async with TestClient(TestServer(service.build_app())) as client:
            for path in paths:
                async with client.get(path, headers=headers) as response:
                    out[path] = (response.status, response.headers.get("Content-Type", ""))
        return out

    return asyncio.run(fetch())


def test_page_and_assets_are_open_and_nothing_else_is() -> None:
    got = _statuses(
        [
            "/",
            "/static/app.js",
            "/static/app.css",
            "/static/openapi.json",
            "/static/__init__.py",
            "/static/missing.js",
            "/static/..%2Fweb.py",
            "/static/%2e%2e/api/openapi.json",
            "/api/openapi.json",
            "/api/nope",
            "/nope",
        ],
        None,
    )
    static = {p.name for p in resources.files("streams.static").iterdir()}
    assert got["/"] == (200, "text/html; charset=utf-8")
    if "app.js" in static:
        assert got["/static/app.js"] == (200, "text/javascript; charset=utf-8")
    if "app.css" in static:
        assert got["/static/app.css"] == (200, "text/css; charset=utf-8")
    for path in ("/static/openapi.json", "/static/__init__.py", "/static/missing.js"):
        assert got[path][0] == 404, path  # only page assets, only files that exist
    for path in ("/static/..%2Fweb.py", "/static/%2e%2e/api/openapi.json"):
        assert got[path][0] in (401, 404), path  # never the file, never the API
    for path in ("/api/openapi.json", "/api/nope", "/nope"):
        assert got[path][0] == 401, path
    with_token = _statuses(["/api/openapi.json"], "unit-token")
    assert with_token["/api/openapi.json"] == (200, "application/json; charset=utf-8")
