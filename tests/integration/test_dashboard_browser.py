"""The live dashboard (streams/static) in a real headless Chromium against a real worker.

One worker for the module processes a few hundred simulated referrals through the
embedded broker into its embedded ClickHouse; Playwright drives Debian's chromium. The
page's numbers must equal ClickHouse's (the kpi_summary view, a direct SQL over
referral_facts, the events table), it must follow new events without a reload, and it
must load with no console error and no request to another host. Screenshots of every
step go to test-artifacts/dashboard/ at the repository root.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from streams.broker import EmbeddedBroker
from streams.simulator import SimConfig, generate
from tests.integration.harness import ROOT, Deployment, Worker, produce, wait_for

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
# Tile name -> how the page shows it (the API's units).
TILES: dict[str, str] = {
    "referrals": "count",
    "completion_rate": "ratio",
    "closed_loop_rate": "ratio",
    "leakage_rate": "ratio",
    "engagement_rate": "ratio",
    "no_show_rate": "ratio",
    "median_hours_to_schedule": "hours",
    "median_hours_to_appointment": "hours",
    "open": "count",
    "at_risk": "count",
    "avg_satisfaction": "score",
}
# The kpi_summary formulas (sinks/migrations/0002_kpi_views.sql) over any referral_facts slice.
KPI_SELECT = """
SELECT
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
    quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment,
    avg(feedback_score) AS avg_satisfaction,
    countIf(is_open) AS open,
    countIf(is_at_risk) AS at_risk
FROM referral_facts
"""


def sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an asyncio-based harness helper off the thread Playwright's sync API owns."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


# -- the worker --------------------------------------------------------------------------


@dataclass
class Stack:
    deployment: Deployment
    worker: Worker
    orgs: list[str]
    produced: int

    @property
    def url(self) -> str:
        return self.worker.url

    def processed(self) -> int:
        return int(self.worker.pipeline()["counts"]["processed"])

    def wait_stored(self, timeout: float = 60) -> None:
        """Every processed event in ClickHouse: referral versions and distinct events."""

        def stored() -> bool:
            processed = self.processed()
            versions = self.worker.query("SELECT sum(version) AS v FROM referral_status")[0]["v"]
            events = self.worker.query("SELECT count() AS n FROM events FINAL")[0]["n"]
            return processed == versions == events

        wait_for(stored, timeout, interval=0.5, what="every processed event in ClickHouse")


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    now = datetime.now(UTC)
    config = SimConfig(
        seed=21, referrals=450, start=now - timedelta(days=50), span=timedelta(days=50)
    )
    messages = generate(config, now=now)
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path_factory.mktemp("dash"))
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        in_thread(
            produce,
            deployment.bootstrap,
            deployment.events_topic,
            [(m.key, m.value) for m in messages],
        )
        worker.wait_accounted(len(messages))
        stack = Stack(deployment, worker, list(config.orgs), len(messages))
        stack.wait_stored()
        worker.wait_kpi_refreshed()
        yield stack
    finally:
        assert worker.stop() == 0, worker.logs()


# -- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    # Not a skip: a machine without the browser must not pass these tests unseen.
    assert chromium, "chromium is not installed: `apt-get install chromium` (.ci/run does)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page plus everything it did: console errors, uncaught exceptions, requests."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    def open(self, **query: str) -> None:
        self.page.goto(self.base + "/" + (("?" + urlencode(query)) if query else ""))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def tiles(self) -> dict[str, str]:
        return self.page.eval_on_selector_all(
            ".tile[data-kpi]",
            "els => Object.fromEntries(els.map(e => [e.dataset.kpi, e.dataset.value]))",
        )

    def tile_text(self, name: str) -> str:
        return self.page.text_content(f'.tile[data-kpi="{name}"] .value').strip()

    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.page.url).query)

    def navigations(self) -> int:
        return self.page.evaluate("performance.getEntriesByType('navigation').length")


@pytest.fixture
def tab(browser: Any, stack: Stack) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        tab = Tab(page, stack.url)
        page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: tab.requests.append(r))
        yield tab
    finally:
        context.close()


# -- expectations -------------------------------------------------------------------------


def parse_tile(raw: str) -> float | None:
    return None if raw == "" else float(raw)


def tiles_match(shown: dict[str, str], want: dict[str, Any]) -> list[str]:
    """What differs between the tiles' raw values and ClickHouse's, by tile."""
    wrong = []
    for name in TILES:
        got, expected = parse_tile(shown.get(name, "")), want[name]
        if expected is None or got is None:
            ok = got is None and expected is None
        else:
            ok = got == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
        if not ok:
            wrong.append(f"{name}: page {got!r}, ClickHouse {expected!r}")
    return wrong


def wait_tiles(tab: Tab, want: dict[str, Any], timeout: float = 30) -> None:
    last: list[str] = []

    def same() -> bool:
        nonlocal last
        last = tiles_match(tab.tiles(), want)
        return not last

    try:
        wait_for(same, timeout, interval=0.2, what="the tiles to show ClickHouse's numbers")
    except AssertionError:
        raise AssertionError(f"tiles differ from ClickHouse: {last}") from None


def assert_display(tab: Tab, want: dict[str, Any]) -> None:
    """The shown text is the value formatted: percent and hours with 1 decimal."""
    for name, unit in TILES.items():
        text, value = tab.tile_text(name), want[name]
        if value is None:
            assert text == "–", (name, text)
            continue
        if unit == "count":
            assert text == f"{int(value):,}", (name, text)
            continue
        pattern = {
            "ratio": r"^(-?\d+\.\d)%$",
            "hours": r"^(-?\d+\.\d) h$",
            "score": r"^(-?\d+\.\d\d)$",
        }
        match = re.match(pattern[unit], text)
        assert match, (name, text)
        scaled = value * 100 if unit == "ratio" else value
        step = 0.005 if unit == "score" else 0.05
        assert abs(float(match.group(1)) - scaled) <= step + 1e-9, (name, text, value)


def kpis_over_facts(stack: Stack, org: str, start: date, end: date, specialty: str | None = None):
    where = f"WHERE org_id = {sql_str(org)} AND day BETWEEN '{start}' AND '{end}'"
    if specialty is not None:
        where += f" AND specialty = {sql_str(specialty)}"
    return stack.worker.query(KPI_SELECT + where)[0]


def org_range(stack: Stack, org: str) -> tuple[date, date]:
    row = stack.worker.query(
        "SELECT toString(min(day)) AS lo, toString(max(day)) AS hi FROM referral_facts "
        f"WHERE org_id = {sql_str(org)}"
    )[0]
    return date.fromisoformat(row["lo"]), date.fromisoformat(row["hi"])


def busiest_org(stack: Stack, column: str = "referrals") -> str:
    rows = stack.worker.query(
        f"SELECT org_id, {column} AS n FROM kpi_summary_live ORDER BY n DESC, org_id"
    )
    assert rows and rows[0]["n"] > 0, rows
    return str(rows[0]["org_id"])


def assert_clean(tab: Tab) -> None:
    assert not tab.errors, f"console errors: {tab.errors}"
    here = urlsplit(tab.base).netloc
    elsewhere = [
        r.url
        for r in tab.requests
        if not r.url.startswith("data:") and urlsplit(r.url).netloc != here
    ]
    assert not elsewhere, f"requests to other hosts: {elsewhere}"


# -- the tests ---------------------------------------------------------------------------


def test_tiles_equal_kpi_summary(stack: Stack, tab: Tab) -> None:
    org = busiest_org(stack)
    start, end = org_range(stack, org)
    stack.worker.wait_kpi_refreshed()
    summary = stack.worker.query(f"SELECT * FROM kpi_summary WHERE org_id = {sql_str(org)}")
    live = stack.worker.query(f"SELECT * FROM kpi_summary_live WHERE org_id = {sql_str(org)}")
    assert len(summary) == 1 and len(live) == 1
    as_shown = {k: "" if live[0][k] is None else repr(float(live[0][k])) for k in TILES}
    assert not tiles_match(as_shown, summary[0]), "kpi_summary is behind kpi_summary_live"

    tab.open(org=org, **{"from": start.isoformat(), "to": end.isoformat()})
    wait_tiles(tab, summary[0])
    assert_display(tab, summary[0])
    # The filters came from the URL and show in the header.
    assert tab.page.eval_on_selector("#f-org", "s => [...s.selectedOptions].map(o => o.value)") == [
        org
    ]
    assert tab.page.input_value("#f-from") == start.isoformat()
    assert tab.page.input_value("#f-to") == end.isoformat()
    tab.page.wait_for_selector("#funnel .funnel-row")
    funnel = tab.page.get_attribute('#funnel .funnel-row[data-stage="created"]', "data-value")
    assert int(funnel or -1) == summary[0]["referrals"]
    tab.shot("01-tiles-equal-kpi-summary")
    assert_clean(tab)


def test_specialty_filter_changes_tiles(stack: Stack, tab: Tab) -> None:
    org = busiest_org(stack)
    start, end = org_range(stack, org)
    everything = kpis_over_facts(stack, org, start, end)
    tab.open(org=org, **{"from": start.isoformat(), "to": end.isoformat()})
    wait_tiles(tab, everything)
    before = tab.tiles()
    tab.shot("02a-before-specialty-filter")

    specialties = stack.worker.query(
        "SELECT specialty, count() AS n FROM referral_facts "
        f"WHERE org_id = {sql_str(org)} AND specialty IS NOT NULL "
        "GROUP BY specialty ORDER BY n DESC, specialty"
    )
    specialty = str(specialties[0]["specialty"])
    assert specialties[0]["n"] < everything["referrals"], specialties
    tab.page.select_option("#f-specialty", [specialty])

    want = kpis_over_facts(stack, org, start, end, specialty)
    wait_tiles(tab, want)
    assert_display(tab, want)
    assert tab.tiles() != before
    assert tab.query()["specialty"] == [specialty]  # shareable: the filter is in the URL
    assert tab.query()["org"] == [org]
    tab.shot("02b-specialty-filter")

    # The same URL in a fresh load restores the filter.
    tab.page.reload()
    wait_tiles(tab, want)
    selected = tab.page.eval_on_selector(
        "#f-specialty", "s => [...s.selectedOptions].map(o => o.value)"
    )
    assert selected == [specialty]
    assert_clean(tab)


def test_worklist_opens_referral_timeline(stack: Stack, tab: Tab) -> None:
    org = busiest_org(stack, "at_risk")
    tab.open(org=org)
    tab.page.wait_for_selector("#worklist tbody a.referral-link")
    tab.shot("03a-worklist")

    # Server-side sort: a click on "Age (h)" flips the default (oldest first) to ascending.
    tab.page.click('#worklist th[data-sort="age_hours"] button')
    wait_for(lambda: tab.query().get("order") == ["asc"], 10, what="order=asc in the URL")

    def ages() -> list[float]:
        return tab.page.eval_on_selector_all(
            "#worklist tbody tr td.num", "tds => tds.map(td => Number(td.textContent))"
        )

    wait_for(lambda: len(ages()) > 0 and ages() == sorted(ages()), 15, what="ascending ages")
    assert tab.page.get_attribute('#worklist th[data-sort="age_hours"]', "aria-sort") == "ascending"
    tab.page.click('#worklist th[data-sort="age_hours"] button')  # back to oldest first
    wait_for(
        lambda: len(ages()) > 0 and ages() == sorted(ages(), reverse=True),
        15,
        what="descending ages",
    )

    link = tab.page.locator("#worklist tbody a.referral-link").first
    key = link.evaluate("a => a.closest('tr').dataset.key")
    row_org, referral_id = key.split("/", 1)
    assert row_org == org
    link.click()

    title = tab.page.locator(f'#referral-title[data-referral-id="{referral_id}"]')
    title.wait_for()
    assert referral_id in title.text_content()
    assert tab.page.is_hidden("#dashboard-view")
    tab.page.wait_for_selector("#timeline-events[data-count]:not([data-count=''])")
    stored = stack.worker.query(
        "SELECT count() AS n FROM events FINAL "
        f"WHERE org_id = {sql_str(org)} AND referral_id = {sql_str(referral_id)}"
    )[0]["n"]
    assert stored > 0
    assert int(tab.page.get_attribute("#timeline-events", "data-count")) == stored
    assert tab.page.locator("#timeline-events tbody tr").count() == stored
    assert tab.page.locator("#timeline svg .event-dot").count() == stored
    assert urlsplit(tab.page.url).fragment == f"referral/{org}/{referral_id}"
    tab.shot("03b-referral-timeline")

    tab.page.click("#back-link")
    tab.page.wait_for_selector("#dashboard-view:not([hidden])")
    selected = tab.page.locator("#worklist tbody tr.selected")
    selected.wait_for()
    assert selected.get_attribute("data-key") == key
    assert tab.navigations() == 1
    assert_clean(tab)


def _created(org: str, referral_id: str, at: datetime) -> bytes:
    return json.dumps(
        {
            "event_id": f"live-{referral_id}",
            "referral_id": referral_id,
            "org_id": org,
            "type": "referral.created",
            "occurred_at": at.isoformat(),
            "source": "ehr",
            "data": {"priority": "routine", "specialty": "cardiology"},
        }
    ).encode()


def test_new_events_appear_without_reload(stack: Stack, tab: Tab) -> None:
    org = busiest_org(stack)
    start, _ = org_range(stack, org)
    today = datetime.now(UTC).date() + timedelta(days=1)  # past midnight UTC too
    before = kpis_over_facts(stack, org, start, today)
    tab.open(org=org, refresh="1", **{"from": start.isoformat(), "to": today.isoformat()})
    wait_tiles(tab, before)
    tab.page.evaluate("window.__loadMarker = 'still-here'")
    url = tab.page.url
    updated = tab.page.text_content("#updated")
    tab.shot("04a-before-new-events")

    tag = f"{time.time_ns():x}"
    new = [f"R-LIVE-{tag}-{n}" for n in range(3)]
    now = datetime.now(UTC).replace(microsecond=0)
    in_thread(
        produce,
        stack.deployment.bootstrap,
        stack.deployment.events_topic,
        [(rid.encode(), _created(org, rid, now)) for rid in new],
    )

    want = int(before["referrals"]) + len(new)
    wait_for(
        lambda: tab.tiles()["referrals"] == str(want),
        45,
        interval=0.25,
        what=f"the referrals tile to reach {want}",
    )
    assert int(tab.tiles()["open"]) == int(before["open"]) + len(new)
    assert tab.page.evaluate("window.__loadMarker") == "still-here"
    assert tab.navigations() == 1
    assert tab.page.url == url
    assert tab.page.text_content("#updated") != updated
    assert re.fullmatch(r"updated \d\d:\d\d:\d\d", tab.page.text_content("#updated").strip())
    tab.shot("04b-after-new-events")
    stack.wait_stored()
    wait_tiles(tab, kpis_over_facts(stack, org, start, today))
    assert_clean(tab)


def test_page_loads_clean_and_stays_on_its_host(stack: Stack, tab: Tab) -> None:
    tab.page.goto(stack.url + "/#token=secret-123")
    # The token leaves the address bar and rides on every API call.
    wait_for(lambda: "token" not in tab.page.url, 10, what="the token out of the URL")
    assert tab.page.evaluate("sessionStorage.getItem('reftrack-token')") == "secret-123"
    page = tab.page
    page.wait_for_selector('.tile[data-kpi="referrals"]:not([data-value=""])')
    page.wait_for_selector("#funnel .funnel-row")
    page.wait_for_selector("#stages svg .stage-row")
    page.wait_for_selector("#rates svg .series")
    page.wait_for_selector("#worklist tbody a.referral-link")
    page.wait_for_selector("#alerts li")
    assert page.text_content("#updated").startswith("updated ")
    assert page.get_attribute("#updated", "aria-live") == "polite"
    # Default period: the last 30 days ending at the last day with data (from /api/filters).
    status, filters = stack.worker.get("/api/filters")
    assert status == 200
    assert page.input_value("#f-to") == filters["date_max"]
    day_max = date.fromisoformat(filters["date_max"])
    assert page.input_value("#f-from") == (day_max - timedelta(days=29)).isoformat()
    # Every labelled control has its label.
    unlabelled = page.eval_on_selector_all(
        "header select, header input, #worklist-filters select, #worklist-filters input",
        "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.id)",
    )
    assert unlabelled == []
    tab.shot("05a-full-dashboard")
    page.set_viewport_size({"width": 420, "height": 900})
    page.wait_for_timeout(400)
    tab.shot("05b-narrow-screen")

    api_calls = [r for r in tab.requests if "/api/" in r.url]
    assert api_calls
    assert all(r.headers.get("authorization") == "Bearer secret-123" for r in api_calls)
    assert_clean(tab)


def test_unauthorized_asks_for_the_token(stack: Stack, tab: Tab) -> None:
    """A worker that wants a token: the page says so and takes one (401s simulated)."""

    def deny(route: Any) -> None:
        if route.request.headers.get("authorization") == "Bearer right":
            route.continue_()
        else:
            route.fulfill(
                status=401,
                content_type="application/json",
                body='{"error": "unauthorized", "message": "send Authorization: Bearer <token>"}',
            )

    tab.page.route("**/api/**", deny)
    tab.open()
    banner = tab.page.locator("#banner")
    banner.wait_for()
    assert "API token" in banner.text_content()
    assert tab.page.is_visible("#token-form")
    tab.shot("06a-token-needed")
    tab.page.fill("#token-input", "right")
    tab.page.click("#token-form button[type=submit]")
    tab.page.wait_for_selector('.tile[data-kpi="referrals"]:not([data-value=""])')
    assert tab.page.is_hidden("#banner")
    tab.shot("06b-token-accepted")
    # Only the simulated 401 responses may have logged errors.
    tab.errors[:] = [e for e in tab.errors if "401" not in e]
    assert_clean(tab)
