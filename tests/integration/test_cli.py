"""The command line's contract: clear errors, read-only queries, migrations, tokens."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from streams.broker import free_port
from tests.integration.harness import Deployment, Worker

pytestmark = pytest.mark.integration


def test_migrate_is_idempotent_and_query_reads_without_a_worker(deployment: Deployment) -> None:
    first = deployment.cli("migrate")
    assert first.returncode == 0, first.stderr
    assert "applied 0001_referral_state" in first.stdout
    second = deployment.cli("migrate")
    assert second.returncode == 0, second.stderr
    assert "applied" not in second.stdout and "up to date" in second.stdout
    # No worker listens: the query opens the embedded engine itself, read-only.
    count = deployment.cli("query", "SELECT count() AS n FROM referral_status")
    assert count.returncode == 0, count.stderr
    assert count.stdout.split()[2] == "0"
    refused = deployment.cli("query", "INSERT INTO referral_state (org_id) VALUES ('x')")
    assert refused.returncode == 1
    assert "read-only" in refused.stderr
    sneaky = deployment.cli("query", "SELECT 1 SETTINGS readonly = 0")
    assert sneaky.returncode == 1
    assert "readonly" in sneaky.stderr.lower()


def test_worker_without_pseudonym_key_refuses_to_start(deployment: Deployment) -> None:
    deployment.extra_env["REFTRACK_PSEUDONYM_KEY"] = ""
    result = deployment.cli("worker", timeout=60)
    assert result.returncode == 2
    assert "REFTRACK_PSEUDONYM_KEY is not set" in result.stderr


def test_worker_without_kafka_says_so(deployment: Deployment) -> None:
    deployment.bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    deployment.extra_env["REFTRACK_KAFKA_CONNECT_TIMEOUT"] = "3"
    result = deployment.cli("worker", timeout=60)
    assert result.returncode == 1
    assert "cannot reach Kafka" in result.stderr


def test_api_token_guards_data_but_not_probes(deployment: Deployment) -> None:
    deployment.extra_env["REFTRACK_API_TOKEN"] = "t0ken"
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        for path in ("/api/pipeline", "/api/kpis"):
            status, body = worker.get(path)
            assert status == 401, path
            assert body["error"] == "unauthorized"
        assert worker.get("/")[0] == 200  # the page carries no data; its API calls do
        request = urllib.request.Request(
            worker.url + "/api/pipeline", headers={"Authorization": "Bearer t0ken"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["ready"] is True
        wrong = urllib.request.Request(
            worker.url + "/api/pipeline", headers={"Authorization": "Bearer nope"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(wrong, timeout=10)
        assert err.value.code == 401
        assert worker.get("/healthz")[0] == 200
        assert worker.get("/readyz")[0] == 200
        with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
            assert b"reftrack_messages_in_total" in response.read()
        # The CLI passes the token from the environment and goes through the worker.
        result = deployment.cli("query", "SELECT count() AS n FROM referral_status")
        assert result.returncode == 0, result.stderr
        refused = deployment.cli("query", "SELECT 1 SETTINGS readonly = 0")
        assert refused.returncode == 1 and "worker refused" in refused.stderr
    finally:
        assert worker.stop() == 0, worker.logs()
