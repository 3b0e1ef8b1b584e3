"""Exactly-once results (SPEC §6): SIGKILL the worker at random points while it works
through the reference scenario, restart it each time, and every KPI view must still equal
the independent reference; then wipe ClickHouse, replay from the topics, and compare
again. event_rates_1m included: every distinct event counted exactly once."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

from tests.integration.harness import Deployment, Worker, wait_for
from tests.integration.test_kpi import assert_views_match, reference_scenario, wait_until_stored

pytestmark = pytest.mark.integration


def test_sigkill_restart_and_replay_keep_every_view_exact(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, lines, reference = reference_scenario(tmp_path)
    rng = random.Random(2024)
    worker = Worker(deployment, name="worker-0")
    worker.wait_ready()

    # The traffic arrives in three parts, one per round, and each round's worker is
    # killed a random number of new events after its part arrives, so every kill lands
    # mid-stream however fast the worker is (counted where the work is slowest: new events
    # the tracker applied; ingest runs ahead and a re-read event counts as a duplicate).
    # The first two rounds' leftovers and everything uncommitted are the next one's.
    parts = [lines[len(lines) * k // 3 : len(lines) * (k + 1) // 3] for k in range(3)]
    assert sum(len(part) for part in parts) == len(lines)
    kills = 0
    for round_, part in enumerate(parts, start=1):
        chunk = tmp_path / f"traffic-{round_}.ndjson"
        chunk.write_bytes(b"\n".join(part) + b"\n")
        sent = deployment.cli("produce", str(chunk))
        assert sent.returncode == 0, sent.stderr
        target = rng.randint(100, 1500)  # of about 4,000 events in a part
        wait_for(
            lambda w=worker, n=target: w.pipeline()["counts"]["processed"] >= n,
            60,
            interval=0.05,
            what=f"{target} new events applied",
        )
        worker.process.send_signal(signal.SIGKILL)
        worker.kill()
        kills += 1
        worker = Worker(deployment, name=f"worker-{round_}")
        worker.wait_ready()
    try:
        wait_until_stored(worker, reference, timeout=180)
        assert_views_match(worker, reference)
    finally:
        assert worker.stop() == 0, worker.logs()
    assert kills == 3

    # Replay: empty ClickHouse, rewind the sinks, rebuild from the topics alone.
    replayed = deployment.cli("replay", "--yes")
    assert replayed.returncode == 0, replayed.stderr
    assert all(w in replayed.stdout for w in ("emptied", "rewound", "recomputed"))
    empty = deployment.query_json(
        "SELECT (SELECT count() FROM referral_status) + (SELECT count() FROM kpi_summary) AS n"
    )
    assert empty == [{"n": 0}]  # the precomputed views were recomputed over the empty tables
    rebuilt = Worker(deployment, name="worker-replay")
    try:
        rebuilt.wait_ready()
        wait_until_stored(rebuilt, reference)
        assert_views_match(rebuilt, reference)
        # Whatever the worker re-read after its last commit was a duplicate: the rebuilt
        # contents came from the topics, not from applying anything new.
        assert rebuilt.pipeline()["counts"]["processed"] == 0
    finally:
        assert rebuilt.stop() == 0, rebuilt.logs()
