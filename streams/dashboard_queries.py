"""The dashboard's read model: filters, SQL and JSON shapes of the /api/* dashboard
endpoints (docs/dashboard.md) and of `reftrack report`.

Pure: nothing here does I/O itself. Parsing turns query-string values into validated
dataclasses (`BadRequest` with a message otherwise); builders return a `Query` whose SQL
text is made of constants only, with every user value in `parameters`, bound by
clickhouse-connect (`{name:Type}`: server-side on a server and in chDB); shapers turn
rows into the JSON documents. The `api_*` functions tie them together over a `Runner`
(run one query, get rows as dicts), which the web handlers and the report supply.

The KPI tiles use the formulas of the kpi_summary view (sinks/migrations/0002_kpi_views.sql)
over `referral_facts`, so for one org over its whole date range they equal that org's
`kpi_summary_live` row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.binding import format_query_value

from schemas.events import Priority
from schemas.flags import FLAG_RULES
from schemas.referral import Status

OPEN_STATUSES: tuple[str, ...] = ("created", "routed", "contacted", "scheduled", "seen")
STAGES: tuple[str, ...] = ("created", "routed", "contacted", "scheduled", "seen", "closed")
DURATION_STAGES: tuple[str, ...] = ("created", "routed", "contacted", "scheduled", "seen")
PRIORITIES: tuple[str, ...] = tuple(p.value for p in Priority)
PRIORITY_RANK: tuple[str, ...] = ("routine", "urgent", "stat")  # ascending urgency
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
FLAGS: tuple[str, ...] = FLAG_RULES
BUCKETS: dict[str, str] = {"minute": "toStartOfMinute", "hour": "toStartOfHour", "day": "toDate"}
ALERT_STATES: tuple[str, ...] = ("firing", "resolved", "all")

DEFAULT_DAYS = 30
MAX_DAYS = 3660
MAX_LIST_VALUES = 200
MAX_VALUE_LENGTH = 200
WORKLIST_DEFAULT_LIMIT = 200
WORKLIST_MAX_LIMIT = 2000
ALERTS_DEFAULT_LIMIT = 100
ALERTS_MAX_LIMIT = 2000
RATES_MAX_ROWS = 50_000

# (tile, unit) in display order: the columns of kpi_summary the dashboard shows.
TILES: tuple[tuple[str, str], ...] = (
    ("referrals", "count"),
    ("completion_rate", "ratio"),
    ("closed_loop_rate", "ratio"),
    ("leakage_rate", "ratio"),
    ("engagement_rate", "ratio"),
    ("no_show_rate", "ratio"),
    ("median_hours_to_schedule", "hours"),
    ("median_hours_to_appointment", "hours"),
    ("open", "count"),
    ("at_risk", "count"),
    ("avg_satisfaction", "score"),
)
TILE_NAMES: tuple[str, ...] = tuple(name for name, _ in TILES)

WORKLIST_SORTS: dict[str, str] = {
    "age_hours": "age_hours",
    "priority": f"indexOf({list(PRIORITY_RANK)!r}, priority)",
    "created_at": "created_at",
    "org_id": "org_id",
    "specialty": "specialty",
    "status": f"indexOf({list(OPEN_STATUSES)!r}, status)",
}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^{}]+)\}")


class BadRequest(ValueError):
    """A parameter the API cannot use; the message says which and why."""


@dataclass(frozen=True)
class Query:
    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)


Row = dict[str, Any]
Runner = Callable[[Query], list[Row]]


@dataclass(frozen=True)
class Period:
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> Period:
        """The period of the same length just before this one."""
        end = self.start - timedelta(days=1)
        return Period(end - timedelta(days=self.days - 1), end)

    def as_json(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat()}

    def label(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


@dataclass(frozen=True)
class Filters:
    """The common filters: org ids, specialties (empty: all) and the created-day range
    (None: the default, resolved against the data by `resolve_period`)."""

    orgs: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None


@dataclass(frozen=True)
class WorklistParams:
    orgs: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    min_age_hours: float | None = None
    sort: str = "age_hours"
    order: str = "desc"
    limit: int = WORKLIST_DEFAULT_LIMIT


@dataclass(frozen=True)
class AlertParams:
    orgs: tuple[str, ...] = ()
    state: str = "all"
    limit: int = ALERTS_DEFAULT_LIMIT


# -- parsing -----------------------------------------------------------------------------


def parse_list(params: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list (repeated parameters are joined); blanks dropped, order
    kept, duplicates removed."""
    getall = getattr(params, "getall", None)
    raw = getall(name, []) if getall is not None else [params.get(name) or ""]
    values: list[str] = []
    for chunk in raw:
        for value in str(chunk).split(","):
            value = value.strip()
            if not value or value in values:
                continue
            if len(value) > MAX_VALUE_LENGTH:
                raise BadRequest(f"{name}: a value is longer than {MAX_VALUE_LENGTH} characters")
            values.append(value)
    if len(values) > MAX_LIST_VALUES:
        raise BadRequest(f"{name}: more than {MAX_LIST_VALUES} values")
    return tuple(values)


def parse_date(params: Mapping[str, str], name: str) -> date | None:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        if not _DATE.match(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a date YYYY-MM-DD, got {raw[:40]!r}") from None


def parse_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = (params.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be between {low} and {high}, got {value}")
    return value


def parse_choice(params: Mapping[str, str], name: str, choices: Sequence[str], default: str) -> str:
    raw = (params.get(name) or "").strip()
    if not raw:
        return default
    if raw not in choices:
        raise BadRequest(f"{name}: expected one of {', '.join(choices)}, got {raw[:40]!r}")
    return raw


def _checked(name: str, values: tuple[str, ...], allowed: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise BadRequest(f"{name}: unknown {unknown[0][:40]!r} (one of {', '.join(allowed)})")
    return values


def parse_filters(params: Mapping[str, str]) -> Filters:
    date_from = parse_date(params, "from")
    date_to = parse_date(params, "to")
    if date_from is not None and date_to is not None:
        if date_from > date_to:
            raise BadRequest(f"from ({date_from}) is after to ({date_to})")
        if (date_to - date_from).days + 1 > MAX_DAYS:
            raise BadRequest(f"the period is longer than {MAX_DAYS} days")
    return Filters(
        orgs=parse_list(params, "org"),
        specialties=parse_list(params, "specialty"),
        date_from=date_from,
        date_to=date_to,
    )


def resolve_period(filters: Filters, max_day: date | None, today: date) -> Period:
    """The period asked for; what is missing defaults to: `to` = the last day with data
    (or today), `from` = `to` - 29 days (or `from` + 29 days for `to` when only `from`
    is given)."""
    last = timedelta(days=DEFAULT_DAYS - 1)
    if filters.date_from is not None and filters.date_to is not None:
        return Period(filters.date_from, filters.date_to)
    if filters.date_from is not None:
        return Period(filters.date_from, filters.date_from + last)
    end = filters.date_to or max_day or today
    return Period(end - last, end)


def parse_worklist(params: Mapping[str, str]) -> WorklistParams:
    raw_age = (params.get("min_age_hours") or "").strip()
    min_age: float | None = None
    if raw_age:
        try:
            min_age = float(raw_age)
        except ValueError:
            raise BadRequest(f"min_age_hours: expected a number, got {raw_age[:40]!r}") from None
        if not math.isfinite(min_age) or min_age < 0:
            raise BadRequest("min_age_hours: must be a number of hours >= 0")
    return WorklistParams(
        orgs=parse_list(params, "org"),
        specialties=parse_list(params, "specialty"),
        priorities=_checked("priority", parse_list(params, "priority"), PRIORITIES),
        flags=_checked("flag", parse_list(params, "flag"), FLAGS),
        min_age_hours=min_age,
        sort=parse_choice(params, "sort", tuple(WORKLIST_SORTS), "age_hours"),
        order=parse_choice(params, "order", ("asc", "desc"), "desc"),
        limit=parse_int(params, "limit", WORKLIST_DEFAULT_LIMIT, 1, WORKLIST_MAX_LIMIT),
    )


def parse_alerts(params: Mapping[str, str]) -> AlertParams:
    return AlertParams(
        orgs=parse_list(params, "org"),
        state=parse_choice(params, "state", ALERT_STATES, "all"),
        limit=parse_int(params, "limit", ALERTS_DEFAULT_LIMIT, 1, ALERTS_MAX_LIMIT),
    )


def parse_bucket(params: Mapping[str, str]) -> str:
    return parse_choice(params, "bucket", tuple(BUCKETS), "hour")


# -- SQL builders --------------------------------------------------------------------------


def _cohort_where(
    filters: Filters, period: Period | None, day_expr: str = "day"
) -> tuple[list[str], dict[str, Any]]:
    """Conditions on referral_facts (or any relation with org_id, specialty and the
    created day as `day_expr`)."""
    where: list[str] = []
    parameters: dict[str, Any] = {}
    if filters.orgs:
        where.append("org_id IN {orgs:Array(String)}")
        parameters["orgs"] = list(filters.orgs)
    if filters.specialties:
        where.append("specialty IN {specialties:Array(String)}")
        parameters["specialties"] = list(filters.specialties)
    if period is not None:
        where.append(f"{day_expr} BETWEEN {{date_from:Date}} AND {{date_to:Date}}")
        parameters["date_from"] = period.start
        parameters["date_to"] = period.end
    return where, parameters


def _where(conditions: Sequence[str]) -> str:
    return ("WHERE " + "\n  AND ".join(conditions)) if conditions else ""


def filters_query() -> Query:
    return Query(
        "SELECT arraySort(groupUniqArray(toString(org_id))) AS orgs,\n"
        "       arraySort(groupUniqArray(toString(specialty))) AS specialties,\n"
        "       min(day) AS date_min, max(day) AS date_max\n"
        "FROM referral_facts"
    )


def max_day_query(filters: Filters) -> Query:
    where, parameters = _cohort_where(filters, None)
    return Query(f"SELECT max(day) AS max_day FROM referral_facts {_where(where)}", parameters)


def rates_max_day_query(orgs: tuple[str, ...]) -> Query:
    where, parameters = _cohort_where(Filters(orgs=orgs), None)
    return Query(
        f"SELECT maxOrNull(toDate(window_start)) AS max_day FROM event_rates {_where(where)}",
        parameters,
    )


# The kpi_summary view's aggregate columns (sinks/migrations/0002_kpi_views.sql).
KPI_COLUMNS = """
    count() AS referrals,
    countIf(is_completed) AS completed,
    if(referrals = 0, 0, completed / referrals) AS completion_rate,
    countIf(is_closed) AS closed_loop,
    if(referrals = 0, 0, closed_loop / referrals) AS closed_loop_rate,
    countIf(is_leaked) AS leaked,
    if(referrals = 0, 0, leaked / referrals) AS leakage_rate,
    countIf(is_outreached) AS outreached,
    countIf(is_responded) AS responded,
    if(outreached = 0, 0, responded / outreached) AS engagement_rate,
    sum(no_show_events) AS no_shows,
    if(no_shows + sum(completion_events) = 0, 0,
       no_shows / (no_shows + sum(completion_events))) AS no_show_rate,
    quantileExact(0.5)(hours_to_schedule) AS median_hours_to_schedule,
    quantileExact(0.9)(hours_to_schedule) AS p90_hours_to_schedule,
    quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment,
    quantileExact(0.9)(hours_to_appointment) AS p90_hours_to_appointment,
    avg(feedback_score) AS avg_satisfaction,
    countIf(is_open) AS open,
    countIf(is_at_risk) AS at_risk"""

# What kpi_summary says about no referrals at all (ClickHouse's aggregates of an empty set).
EMPTY_KPIS: dict[str, Any] = {
    "referrals": 0,
    "completed": 0,
    "completion_rate": 0.0,
    "closed_loop": 0,
    "closed_loop_rate": 0.0,
    "leaked": 0,
    "leakage_rate": 0.0,
    "outreached": 0,
    "responded": 0,
    "engagement_rate": 0.0,
    "no_shows": 0,
    "no_show_rate": 0.0,
    "median_hours_to_schedule": None,
    "p90_hours_to_schedule": None,
    "median_hours_to_appointment": None,
    "p90_hours_to_appointment": None,
    "avg_satisfaction": None,
    "open": 0,
    "at_risk": 0,
}


def kpi_query(filters: Filters, period: Period, previous: Period, by_org: bool = False) -> Query:
    """kpi_summary's columns for the period and the previous one (`period` =
    'current'|'previous'), optionally per org."""
    where, parameters = _cohort_where(filters, Period(previous.start, period.end))
    parameters["current_from"] = period.start
    keys = "org_id, period" if by_org else "period"
    select = "toString(org_id) AS org_id, " if by_org else ""
    sql = (
        f"SELECT {select}if(day >= {{current_from:Date}}, 'current', 'previous') AS period,"
        f"{KPI_COLUMNS}\nFROM referral_facts\n{_where(where)}\nGROUP BY {keys}\nORDER BY {keys}"
    )
    return Query(sql, parameters)


def funnel_query(filters: Filters, period: Period) -> Query:
    where, parameters = _cohort_where(filters, period, "toDate(created_at)")
    counts = ",\n       ".join(f"countIf({stage}_at IS NOT NULL) AS {stage}" for stage in STAGES)
    sql = f"SELECT {counts}\nFROM referral_status\n{_where(['created_at IS NOT NULL', *where])}"
    return Query(sql, parameters)


def stages_query(filters: Filters, period: Period, by_specialty: bool = True) -> Query:
    """Time spent per stage (stage_stats' columns) of the cohort's referrals."""
    where, parameters = _cohort_where(filters, period)
    specialty = "specialty" if by_specialty else "CAST(NULL AS Nullable(String))"
    group = "specialty, stage" if by_specialty else "stage"
    order = f"indexOf({list(DURATION_STAGES)!r}, stage)"
    sql = (
        f"SELECT {specialty} AS specialty, toString(stage) AS stage, count() AS referrals,\n"
        "       quantileExact(0.5)(hours) AS median_hours,\n"
        "       quantileExact(0.9)(hours) AS p90_hours,\n"
        "       avg(hours) AS avg_hours\n"
        "FROM (\n"
        "    SELECT specialty, stage, duration_us / 3600000000 AS hours\n"
        "    FROM stage_durations FINAL\n"
        "    WHERE (org_id, referral_id) IN (\n"
        f"        SELECT org_id, referral_id FROM referral_facts {_where(where)})\n"
        ")\n"
        f"GROUP BY {group}\n"
        f"ORDER BY {'specialty, ' if by_specialty else ''}{order}, stage"
    )
    return Query(sql, parameters)


def rates_query(orgs: tuple[str, ...], period: Period, bucket: str) -> Query:
    if bucket not in BUCKETS:
        raise BadRequest(f"bucket: expected one of {', '.join(BUCKETS)}")
    where, parameters = _cohort_where(Filters(orgs=orgs), None)
    where.append("toDate(window_start) BETWEEN {date_from:Date} AND {date_to:Date}")
    parameters.update(date_from=period.start, date_to=period.end, max_rows=RATES_MAX_ROWS + 1)
    sql = (
        f"SELECT toDateTime({BUCKETS[bucket]}(window_start), 'UTC') AS t,"
        " toString(type) AS type, sum(events) AS events\n"
        f"FROM event_rates_1m\n{_where(where)}\n"
        "GROUP BY t, type\nORDER BY t, type\nLIMIT {max_rows:UInt32}"
    )
    return Query(sql, parameters)


def worklist_query(params: WorklistParams) -> Query:
    if params.sort not in WORKLIST_SORTS or params.order not in ("asc", "desc"):
        raise BadRequest("sort/order: unknown")
    statuses = ", ".join(f"'{s}'" for s in OPEN_STATUSES)
    where = [f"status IN ({statuses})", "length(flags) > 0"]
    parameters: dict[str, Any] = {"limit": params.limit}
    if params.orgs:
        where.append("org_id IN {orgs:Array(String)}")
        parameters["orgs"] = list(params.orgs)
    if params.specialties:
        where.append("specialty IN {specialties:Array(String)}")
        parameters["specialties"] = list(params.specialties)
    if params.priorities:
        where.append("priority IN {priorities:Array(String)}")
        parameters["priorities"] = list(params.priorities)
    if params.flags:
        where.append("hasAny(flags, {flags:Array(String)})")
        parameters["flags"] = list(params.flags)
    if params.min_age_hours is not None:
        where.append("age_hours >= {min_age_hours:Float64}")
        parameters["min_age_hours"] = params.min_age_hours
    direction = "ASC" if params.order == "asc" else "DESC"
    sql = (
        "SELECT toString(org_id) AS org_id, referral_id, specialty, priority,"
        " toString(status) AS status,\n"
        "       arrayMap(f -> toString(f), flags) AS flags, created_at, updated_at,\n"
        "       (toUnixTimestamp64Micro(now64(6)) - toUnixTimestamp64Micro(created_at))"
        " / 3600000000 AS age_hours,\n"
        "       count() OVER () AS total\n"
        f"FROM referral_status\n{_where(where)}\n"
        f"ORDER BY {WORKLIST_SORTS[params.sort]} {direction} NULLS LAST, org_id, referral_id\n"
        "LIMIT {limit:UInt32}"
    )
    return Query(sql, parameters)


REFERRAL_COLUMNS: tuple[str, ...] = (
    "org_id",
    "referral_id",
    "status",
    "priority",
    "specialty",
    "created_at",
    "routed_at",
    "contacted_at",
    "scheduled_at",
    "seen_at",
    "closed_at",
    "first_outreach_at",
    "appointment_at",
    "outreach_attempts",
    "no_shows",
    "completions",
    "leaked",
    "in_network",
    "feedback_score",
    "flags",
    "updated_at",
    "evaluated_at",
    "version",
)
_ONE_REFERRAL = "WHERE org_id = {org_id:String} AND referral_id = {referral_id:String}"


def referral_queries(org_id: str, referral_id: str) -> dict[str, Query]:
    if not org_id or not referral_id:
        raise BadRequest("org_id and referral_id are required")
    if len(org_id) > MAX_VALUE_LENGTH or len(referral_id) > MAX_VALUE_LENGTH:
        raise BadRequest(f"org_id and referral_id are at most {MAX_VALUE_LENGTH} characters")
    parameters = {"org_id": org_id, "referral_id": referral_id}
    return {
        "referral": Query(
            f"SELECT {', '.join(REFERRAL_COLUMNS)} FROM referral_status {_ONE_REFERRAL}",
            parameters,
        ),
        "events": Query(
            "SELECT event_id, toString(type) AS type, toString(source) AS source,"
            f" occurred_at, data\nFROM events FINAL {_ONE_REFERRAL}\n"
            "ORDER BY occurred_at, event_id",
            parameters,
        ),
        "stages": Query(
            "SELECT toString(stage) AS stage, entered_at, left_at,"
            f" duration_us / 3600000000 AS hours\nFROM stage_durations FINAL {_ONE_REFERRAL}\n"
            "ORDER BY entered_at, stage",
            parameters,
        ),
        "alerts": Query(
            "SELECT alert_id, toString(rule) AS rule, toString(severity) AS severity,"
            " toString(state) AS state, raised_at, resolved_at\n"
            f"FROM alerts FINAL {_ONE_REFERRAL}\nORDER BY raised_at, alert_id",
            parameters,
        ),
    }


def alerts_query(params: AlertParams) -> Query:
    where: list[str] = []
    parameters: dict[str, Any] = {"limit": params.limit}
    if params.orgs:
        where.append("org_id IN {orgs:Array(String)}")
        parameters["orgs"] = list(params.orgs)
    if params.state != "all":
        where.append("state = {state:String}")
        parameters["state"] = params.state
    sql = (
        "SELECT alert_id, toString(org_id) AS org_id, referral_id, toString(rule) AS rule,"
        " toString(severity) AS severity, toString(state) AS state, raised_at, resolved_at\n"
        f"FROM alerts FINAL\n{_where(where)}\n"
        "ORDER BY raised_at DESC, alert_id DESC\nLIMIT {limit:UInt32}"
    )
    return Query(sql, parameters)


def weekly_trend_query(filters: Filters, period: Period) -> Query:
    """Per ISO week (Monday) of the created day: referrals, completion rate and time to
    appointment, with kpi_summary's formulas."""
    where, parameters = _cohort_where(filters, period)
    sql = (
        "SELECT toMonday(day) AS week, count() AS referrals,\n"
        "       if(referrals = 0, 0, countIf(is_completed) / referrals) AS completion_rate,\n"
        "       quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment\n"
        f"FROM referral_facts\n{_where(where)}\nGROUP BY week\nORDER BY week"
    )
    return Query(sql, parameters)


def leakage_query(filters: Filters, period: Period) -> Query:
    """Leakage per specialty (NULL: referrals without one), kpi_summary's formula."""
    where, parameters = _cohort_where(filters, period)
    sql = (
        "SELECT specialty, count() AS referrals, countIf(is_leaked) AS leaked,\n"
        "       if(referrals = 0, 0, leaked / referrals) AS leakage_rate\n"
        f"FROM referral_facts\n{_where(where)}\n"
        "GROUP BY specialty\nORDER BY leakage_rate DESC, referrals DESC, specialty"
    )
    return Query(sql, parameters)


def inline(query: Query) -> str:
    """The query as one SQL text, each `{name:Type}` replaced by `CAST(<literal> AS Type)`
    with the literal formatted and escaped by clickhouse-connect; for channels that take
    no parameters (a worker's /api/query)."""

    def literal(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2)
        if name not in query.parameters:
            raise KeyError(f"no value for query parameter {name!r}")
        return f"CAST({format_query_value(query.parameters[name])} AS {kind})"

    return _PLACEHOLDER.sub(literal, query.sql)


# -- values and shapes ---------------------------------------------------------------------


def number(value: Any) -> Any:
    """A JSON-safe number: NaN and infinities (and NULL) become None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        return value
    try:
        converted = float(value)
    except (TypeError, ValueError):
        return None
    return converted if math.isfinite(converted) else None


def iso(value: Any) -> str | None:
    """A timestamp as ISO-8601 UTC (`...Z`), from a datetime or a ClickHouse/ISO string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def day(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value)[:10]
    if not _DATE.match(text) or text == "1970-01-01":
        return None
    return date.fromisoformat(text)


def _strip_patient_ref(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_patient_ref(v) for k, v in value.items() if k != "patient_ref"}
    if isinstance(value, list):
        return [_strip_patient_ref(v) for v in value]
    return value


def kpi_tiles(rows: Sequence[Row], org_id: str | None = None) -> dict[str, dict[str, Any]]:
    by_period = {
        row["period"]: row for row in rows if org_id is None or row.get("org_id") == org_id
    }
    current = by_period.get("current", EMPTY_KPIS)
    previous = by_period.get("previous", EMPTY_KPIS)
    return {
        name: {"value": number(current[name]), "previous": number(previous[name]), "unit": unit}
        for name, unit in TILES
    }


def funnel_stages(rows: Sequence[Row]) -> list[dict[str, Any]]:
    row = rows[0] if rows else {}
    return [{"stage": stage, "referrals": int(row.get(stage) or 0)} for stage in STAGES]


def stage_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "specialty": row["specialty"],
            "stage": row["stage"],
            "referrals": int(row["referrals"]),
            "median_hours": number(row["median_hours"]),
            "p90_hours": number(row["p90_hours"]),
            "avg_hours": number(row["avg_hours"]),
        }
        for row in rows
    ]


def worklist_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [
        {
            "org_id": row["org_id"],
            "referral_id": row["referral_id"],
            "specialty": row["specialty"],
            "priority": row["priority"],
            "status": row["status"],
            "flags": list(row["flags"]),
            "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"]),
            "age_hours": number(row["age_hours"]),
        }
        for row in rows
    ]


def alert_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    keys = ("alert_id", "org_id", "referral_id", "rule", "severity", "state")
    out = []
    for row in rows:
        item = {k: row[k] for k in keys if k in row}
        item["raised_at"] = iso(row["raised_at"])
        item["resolved_at"] = iso(row["resolved_at"])
        out.append(item)
    return out


def referral_document(results: Mapping[str, Sequence[Row]]) -> dict[str, Any] | None:
    if not results["referral"]:
        return None
    status = dict(results["referral"][0])
    status.pop("patient_ref", None)
    referral: dict[str, Any] = {}
    for key, value in status.items():
        if key.endswith("_at"):
            referral[key] = iso(value)
        elif key == "flags":
            referral[key] = list(value)
        else:
            referral[key] = number(value) if isinstance(value, float) else value
    events = []
    for row in results["events"]:
        try:
            data = json.loads(row["data"]) if row["data"] else {}
        except ValueError:
            data = {"raw": row["data"]}
        events.append(
            {
                "event_id": row["event_id"],
                "type": row["type"],
                "source": row["source"],
                "occurred_at": iso(row["occurred_at"]),
                "data": _strip_patient_ref(data),
            }
        )
    return {
        "referral": referral,
        "milestones": {stage: referral.get(f"{stage}_at") for stage in STAGES},
        "events": events,
        "stages": [
            {
                "stage": row["stage"],
                "entered_at": iso(row["entered_at"]),
                "left_at": iso(row["left_at"]),
                "hours": number(row["hours"]),
            }
            for row in results["stages"]
        ],
        "alerts": [
            {k: v for k, v in alert.items() if k not in ("org_id", "referral_id")}
            for alert in alert_rows(results["alerts"])
        ],
    }


# -- the endpoints over a runner ----------------------------------------------------------


def today_utc() -> date:
    return datetime.now(UTC).date()


def cohort_period(run: Runner, filters: Filters, today: date | None = None) -> Period:
    max_day = None
    if filters.date_from is None or filters.date_to is None:
        rows = run(max_day_query(Filters(orgs=filters.orgs, specialties=filters.specialties)))
        max_day = day(rows[0]["max_day"]) if rows else None
    return resolve_period(filters, max_day, today or today_utc())


def api_filters(run: Runner) -> dict[str, Any]:
    rows = run(filters_query())
    row = rows[0] if rows else {}
    date_min, date_max = day(row.get("date_min")), day(row.get("date_max"))
    return {
        "orgs": list(row.get("orgs") or []),
        "specialties": list(row.get("specialties") or []),
        "priorities": list(PRIORITIES),
        "flags": list(FLAGS),
        "statuses": list(STATUSES),
        "date_min": date_min.isoformat() if date_min else None,
        "date_max": date_max.isoformat() if date_max else None,
    }


def api_kpis(run: Runner, params: Mapping[str, str], today: date | None = None) -> dict[str, Any]:
    filters = parse_filters(params)
    period = cohort_period(run, filters, today)
    previous = period.previous()
    rows = run(kpi_query(filters, period, previous))
    return {
        "period": period.as_json(),
        "previous": previous.as_json(),
        "tiles": kpi_tiles(rows),
    }


def api_funnel(run: Runner, params: Mapping[str, str], today: date | None = None) -> dict[str, Any]:
    filters = parse_filters(params)
    period = cohort_period(run, filters, today)
    return {"period": period.as_json(), "stages": funnel_stages(run(funnel_query(filters, period)))}


def api_stages(run: Runner, params: Mapping[str, str], today: date | None = None) -> dict[str, Any]:
    filters = parse_filters(params)
    period = cohort_period(run, filters, today)
    return {"period": period.as_json(), "rows": stage_rows(run(stages_query(filters, period)))}


def api_rates(run: Runner, params: Mapping[str, str], today: date | None = None) -> dict[str, Any]:
    filters = parse_filters(params)
    bucket = parse_bucket(params)
    max_day = None
    if filters.date_from is None or filters.date_to is None:
        rows = run(rates_max_day_query(filters.orgs))
        max_day = day(rows[0]["max_day"]) if rows else None
    period = resolve_period(filters, max_day, today or today_utc())
    rows = run(rates_query(filters.orgs, period, bucket))
    truncated = len(rows) > RATES_MAX_ROWS
    return {
        "bucket": bucket,
        "period": period.as_json(),
        "rows": [
            {"t": iso(row["t"]), "type": row["type"], "events": int(row["events"])}
            for row in rows[:RATES_MAX_ROWS]
        ],
        "truncated": truncated,
    }


def api_worklist(run: Runner, params: Mapping[str, str]) -> dict[str, Any]:
    parsed = parse_worklist(params)
    rows = run(worklist_query(parsed))
    total = int(rows[0]["total"]) if rows else 0
    return {"total": total, "rows": worklist_rows(rows)}


def api_referral(run: Runner, org_id: str, referral_id: str) -> dict[str, Any] | None:
    queries = referral_queries(org_id, referral_id)
    results = {"referral": run(queries["referral"])}
    if not results["referral"]:
        return None
    for name in ("events", "stages", "alerts"):
        results[name] = run(queries[name])
    return referral_document(results)


def api_alerts(run: Runner, params: Mapping[str, str]) -> dict[str, Any]:
    return {"rows": alert_rows(run(alerts_query(parse_alerts(params))))}
