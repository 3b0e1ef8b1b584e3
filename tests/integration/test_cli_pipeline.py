"""The command line end to end: `reftrack simulate --output` writes realistic traffic,
`reftrack produce` sends it, a worker processes it, `reftrack query` reads the result,
which must equal the pure referral model applied to the same messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.errors import EventRejected
from schemas.events import parse_event, to_tracked
from schemas.referral import ReferralState, new_state
from schemas.snapshot import iso
from tests.integration.harness import Deployment, Worker, wait_for

pytestmark = pytest.mark.integration


def expected_states(lines: list[bytes]) -> tuple[dict[tuple[str, str], ReferralState], int, int]:
    """The model's answer: states per referral, duplicates, rejects."""
    now = datetime.now(UTC)
    states: dict[tuple[str, str], ReferralState] = {}
    duplicates = rejected = 0
    for line in lines:
        try:
            event = to_tracked(parse_event(line, now), None)
        except EventRejected:
            rejected += 1
            continue
        key = (event.org_id, event.referral_id)
        state = states.setdefault(key, new_state(*key))
        if not state.apply(event):
            duplicates += 1
    return states, duplicates, rejected


def test_simulated_traffic_through_the_cli(deployment: Deployment, tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.ndjson"
    made = deployment.cli(
        "simulate", "--output", str(traffic), "--referrals", "300", "--days", "20", "--seed", "3"
    )
    assert made.returncode == 0, made.stderr
    lines = [line for line in traffic.read_bytes().splitlines() if line.strip()]
    states, duplicates, rejected = expected_states(lines)
    assert duplicates > 0 and rejected > 0  # the traffic really is messy

    worker = Worker(deployment)
    try:
        worker.wait_ready()
        sent = deployment.cli("produce", str(traffic))
        assert sent.returncode == 0, sent.stderr
        assert f"sent {len(lines)} messages" in sent.stdout
        counts = worker.wait_accounted(len(lines))
        assert counts["processed"] == sum(s.version for s in states.values())
        assert counts["duplicates"] == duplicates
        assert counts["dead_lettered"] == rejected

        want = {f"{o}/{r}": s.version for (o, r), s in states.items()}

        def landed() -> bool:
            rows = worker.query(
                "SELECT concat(org_id, '/', referral_id) AS k, version FROM referral_status"
            )
            return {r["k"]: r["version"] for r in rows} == want

        wait_for(landed, 60, what="every referral at its final version")
        # Read through the CLI, which asks the running worker (it holds the engine).
        result = deployment.cli(
            "query",
            "--format",
            "json",
            "SELECT org_id, referral_id, status, priority, specialty, outreach_attempts, "
            "no_shows, leaked, toString(created_at) AS created, toString(seen_at) AS seen, "
            "toString(closed_at) AS closed FROM referral_status",
        )
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
    finally:
        assert worker.stop() == 0, worker.logs()

    assert len(rows) == len(states)

    def ch_time(us: int | None) -> str | None:
        return None if us is None else iso(us).replace("T", " ").rstrip("Z")

    for row in rows:
        state = states[(row["org_id"], row["referral_id"])]
        assert row["status"] == state.status.value
        assert row["priority"] == state.priority
        assert row["specialty"] == state.specialty
        assert row["outreach_attempts"] == state.outreach_attempts
        assert row["no_shows"] == state.no_shows
        assert bool(row["leaked"]) == state.leaked
        for column, milestone in (("created", "created"), ("seen", "seen"), ("closed", "closed")):
            want_time = ch_time(state.milestone_at(milestone))
            assert (row[column] if row[column] != "\\N" else None) == want_time, column
    statuses = {row["status"] for row in rows}
    assert {"closed", "cancelled", "declined", "leaked", "orphan"} <= statuses
