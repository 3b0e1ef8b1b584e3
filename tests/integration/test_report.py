"""`reftrack report` on real traffic: one worker with simulated referrals; the report's
numbers equal the views and direct SQL, the HTML is self-contained with its charts, the
PDF is a PDF; with the worker stopped the report reads ClickHouse itself, same numbers."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from streams.simulator import SimConfig, generate, write_ndjson
from tests.integration.harness import Deployment, Worker
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
SECTIONS = (
    "Key indicators",
    "Weekly trends",
    "Stage funnel",
    "Time in each stage",
    "Leakage by specialty",
)


class Loaded:
    def __init__(self, deployment: Deployment, worker: Worker) -> None:
        self.deployment = deployment
        self.worker = worker
        self.out = deployment.data_dir / "reports"

    def report(self, fmt: str, *args: str) -> Path:
        output = self.out / f"report-{fmt}-{len(list(self.out.glob('*')))}.{fmt}"
        result = self.deployment.cli("report", "--format", fmt, "--output", str(output), *args)
        assert result.returncode == 0, result.stderr
        assert output.exists() and output.stat().st_size > 0
        return output


@pytest.fixture(scope="module")
def loaded(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    base = tmp_path_factory.mktemp("report")
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=base)
    now = datetime.now(UTC)
    config = SimConfig(
        seed=23, referrals=600, start=now - timedelta(days=75), span=timedelta(days=60)
    )
    traffic = base / "traffic.ndjson"
    write_ndjson(generate(config, now=now - timedelta(days=15)), traffic)
    lines = [line for line in traffic.read_bytes().splitlines() if line.strip()]
    reference = Reference(lines, now)
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        sent = deployment.cli("produce", str(traffic))
        assert sent.returncode == 0, sent.stderr
        worker.wait_accounted(len(lines))
        wait_until_stored(worker, reference, rates=False)
        worker.wait_kpi_refreshed()
        yield Loaded(deployment, worker)
    finally:
        assert worker.stop() == 0, worker.logs()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == ["section", "org_id", "specialty", "period", "metric", "value"]
    return rows


def value(text: str) -> Any:
    if text == "":
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def org_range(worker: Worker, org: str) -> tuple[str, str]:
    row = worker.query(
        "SELECT toString(min(day)) AS lo, toString(max(day)) AS hi FROM referral_facts "
        f"WHERE org_id = '{org}'"
    )[0]
    return row["lo"], row["hi"]


def test_csv_numbers_equal_the_views(loaded: Loaded) -> None:
    worker = loaded.worker
    live = {row["org_id"]: row for row in worker.query("SELECT * FROM kpi_summary_live")}
    org = sorted(live)[0]
    lo, hi = org_range(worker, org)
    rows = read_csv(loaded.report("csv", "--from", lo, "--to", hi, "--org", org))
    period = f"{lo}/{hi}"

    kpi_rows = [r for r in rows if r["section"] == "kpi" and r["period"] == period]
    assert {r["org_id"] for r in kpi_rows} == {org}
    kpi = {r["metric"]: value(r["value"]) for r in kpi_rows}
    assert set(kpi) == set(TILES)
    for tile in TILES:
        want = live[org][tile]
        if isinstance(want, float):
            assert kpi[tile] == pytest.approx(want, rel=1e-12), tile
        else:
            assert kpi[tile] == want, tile
    previous = [r for r in rows if r["section"] == "kpi" and r["period"] != period]
    assert {value(r["value"]) for r in previous if r["metric"] == "referrals"} == {0}

    funnel = {r["metric"]: value(r["value"]) for r in rows if r["section"] == "funnel"}
    want = worker.query(
        "SELECT countIf(created_at IS NOT NULL) AS created, countIf(routed_at IS NOT NULL) "
        "AS routed, countIf(contacted_at IS NOT NULL) AS contacted, countIf(scheduled_at IS "
        "NOT NULL) AS scheduled, countIf(seen_at IS NOT NULL) AS seen, countIf(closed_at IS "
        f"NOT NULL) AS closed FROM referral_status WHERE org_id = '{org}' AND created_at IS "
        f"NOT NULL AND toDate(created_at) BETWEEN '{lo}' AND '{hi}'"
    )[0]
    assert funnel == want

    trend = [r for r in rows if r["section"] == "trend" and r["metric"] == "referrals"]
    assert sum(value(r["value"]) for r in trend) == live[org]["referrals"]
    weeks = [r["period"] for r in trend]
    assert weeks == sorted(weeks) and all(datetime.fromisoformat(w).weekday() == 0 for w in weeks)

    stages = {
        r["metric"]: value(r["value"])
        for r in rows
        if r["section"] == "stage" and r["specialty"] == ""
    }
    want_stages = worker.query(
        "SELECT stage, count() AS n, quantileExact(0.9)(duration_us / 3600000000) AS p90 "
        f"FROM stage_durations FINAL WHERE org_id = '{org}' AND referral_id IN "
        f"(SELECT referral_id FROM referral_facts WHERE org_id = '{org}') GROUP BY stage"
    )
    assert want_stages
    for row in want_stages:
        assert stages[f"{row['stage']}.referrals"] == row["n"]
        assert stages[f"{row['stage']}.p90_hours"] == pytest.approx(row["p90"], rel=1e-12)

    leakage = [r for r in rows if r["section"] == "leakage" and r["metric"] == "leaked"]
    assert sum(value(r["value"]) for r in leakage) == live[org]["leaked"]


def test_all_orgs_adds_a_row_set_per_org(loaded: Loaded) -> None:
    worker = loaded.worker
    span = worker.query(
        "SELECT toString(min(day)) AS lo, toString(max(day)) AS hi FROM referral_facts"
    )[0]
    rows = read_csv(loaded.report("csv", "--from", span["lo"], "--to", span["hi"]))
    period = f"{span['lo']}/{span['hi']}"
    live = {row["org_id"]: row for row in worker.query("SELECT * FROM kpi_summary_live")}
    referrals = {
        r["org_id"]: value(r["value"])
        for r in rows
        if r["section"] == "kpi" and r["metric"] == "referrals" and r["period"] == period
    }
    assert referrals == {
        "all": sum(row["referrals"] for row in live.values()),
        **{org: row["referrals"] for org, row in live.items()},
    }


def test_html_is_self_contained_with_charts_and_pdf_prints(loaded: Loaded) -> None:
    worker = loaded.worker
    span = worker.query(
        "SELECT toString(max(day) - 29) AS lo, toString(max(day)) AS hi FROM referral_facts"
    )[0]
    page = loaded.report("html", "--from", span["lo"], "--to", span["hi"]).read_text()
    for title in SECTIONS:
        assert title in page, title
    assert page.count("<svg") >= 5
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!#)""", page), "external reference"
    assert "<script" not in page

    pdf = loaded.report("pdf", "--from", span["lo"], "--to", span["hi"]).read_bytes()
    assert pdf.startswith(b"%PDF")
    pages = re.findall(rb"/Type\s*/Page\b", pdf)
    assert len(pages) >= 1
    assert b"%%EOF" in pdf[-64:]


def test_bad_arguments_say_what_is_wrong(loaded: Loaded) -> None:
    output = str(loaded.out / "never.csv")
    bad = loaded.deployment.cli(
        "report", "--from", "2024-02-30", "--to", "2024-03-01", "--output", output
    )
    assert bad.returncode == 1 and "--from" in bad.stderr and "2024-02-30" in bad.stderr
    backwards = loaded.deployment.cli(
        "report", "--from", "2024-03-02", "--to", "2024-03-01", "--output", output
    )
    assert backwards.returncode == 1 and "after" in backwards.stderr
    unknown = loaded.deployment.cli(
        "report", "--from", "2024-03-01", "--to", "2024-03-02", "--output", output + ".docx"
    )
    assert unknown.returncode == 2 and "--format" in unknown.stderr
    assert not list(loaded.out.glob("never*"))


def test_pdf_without_chromium_is_a_clear_error(loaded: Loaded, tmp_path: Path) -> None:
    loaded.deployment.extra_env["PATH"] = str(tmp_path)  # no chromium on this PATH
    try:
        result = loaded.deployment.cli(
            "report", "--from", "2024-03-01", "--to", "2024-03-02", "--format", "pdf",
            "--output", str(tmp_path / "r.pdf"),
        )  # fmt: skip
    finally:
        del loaded.deployment.extra_env["PATH"]
    assert result.returncode == 1
    assert "chromium" in result.stderr and "apt-get install chromium" in result.stderr
    assert not (tmp_path / "r.pdf").exists()


def test_without_a_worker_the_report_reads_clickhouse_itself(loaded: Loaded) -> None:
    """Last: stops the module's worker."""
    worker = loaded.worker
    org = sorted(r["org_id"] for r in worker.query("SELECT DISTINCT org_id FROM referral_facts"))[0]
    lo, hi = org_range(worker, org)
    args = ("--from", lo, "--to", hi, "--org", org)
    through_worker = read_csv(loaded.report("csv", *args))
    assert worker.stop() == 0, worker.logs()
    direct = read_csv(loaded.report("csv", *args))
    assert direct == through_worker
