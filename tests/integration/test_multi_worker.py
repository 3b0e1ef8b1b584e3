"""Several workers in one consumer group (issue 9): two workers share the partitions, one
is SIGKILLed mid-stream and restarted on its own state, a third joins. Afterwards the
compacted status topic holds exactly the expected status of every referral, and the union
of the rows the workers stored in their own embedded ClickHouse (latest version per
referral) says the same."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Deployment, Worker, read_topic, wait_for
from tests.integration.test_kpi import reference_scenario

pytestmark = pytest.mark.integration


def latest_on_topic(deployment: Deployment) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest snapshot (highest version) of each referral on the status topic."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for message in read_topic(deployment.bootstrap, f"{deployment.prefix}.status.v1"):
        snap = json.loads(message.value)
        key = (snap["org_id"], snap["referral_id"])
        assert message.key.decode() == "/".join(key)
        if key not in latest or snap["version"] > latest[key]["version"]:
            latest[key] = snap
    return latest


def union_of_stored(workers: list[Worker]) -> dict[tuple[str, str], tuple[int, str]]:
    """(version, status) per referral over every worker's own ClickHouse, latest wins."""
    union: dict[tuple[str, str], tuple[int, str]] = {}
    for worker in workers:
        rows = worker.query("SELECT org_id, referral_id, version, status FROM referral_status")
        for row in rows:
            key = (row["org_id"], row["referral_id"])
            if key not in union or row["version"] > union[key][0]:
                union[key] = (row["version"], row["status"])
    return union


def topic_difference(
    latest: dict[tuple[str, str], dict[str, Any]], expected: dict[tuple[str, str], Any]
) -> str:
    """How the status topic differs from the expected (version, status) per referral."""
    found = {k: (s["version"], s["status"]) for k, s in latest.items()}
    missing = sorted(expected.keys() - found.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if found[k] != expected[k])
    extra = sorted(found.keys() - expected.keys())
    examples = [(k, found[k], expected[k]) for k in wrong[:5]]
    return (
        f"status topic vs expected: {len(missing)} missing {missing[:5]}, {len(wrong)} at "
        f"another (version, status) {examples}, {len(extra)} unexpected {extra[:5]}"
    )


def test_workers_share_the_work_and_survive_a_kill(deployment: Deployment, tmp_path: Path) -> None:
    deployment.partitions = 6
    traffic, _, reference = reference_scenario(tmp_path)
    events = Counter((e["org_id"], e["referral_id"]) for e in reference.events)
    expected = {key: (events[key], fact["status"]) for key, fact in reference.facts.items()}
    a = Worker(deployment, "a", own_state=True)
    b = Worker(deployment, "b", own_state=True)
    workers = [a, b]
    try:
        a.wait_ready()
        b.wait_ready()
        sent = deployment.cli("produce", str(traffic))
        assert sent.returncode == 0, sent.stderr
        # both take part: each owns tracked partitions and processes some of the stream
        wait_for(
            lambda: all(w.pipeline()["counts"]["processed"] > 0 for w in (a, b)),
            90,
            what="both workers processing",
        )
        time.sleep(0.5)
        b.process.send_signal(signal.SIGKILL)  # mid-stream: thousands of events to go
        b.kill()
        workers = [
            a,
            Worker(deployment, "b", own_state=True),
            Worker(deployment, "c", own_state=True),
        ]
        for worker in workers[1:]:
            worker.wait_ready(timeout=120)

        def topic_complete() -> dict[tuple[str, str], dict[str, Any]] | None:
            latest = latest_on_topic(deployment)
            done = {k: (s["version"], s["status"]) for k, s in latest.items()} == expected
            return latest if done else None

        latest = wait_for(
            topic_complete,
            240,
            interval=2,
            what="every final status on the topic",
            explain=lambda: (
                f"{topic_difference(latest_on_topic(deployment), expected)}\n\n"
                + "\n\n".join(w.diagnosis() for w in workers)
            ),
        )
        assert len(latest) == len(expected) > 1900

        union = wait_for(
            lambda: (u := union_of_stored(workers)) == expected and u,
            120,
            interval=1,
            what="the workers' stored rows to cover every referral at its final version",
        )
        assert union == {k: (s["version"], s["status"]) for k, s in latest.items()}
        # the work was shared: more than one worker stored rows
        stored_by = [w.query("SELECT count() AS n FROM referral_status")[0]["n"] for w in workers]
        assert sum(n > 0 for n in stored_by) >= 2, stored_by
    finally:
        for worker in workers:
            worker.stop()
