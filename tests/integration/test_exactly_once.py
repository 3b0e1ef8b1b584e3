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
    traffic, lines, reference = reference_scenario(tmp_path)
    rng = random.Random(2024)
    worker = Worker(deployment, name="worker-0")
    worker.wait_ready()
    sent = deployment.cli("produce", str(traffic))
    assert sent.returncode == 0, sent.stderr

    kills = 0
    for round_ in range(1, 4):
        # Let it work for a random while, counted in messages rather than seconds, so the
        # kill lands mid-stream however fast the worker is: at most 3 x 3,000 messages
        # read (re-reads included) of the ~12,500, so thousands are always still to go.
        target = rng.randint(300, 3000)
        wait_for(
            lambda w=worker, n=target: w.pipeline()["counts"]["consumed"] >= n,
            60,
            interval=0.05,
            what=f"{target} messages read",
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
