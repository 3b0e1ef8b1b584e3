"""Graceful shutdown flushes: SIGTERM right after producing, and everything the worker
acknowledged (committed) is in ClickHouse when it has exited; a restart then finishes
the rest with nothing lost and nothing counted twice."""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from schemas.events import TrackedEvent
from tests.integration.harness import (
    Deployment,
    Worker,
    committed_offsets,
    produce,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.integration

STEPS = [
    ("referral.created", {"priority": "routine", "specialty": "cardiology"}),
    ("referral.routed", {}),
    ("patient.outreach", {"channel": "sms"}),
    ("appointment.scheduled", {"appointment_id": "A", "appointment_at": "2025-06-01T09:00:00Z"}),
    ("appointment.completed", {"appointment_id": "A"}),
]


def referral_events(n_referrals: int, offset: int = 0) -> list[tuple[bytes, bytes]]:
    start = datetime(2025, 5, 1, tzinfo=UTC)
    out = []
    for i in range(offset, offset + n_referrals):
        for step, (type_, data) in enumerate(STEPS):
            doc = {
                "event_id": f"ev-{i}-{step}",
                "referral_id": f"R-{i}",
                "org_id": "acme",
                "type": type_,
                "source": "ehr",
                "data": data,
                "occurred_at": (start + timedelta(hours=i, minutes=step)).isoformat(),
            }
            out.append((f"R-{i}".encode(), json.dumps(doc).encode()))
    return out


def stored_versions(deployment: Deployment) -> dict[str, int]:
    rows = deployment.query_json(
        "SELECT referral_id, max(version) AS version FROM referral_state GROUP BY referral_id"
    )
    return {r["referral_id"]: int(r["version"]) for r in rows}


def test_sigterm_flushes_everything_acknowledged(deployment: Deployment) -> None:
    # The sink never flushes on its own here: only the shutdown can put rows in ClickHouse.
    deployment.extra_env.update(
        {"REFTRACK_SINK_FLUSH_SECONDS": "600", "REFTRACK_SINK_BATCH_ROWS": "1000000"}
    )
    first, second = referral_events(200), referral_events(200, offset=200)
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, first)
        wait_for(lambda: worker.pipeline()["counts"]["processed"] > 0, 60, what="processing")
        produce(deployment.bootstrap, deployment.events_topic, second)
        assert worker.pipeline()["counts"]["sink_rows"] == 0
        code = worker.stop(signal.SIGTERM)
    finally:
        worker.kill()
    assert code == 0, worker.logs()

    # What did the tracker acknowledge? Every tracked event below its committed offset.
    tracked_topic = f"{deployment.prefix}.tracked.v1"
    committed = committed_offsets(deployment.bootstrap, deployment.app_id, tracked_topic)
    acknowledged: dict[str, set[str]] = defaultdict(set)
    for message in read_topic(deployment.bootstrap, tracked_topic):
        if message.offset < committed.get((tracked_topic, message.partition), 0):
            event = TrackedEvent.from_json(message.value)
            acknowledged[event.referral_id].add(event.event_id)
    assert acknowledged, "the worker acknowledged nothing before SIGTERM: test proves nothing"

    stored = stored_versions(deployment)
    missing = {
        ref: (len(ids), stored.get(ref))
        for ref, ids in acknowledged.items()
        if stored.get(ref, 0) < len(ids)
    }
    assert not missing, f"acknowledged but not in ClickHouse: {list(missing.items())[:5]}"

    # A restart (flushing normally again) finishes the rest: every referral at its full
    # version, none beyond.
    deployment.extra_env.clear()
    restarted = Worker(deployment, name="worker-2")
    try:
        restarted.wait_ready()
        expected = {f"R-{i}": len(STEPS) for i in range(400)}
        wait_for(
            lambda: (
                {
                    r["referral_id"]: int(r["version"])
                    for r in restarted.query("SELECT referral_id, version FROM referral_status")
                }
                == expected
            ),
            90,
            what="all 400 referrals complete after restart",
        )
        statuses = restarted.query(
            "SELECT status, count() AS n FROM referral_status GROUP BY status"
        )
        assert statuses == [{"status": "seen", "n": 400}]
    finally:
        assert restarted.stop() == 0, restarted.logs()
