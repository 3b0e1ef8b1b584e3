"""`reftrack report`: a shareable review of the referral program over a period.

The KPI tiles of the period against the previous one of the same length (the numbers of
/api/kpis), weekly trends, the stage funnel, time spent in each stage and leakage by
specialty, as one self-contained HTML file (inline CSS and SVG, no external resource),
CSV (one number a row: `section,org_id,specialty,period,metric,value`) or PDF (the HTML
printed by Debian's chromium through Playwright).

The queries are streams/dashboard_queries.py's. The embedded ClickHouse is held by a
running worker, so like `reftrack query` the report asks the worker's /api/query when
one answers (values inlined as literals escaped by clickhouse-connect) and opens
ClickHouse itself otherwise (values bound as parameters); read-only either way.
"""

from __future__ import annotations

import csv
import html
import io
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sinks.clickhouse import ClickHouseError
from streams import dashboard_queries as dq
from streams.config import Settings, is_loopback
from streams.query import QueryError, query_worker

FORMATS = ("html", "csv", "pdf")
CSV_COLUMNS = ("section", "org_id", "specialty", "period", "metric", "value")
MAX_ROWS = 100_000
NO_SPECIALTY = "(unspecified)"

TILE_LABELS = {
    "referrals": "Referrals",
    "completion_rate": "Completion rate",
    "closed_loop_rate": "Closed-loop rate",
    "leakage_rate": "Leakage rate",
    "engagement_rate": "Patient engagement rate",
    "no_show_rate": "No-show rate",
    "median_hours_to_schedule": "Median time to schedule",
    "median_hours_to_appointment": "Median time to appointment",
    "open": "Open referrals",
    "at_risk": "At-risk referrals",
    "avg_satisfaction": "Average satisfaction",
}
TILE_UNITS = dict(dq.TILES)
# Tiles where a rise is bad news (shown in the warning colour).
WORSE_WHEN_HIGHER = {
    "leakage_rate",
    "no_show_rate",
    "median_hours_to_schedule",
    "median_hours_to_appointment",
    "at_risk",
}
SECTION_TITLES = {
    "kpis": "Key indicators",
    "trends": "Weekly trends",
    "funnel": "Stage funnel",
    "stages": "Time in each stage",
    "leakage": "Leakage by specialty",
}


class ReportError(Exception):
    pass


@dataclass
class ReportData:
    period: dq.Period
    previous: dq.Period
    orgs: tuple[str, ...]  # as asked (empty: all)
    scope: str  # the org_id of combined rows: the orgs joined with "+", or "all"
    kpis: dict[str, dict[str, Any]]
    kpis_by_org: dict[str, dict[str, dict[str, Any]]]
    weeks: list[dict[str, Any]]
    funnel: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    stages_by_specialty: list[dict[str, Any]]
    leakage: list[dict[str, Any]]
    generated_at: datetime


# -- data --------------------------------------------------------------------------------------


def collect(run: dq.Runner, filters: dq.Filters, period: dq.Period) -> ReportData:
    previous = period.previous()
    by_org = run(dq.kpi_query(filters, period, previous, by_org=True))
    orgs_seen = sorted({row["org_id"] for row in by_org})
    kpis = dq.kpi_tiles(run(dq.kpi_query(filters, period, previous)))
    weeks = weekly(run(dq.weekly_trend_query(filters, period)), period)
    leakage = [
        {
            "specialty": row["specialty"],
            "referrals": int(row["referrals"]),
            "leaked": int(row["leaked"]),
            "leakage_rate": dq.number(row["leakage_rate"]),
        }
        for row in run(dq.leakage_query(filters, period))
    ]
    return ReportData(
        period=period,
        previous=previous,
        orgs=filters.orgs,
        scope="+".join(filters.orgs) if filters.orgs else "all",
        kpis=kpis,
        kpis_by_org={org: dq.kpi_tiles(by_org, org_id=org) for org in orgs_seen}
        if len(orgs_seen) > 1
        else {},
        weeks=weeks,
        funnel=dq.funnel_stages(run(dq.funnel_query(filters, period))),
        stages=dq.stage_rows(run(dq.stages_query(filters, period, by_specialty=False))),
        stages_by_specialty=dq.stage_rows(run(dq.stages_query(filters, period))),
        leakage=leakage,
        generated_at=datetime.now(UTC).replace(microsecond=0),
    )


def weekly(rows: Sequence[dq.Row], period: dq.Period) -> list[dict[str, Any]]:
    """One entry per ISO week (Monday) touching the period; weeks without referrals have
    0 referrals and no rates."""
    found = {dq.day(row["week"]): row for row in rows}
    out = []
    week = period.start - timedelta(days=period.start.weekday())
    while week <= period.end:
        row = found.get(week)
        out.append(
            {
                "week": week,
                "referrals": int(row["referrals"]) if row else 0,
                "completion_rate": dq.number(row["completion_rate"]) if row else None,
                "median_hours_to_appointment": dq.number(row["median_hours_to_appointment"])
                if row
                else None,
            }
        )
        week += timedelta(days=7)
    return out


def _rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dq.Row]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


@contextmanager
def connect(settings: Settings) -> Iterator[dq.Runner]:
    """A read-only runner: through a running worker's /api/query if one answers, else
    straight to ClickHouse (as `reftrack query` does)."""
    local = is_loopback(settings.web_bind) or settings.web_bind in ("0.0.0.0", "::")
    if local and query_worker(settings, "SELECT 1", timeout=10) is not None:

        def through_worker(query: dq.Query) -> list[dq.Row]:
            result = query_worker(settings, dq.inline(query), max_rows=MAX_ROWS)
            if result is None:
                raise QueryError("the worker stopped answering while the report ran")
            return _rows(*result)

        yield through_worker
        return
    ch = settings.clickhouse()

    def direct(query: dq.Query) -> list[dq.Row]:
        try:
            return _rows(*ch.query(query.sql, True, query.parameters))
        except ClickHouseError as exc:
            if "lock" in str(exc).lower():
                raise QueryError(
                    "the embedded ClickHouse is held by another process and no worker "
                    f"answered on port {settings.web_port}; check REFTRACK_WEB_PORT"
                ) from None
            raise QueryError(str(exc)) from None

    try:
        yield direct
    finally:
        ch.close_blocking()


# -- CSV -------------------------------------------------------------------------------------


def _csv_value(value: Any) -> str:
    value = dq.number(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_rows(data: ReportData) -> list[tuple[str, str, str, str, str, str]]:
    current, previous = data.period.label(), data.previous.label()
    out: list[tuple[str, str, str, str, str, str]] = []

    def add(section: str, org: str, specialty: str, period: str, metric: str, value: Any) -> None:
        out.append((section, org, specialty, period, metric, _csv_value(value)))

    for org, tiles in [(data.scope, data.kpis), *data.kpis_by_org.items()]:
        for name in dq.TILE_NAMES:
            add("kpi", org, "", current, name, tiles[name]["value"])
            add("kpi", org, "", previous, name, tiles[name]["previous"])
    for week in data.weeks:
        for metric in ("referrals", "completion_rate", "median_hours_to_appointment"):
            add("trend", data.scope, "", week["week"].isoformat(), metric, week[metric])
    for stage in data.funnel:
        add("funnel", data.scope, "", current, stage["stage"], stage["referrals"])
    stage_rows = [("", row) for row in data.stages]
    stage_rows += [(row["specialty"] or NO_SPECIALTY, row) for row in data.stages_by_specialty]
    for specialty, row in stage_rows:
        for metric in ("referrals", "median_hours", "p90_hours", "avg_hours"):
            add("stage", data.scope, specialty, current, f"{row['stage']}.{metric}", row[metric])
    for row in data.leakage:
        for metric in ("referrals", "leaked", "leakage_rate"):
            add(
                "leakage",
                data.scope,
                row["specialty"] or NO_SPECIALTY,
                current,
                metric,
                row[metric],
            )
    return out


def render_csv(data: ReportData) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(data))
    return buffer.getvalue()


# -- HTML --------------------------------------------------------------------------------------


def fmt(value: Any, unit: str) -> str:
    value = dq.number(value)
    if value is None:
        return "–"
    if unit == "ratio":
        return f"{value * 100:.1f}%"
    if unit == "hours":
        return f"{value / 24:.1f} d" if value >= 72 else f"{value:.1f} h"
    if unit == "score":
        return f"{value:.2f}"
    return f"{int(value):,}"


def change(tile: str, value: Any, previous: Any) -> tuple[str, str]:
    """The change from the previous period as text and a CSS class (good/bad/flat)."""
    value, previous = dq.number(value), dq.number(previous)
    unit = TILE_UNITS[tile]
    if value is None or previous is None:
        return "–", "flat"
    delta = value - previous
    if abs(delta) < 1e-12:
        return "no change", "flat"
    sign = "+" if delta > 0 else "−"
    if unit == "ratio":
        text = f"{sign}{abs(delta) * 100:.1f} pts"
    elif unit == "hours":
        text = f"{sign}{abs(delta):.1f} h"
    elif unit == "score":
        text = f"{sign}{abs(delta):.2f}"
    else:
        text = f"{sign}{abs(delta):,.0f}"
        if previous:
            text += f" ({sign}{abs(delta) / previous * 100:.0f}%)"
    worse = (delta > 0) == (tile in WORSE_WHEN_HIGHER)
    if tile in ("referrals", "open"):
        return text, "flat"
    return text, "bad" if worse else "good"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_max(value: float, unit: str = "count") -> float:
    """A round top for an axis at or above `value` (hours: whole days past 3 days)."""
    if value <= 0:
        return 1.0
    if unit == "hours" and value > 72:
        return 24 * _nice_max(value / 24)
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 4, 5, 10):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return 10 * magnitude


def _tick(value: float, unit: str, top: float) -> str:
    if unit == "ratio":
        return f"{value * 100:.0f}%" if top >= 0.04 else f"{value * 100:.1f}%"
    if unit == "hours":
        return f"{value / 24:g} d" if top > 72 else f"{value:g} h"
    return f"{value:,.4g}"


def _axis(x0: float, y0: float, width: float, height: float, top: float, unit: str) -> list[str]:
    parts = []
    for i in range(5):
        y = y0 - height * i / 4
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + width}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">')
        parts.append(f"{_e(_tick(top * i / 4, unit, top))}</text>")
    return parts


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Any], unit: str) -> str:
    """Vertical bars, one per label (an inline SVG)."""
    width, height, left, bottom = 640, 220, 56, 34
    plot_w, plot_h = width - left - 10, height - bottom - 24
    numbers = [dq.number(v) or 0 for v in values]
    top = _nice_max(max(numbers, default=0), unit)
    n = max(len(numbers), 1)
    slot = plot_w / n
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" class="title">{_e(title)}</text>',
        *_axis(left, height - bottom, plot_w, plot_h, top, unit),
    ]
    for i, (label, value) in enumerate(zip(labels, numbers, strict=True)):
        h = plot_h * value / top
        x = left + i * slot + slot * 0.15
        y = height - bottom - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'class="bar"><title>{_e(label)}: {_e(fmt(value, unit))}</title></rect>'
        )
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom + 14}" class="tick" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, labels: Sequence[str], values: Sequence[Any], unit: str) -> str:
    """A line through the values (gaps where a value is missing), an inline SVG."""
    width, height, left, bottom = 640, 220, 56, 34
    plot_w, plot_h = width - left - 10, height - bottom - 24
    numbers = [dq.number(v) for v in values]
    present = [v for v in numbers if v is not None]
    top = 1.0 if unit == "ratio" else _nice_max(max(present, default=0), unit)
    n = max(len(numbers), 1)
    slot = plot_w / n
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" class="title">{_e(title)}</text>',
        *_axis(left, height - bottom, plot_w, plot_h, top, unit),
    ]
    segment: list[str] = []
    segments: list[list[str]] = []
    for i, (label, value) in enumerate(zip(labels, numbers, strict=True)):
        x = left + i * slot + slot / 2
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" class="tick" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
        if value is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        y = height - bottom - plot_h * value / top
        segment.append(f"{x:.1f},{y:.1f}")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot">'
            f"<title>{_e(label)}: {_e(fmt(value, unit))}</title></circle>"
        )
    if segment:
        segments.append(segment)
    for points in segments:
        parts.append(f'<polyline points="{" ".join(points)}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Any]]],
    unit: str,
) -> str:
    """Horizontal bars per label, one bar per series (an inline SVG)."""
    left, right, row_h = 150, 90, 18 * len(series) + 10
    width = 640
    height = 40 + row_h * max(len(labels), 1)
    plot_w = width - left - right
    top = _nice_max(max((dq.number(v) or 0 for _, vs in series for v in vs), default=0), unit)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="14" class="title">{_e(title)}</text>',
    ]
    for k, (name, _) in enumerate(series):
        if len(series) > 1:
            parts.append(
                f'<rect x="{width - right - 150 + k * 80}" y="5" width="10" height="10" '
                f'class="bar s{k}"/><text x="{width - right - 136 + k * 80}" y="14" '
                f'class="tick">{_e(name)}</text>'
            )
    for i, label in enumerate(labels):
        y0 = 28 + i * row_h
        parts.append(
            f'<text x="{left - 8}" y="{y0 + row_h / 2 + 2:.1f}" class="tick" '
            f'text-anchor="end">{_e(label)}</text>'
        )
        for k, (name, values) in enumerate(series):
            value = dq.number(values[i]) or 0
            w = plot_w * value / top
            y = y0 + k * 18
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="14" class="bar s{k}">'
                f"<title>{_e(label)} {_e(name)}: {_e(fmt(values[i], unit))}</title></rect>"
                f'<text x="{left + w + 6:.1f}" y="{y + 11}" class="tick">'
                f"{_e(fmt(values[i], unit))}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;
margin:24px auto;max-width:900px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:2px solid
#e5e7eb;padding-bottom:4px}h3{font-size:13px;margin:16px 0 6px;color:#374151}
.meta{color:#6b7585;margin:0 0 4px}table{border-collapse:collapse;width:100%;
font-variant-numeric:tabular-nums;margin:6px 0 10px}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eef0f3}th{color:#6b7585;font-weight:500;font-size:12px}
td.num,th.num{text-align:right}.good{color:#15803d}.bad{color:#c2410c}.flat{color:#6b7585}
svg.chart{width:100%;max-width:760px;height:auto;margin:6px 0 4px;page-break-inside:avoid}
svg .title{font-size:12px;font-weight:600;fill:#374151}svg .tick{font-size:10px;fill:#6b7585}
svg .grid{stroke:#eef0f3}svg .bar{fill:#2563eb}svg .bar.s1{fill:#93c5fd}
svg .line{fill:none;stroke:#2563eb;stroke-width:2}svg .dot{fill:#2563eb}
section{page-break-inside:auto}.note{color:#6b7585;font-size:12px}
@media print{body{margin:0 auto}h2{page-break-after:avoid}}
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = "num" if i >= numeric_from else ""
            if isinstance(cell, tuple):  # (text, css class)
                cells.append(f'<td class="{css} {cell[1]}">{_e(cell[0])}</td>')
            else:
                cells.append(f'<td class="{css}">{_e(cell)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(data: ReportData) -> str:
    p, q = data.period, data.previous
    orgs = ", ".join(data.orgs) if data.orgs else "all organizations"
    kpi_rows = []
    for name in dq.TILE_NAMES:
        tile = data.kpis[name]
        text, css = change(name, tile["value"], tile["previous"])
        kpi_rows.append(
            (
                TILE_LABELS[name],
                fmt(tile["value"], tile["unit"]),
                fmt(tile["previous"], tile["unit"]),
                (text, css),
            )
        )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Referral program review {_e(p.start)} to {_e(p.end)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>Referral program review</h1>",
        f'<p class="meta">Period <b>{_e(p.start)}</b> to <b>{_e(p.end)}</b> ({p.days} days), '
        f"compared with {_e(q.start)} to {_e(q.end)}. Organizations: {_e(orgs)}.</p>",
        f'<p class="meta">Referrals are counted in the period of the day they were created '
        f"(UTC). Generated {_e(data.generated_at.isoformat().replace('+00:00', 'Z'))} by "
        "reftrack.</p></header>",
        f'<section id="kpis"><h2>{SECTION_TITLES["kpis"]}</h2>',
        _table(("Indicator", "This period", "Previous period", "Change"), kpi_rows),
    ]
    if data.kpis_by_org:
        names = list(data.kpis_by_org)
        rows = [
            (TILE_LABELS[t], *(fmt(data.kpis_by_org[o][t]["value"], u) for o in names))
            for t, u in dq.TILES
        ]
        parts += ["<h3>By organization, this period</h3>", _table(("Indicator", *names), rows)]
    parts.append("</section>")

    labels = [w["week"].strftime("%d %b") for w in data.weeks]
    parts += [
        f'<section id="trends"><h2>{SECTION_TITLES["trends"]}</h2>',
        '<p class="note">By ISO week (starting Monday) of the referral\'s creation; the first '
        "and last weeks may be partial.</p>",
        bar_chart("Referrals per week", labels, [w["referrals"] for w in data.weeks], "count"),
        line_chart("Completion rate", labels, [w["completion_rate"] for w in data.weeks], "ratio"),
        line_chart(
            "Median time to appointment",
            labels,
            [w["median_hours_to_appointment"] for w in data.weeks],
            "hours",
        ),
        _table(
            ("Week of", "Referrals", "Completion rate", "Median time to appointment"),
            [
                (
                    w["week"].isoformat(),
                    fmt(w["referrals"], "count"),
                    fmt(w["completion_rate"], "ratio"),
                    fmt(w["median_hours_to_appointment"], "hours"),
                )
                for w in data.weeks
            ],
        ),
        "</section>",
    ]

    created = data.funnel[0]["referrals"] if data.funnel else 0
    parts += [
        f'<section id="funnel"><h2>{SECTION_TITLES["funnel"]}</h2>',
        '<p class="note">Referrals of the period that reached each milestone.</p>',
        hbar_chart(
            "Referrals reaching each stage",
            [s["stage"] for s in data.funnel],
            [("referrals", [s["referrals"] for s in data.funnel])],
            "count",
        ),
        _table(
            ("Stage", "Referrals", "Share of created"),
            [
                (
                    s["stage"],
                    fmt(s["referrals"], "count"),
                    fmt(s["referrals"] / created if created else None, "ratio"),
                )
                for s in data.funnel
            ],
        ),
        "</section>",
    ]

    parts += [
        f'<section id="stages"><h2>{SECTION_TITLES["stages"]}</h2>',
        '<p class="note">Hours from entering a stage to leaving it, over the referrals of the '
        "period that finished the stage.</p>",
        hbar_chart(
            "Hours per stage",
            [s["stage"] for s in data.stages],
            [
                ("median", [s["median_hours"] for s in data.stages]),
                ("p90", [s["p90_hours"] for s in data.stages]),
            ],
            "hours",
        ),
        _table(
            ("Stage", "Referrals", "Median", "p90", "Average"),
            [
                (
                    s["stage"],
                    fmt(s["referrals"], "count"),
                    fmt(s["median_hours"], "hours"),
                    fmt(s["p90_hours"], "hours"),
                    fmt(s["avg_hours"], "hours"),
                )
                for s in data.stages
            ],
        ),
    ]
    if data.stages_by_specialty:
        by_specialty: dict[str, dict[str, dict[str, Any]]] = {}
        for s in data.stages_by_specialty:
            by_specialty.setdefault(s["specialty"] or NO_SPECIALTY, {})[s["stage"]] = s
        parts += [
            "<h3>By specialty: median / p90</h3>",
            _table(
                ("Specialty", *dq.DURATION_STAGES),
                [
                    (
                        specialty,
                        *(
                            f"{fmt(stages[st]['median_hours'], 'hours')} / "
                            f"{fmt(stages[st]['p90_hours'], 'hours')}"
                            if st in stages
                            else "–"
                            for st in dq.DURATION_STAGES
                        ),
                    )
                    for specialty, stages in by_specialty.items()
                ],
            ),
        ]
    parts.append("</section>")

    parts += [
        f'<section id="leakage"><h2>{SECTION_TITLES["leakage"]}</h2>',
        '<p class="note">Share of the period\'s referrals completed outside the network.</p>',
        hbar_chart(
            "Leakage rate",
            [row["specialty"] or NO_SPECIALTY for row in data.leakage],
            [("leakage rate", [row["leakage_rate"] for row in data.leakage])],
            "ratio",
        ),
        _table(
            ("Specialty", "Referrals", "Leaked", "Leakage rate"),
            [
                (
                    row["specialty"] or NO_SPECIALTY,
                    fmt(row["referrals"], "count"),
                    fmt(row["leaked"], "count"),
                    fmt(row["leakage_rate"], "ratio"),
                )
                for row in data.leakage
            ],
        ),
        "</section>",
        '<footer><p class="note">Definitions: completion = seen; closed loop = report '
        "received; leakage = care went out of network (an out-of-network visit or a "
        "care.out_of_network event); engagement = responded among referrals "
        "with outreach; no-show rate = no-shows / (no-shows + completed visits); times are "
        "from creation. The formulas are those of the kpi_summary view "
        "(sinks/migrations/0002_kpi_views.sql); see docs/dashboard.md.</p></footer>",
        "</body></html>",
    ]
    return "\n".join(parts)


# -- PDF -------------------------------------------------------------------------------------


def render_pdf(page_html: str, output: Path) -> None:
    """Print the HTML with Debian's chromium, driven by Playwright (no browser download)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise ReportError(
            "a PDF needs Debian's chromium: apt-get install chromium (or write --format html)"
        )
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ReportError(
            "a PDF needs the playwright package: pip install playwright (or --format html)"
        ) from None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.set_content(page_html, wait_until="load")
                page.pdf(
                    path=str(output),
                    format="A4",
                    print_background=True,
                    margin={"top": "14mm", "bottom": "14mm", "left": "12mm", "right": "12mm"},
                )
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise ReportError(f"chromium could not print the report: {exc}") from None


# -- entry point -----------------------------------------------------------------------------


def period_of(date_from: str, date_to: str) -> tuple[dq.Filters, dq.Period]:
    filters = dq.parse_filters({"from": date_from, "to": date_to})
    assert filters.date_from is not None and filters.date_to is not None
    return filters, dq.Period(filters.date_from, filters.date_to)


def write_report(
    settings: Settings,
    date_from: str,
    date_to: str,
    orgs: Sequence[str],
    fmt_name: str,
    output: Path,
) -> ReportData:
    if fmt_name not in FORMATS:
        raise ReportError(f"--format must be one of {', '.join(FORMATS)}")
    if not date_from or not date_to:
        raise ReportError("--from and --to are required (YYYY-MM-DD)")
    try:
        filters, period = period_of(date_from, date_to)
        filters = dq.Filters(
            orgs=dq.parse_list({"org": ",".join(orgs)}, "org"),
            date_from=period.start,
            date_to=period.end,
        )
    except dq.BadRequest as exc:
        raise ReportError(f"bad --from/--to/--org: {exc}") from None
    with connect(settings) as run:
        data = collect(run, filters, period)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt_name == "csv":
        output.write_text(render_csv(data), encoding="utf-8")
    elif fmt_name == "html":
        output.write_text(render_html(data), encoding="utf-8")
    else:
        render_pdf(render_html(data), output)
    return data
