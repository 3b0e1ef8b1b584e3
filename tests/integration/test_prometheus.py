"""The Prometheus rules in deploy/prometheus: promtool checks and unit tests, then a real
Prometheus server that scrapes a real worker and evaluates the real rules until the
dead-letter alert fires. CI installs promtool and prometheus (Debian package
`prometheus`); without them these tests fail, they are never skipped."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.broker import free_port
from tests.integration.harness import ROOT, Deployment, Worker, produce, wait_for

pytestmark = pytest.mark.integration

PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "reftrack.rules.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))
CONFIG = PROM_DIR / "prometheus.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_PREFIX = "https://github.com/reftrack/reftrack/blob/main/docs/runbooks.md#"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not on PATH. Install the Debian package `prometheus` "
            "(apt-get install prometheus), which provides promtool and prometheus.",
            pytrace=False,
        )
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    print(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}")
    return result


def rules_file() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rules_file()["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = require("promtool")
    assert RULE_TESTS, "no *.test.yml in deploy/prometheus/tests"
    checks = [
        (promtool, "check", "rules", str(RULES)),
        (promtool, "check", "config", str(CONFIG)),
        (promtool, "test", "rules", *map(str, RULE_TESTS)),
    ]
    for cmd in checks:
        result = run(*cmd)
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}"

    # Every alert is unit-tested, has a severity we document, the three annotations, and
    # a runbook link to a section that exists.
    tested = "\n".join(path.read_text() for path in RULE_TESTS)
    headings = {
        line.lstrip("#").strip().lower().replace(" ", "-")
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert f"alertname: {name}\n" in tested, f"{name} has no promtool test"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), url
        assert url.removeprefix(RUNBOOK_PREFIX) in headings, f"no runbook section for {url}"


# --------------------------------------------------------------------- live Prometheus


class Prometheus:
    """A `prometheus` server process on 127.0.0.1 with its own storage under `base`."""

    def __init__(self, base: Path, config: dict[str, Any]) -> None:
        binary = require("prometheus")
        self.port = free_port()
        self.base = base
        config_path = base / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = base / "prometheus.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            cwd=base,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_for(ready, timeout, what="prometheus readiness")

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def fast_rules_copy(target: Path) -> Path:
    """The real rules file with every `for:` set to 0s, so that the real expressions
    become firing alerts as soon as they hold instead of minutes later. Nothing else
    (expressions, thresholds, windows, labels, annotations) is changed."""
    doc = rules_file()
    changed = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
                changed += 1
    assert changed, "expected `for:` durations to rewrite"
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


def live_config(rules: Path, web_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "reftrack",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}],
            }
        ],
    }


def active(alerts: list[dict[str, Any]], name: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts
        if a["labels"].get("alertname") == name
        and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def test_real_prometheus_fires_dead_letter_alert_from_a_real_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    require("prometheus")
    base = tmp_path / "prometheus"
    base.mkdir()
    rules = fast_rules_copy(base / "reftrack.rules.yml")

    worker = Worker(deployment)
    prometheus: Prometheus | None = None
    try:
        worker.wait_ready()
        prometheus = Prometheus(base, live_config(rules, deployment.web_port))
        prometheus.wait_ready()
        prom = prometheus
        wait_for(
            lambda: prom.value('up{job="reftrack"}') == 1,
            60,
            interval=0.5,
            what="prometheus to scrape the worker",
        )

        # rate() sees only increases between samples, and the DLQ counter series first
        # appears with the value of its first scrape. So a first batch creates the series
        # and gets scraped, and only the second batch is the increase the rule measures.
        # Both batches are invalid, so they count in reftrack_messages_in_total as well:
        # the DLQ share of input is 100 % (threshold 1 %) and 20 > 10 messages.
        produce(deployment.bootstrap, deployment.events_topic, [(None, b"not json")] * 5)
        worker.wait_accounted(5)
        wait_for(
            lambda: prom.value('sum(reftrack_dlq_messages_total{job="reftrack"})') == 5,
            60,
            interval=0.5,
            what="prometheus to scrape the first 5 dead letters",
        )
        produce(deployment.bootstrap, deployment.events_topic, [(None, b"not json")] * 20)
        counts = worker.wait_accounted(25)
        assert counts["dead_lettered"] == 25, counts

        def dlq_firing() -> list[dict[str, Any]]:
            alerts = prom.alerts()
            return [
                a
                for a in active(alerts, "ReftrackDeadLetters", severity="warning")
                if a["state"] == "firing"
            ]

        firing = wait_for(dlq_firing, 90, interval=1, what="ReftrackDeadLetters to fire")
        alert = firing[0]
        assert alert["labels"] == {
            "alertname": "ReftrackDeadLetters",
            "job": "reftrack",
            "severity": "warning",
        }
        # Every consumed message was dead-lettered. The share is a ratio of two rates whose
        # counters were scraped a moment apart, so it reads about, not exactly, 100 %.
        summary = re.fullmatch(
            r"([0-9.]+)% of reftrack input goes to the dead-letter queue",
            alert["annotations"]["summary"],
        )
        assert summary is not None and float(summary[1]) > 50, alert
        assert alert["annotations"]["runbook_url"].endswith("runbooks.md#reftrackdeadletters")

        alerts = prom.alerts()
        assert not active(alerts, "ReftrackWorkerDown"), alerts
        # 25 dead letters are under the critical alert's 100.
        assert not active(alerts, "ReftrackDeadLetters", severity="critical"), alerts
        assert prom.value('up{job="reftrack"}') == 1

        # Every rule evaluated without error against the real worker's metrics.
        groups = prom.api("rules")["groups"]
        evaluated = [r for g in groups for r in g["rules"]]
        assert len(evaluated) == sum(len(g["rules"]) for g in rules_file()["groups"])
        broken = [(r["name"], r.get("lastError")) for r in evaluated if r["health"] == "err"]
        assert not broken, broken
    finally:
        try:
            if prometheus is not None:
                code = prometheus.stop()
                assert code == 0, f"prometheus exited with {code}:\n{prometheus.logs()}"
        finally:
            assert worker.stop() == 0, worker.logs()
