"""Faults (issue 8): with real components failing, nothing is lost and the views stay exact.

* ClickHouse refuses every insert for a while, then is slow, then is back: the sinks
  retry with backpressure (bounded buffers), nothing is half-stored meanwhile, and at the
  end every referral is at its expected status and version.
* The broker is unreachable for longer than the session timeout (a TCP proxy in front of
  a dedicated Tansu cuts every connection and refuses new ones): the same worker process
  lives through it, becomes ready again and processes what comes after, exactly.
* The tracker hangs (as on a publish that never returns): its partitions are reported
  stalled (gauge, and a log line with the tracker's, Faust's and the client's state and
  where the tracker waits); when it goes on, nothing is lost.

How the faults are injected (test-side only) is described in tests/integration/faults.py.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import EventRejected
from schemas.events import parse_event
from streams.simulator import SimConfig, SimMessage, generate
from tests.integration.faults import (
    DOWN,
    DROPPED,
    HOLD,
    INSIDE,
    SLOW,
    TRACKER_DROP,
    TRACKER_HANG,
    ProxiedTansu,
    clickhouse_hook_env,
)
from tests.integration.harness import Deployment, Worker, produce, wait_for
from tests.integration.kpi_reference import Reference

pytestmark = pytest.mark.integration

BATCH_ROWS = 500
FIRST_ORGS = ("northwind", "lakeside")
SECOND_ORGS = ("summit", "harbor")
# Rows a sink makes of one message: a status snapshot is a referral_state row plus one
# stage_durations row per finished stage (at most 5); the other sinks, one row each.
ROWS_PER_MESSAGE = {"status": 6, "events": 1, "rates": 1, "alerts": 1}

Statuses = dict[tuple[str, str], tuple[str, int]]


def traffic(seed: int, orgs: tuple[str, ...], now: datetime, referrals: int = 250) -> list[Any]:
    """Seeded simulated traffic (duplicates, invalid messages, null/wrong keys, orphans);
    every event at least 15 days old so every flag is decided whatever the wall clock."""
    config = SimConfig(seed=seed, orgs=orgs, referrals=referrals, start=now - timedelta(days=75))
    return generate(config, now=now - timedelta(days=15))


def keyed(messages: list[SimMessage]) -> list[tuple[bytes | None, bytes]]:
    return [(m.key, m.value) for m in messages]


def expected(messages: list[SimMessage], now: datetime) -> tuple[Statuses, Reference]:
    """Every referral's status and version (one per distinct event), from the independent
    reference (kpi_reference.py)."""
    reference = Reference([m.value for m in messages], now)
    versions = Counter((e["org_id"], e["referral_id"]) for e in reference.events)
    statuses = {key: (facts["status"], versions[key]) for key, facts in reference.facts.items()}
    return statuses, reference


def stored(worker: Worker) -> Statuses:
    rows = worker.query("SELECT org_id, referral_id, status, version FROM referral_status")
    return {(r["org_id"], r["referral_id"]): (r["status"], int(r["version"])) for r in rows}


def metric(worker: Worker, name: str) -> float:
    """Sum of every sample of a metric (all label sets) in the worker's /metrics."""
    status, body = worker.get("/metrics")
    assert status == 200, body
    if "{" in name:  # one labelled series, given as name{labels}
        pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    else:
        pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(body))


def rejected(messages: list[SimMessage], now: datetime) -> int:
    """Messages the DLQ must get, judged as the reference does (at the wall clock: some of
    the simulator's `future_occurred_at` messages are in the past by now)."""
    count = 0
    for message in messages:
        try:
            parse_event(message.value, now)
        except EventRejected:
            count += 1
    return count


def assert_accounting(
    worker: Worker, messages: list[SimMessage], reference: Reference, now: datetime
) -> None:
    """processed + duplicates + DLQ == produced, each part as the traffic says."""
    dead = rejected(messages, now)
    counts = worker.wait_accounted(len(messages), timeout=60)
    want = {
        "consumed": len(messages),
        "processed": reference.distinct_events,
        "duplicates": len(messages) - dead - reference.distinct_events,
        "dead_lettered": dead,
        "accounted": len(messages),
    }
    assert counts == {**counts, **want}, (counts, want)
    assert metric(worker, "reftrack_dlq_messages_total") == dead
    # Each sink commits on its own: wait for the event and rate sinks too.
    distinct = "SELECT uniqExact(org_id, referral_id, event_id) AS n FROM events"
    wait_for(
        lambda: worker.query(distinct) == [{"n": reference.distinct_events}],
        60,
        what="every distinct event in the events table",
    )
    rates = "SELECT sum(events) AS n FROM event_rates_1m"
    wait_for(
        lambda: worker.query(rates) == [{"n": reference.distinct_events}],
        60,
        what="every distinct event counted once in event_rates_1m",
    )


def assert_all_stored(
    worker: Worker,
    want: Statuses,
    messages: list[SimMessage],
    reference: Reference,
    now: datetime,
) -> None:
    """Every referral stored at its expected status and version, and every message
    accounted for."""
    wait_for(
        lambda: stored(worker) == want, 90, what="both batches stored", explain=worker.diagnosis
    )
    assert_accounting(worker, messages, reference, now)


@dataclass(frozen=True)
class TwoBatches:
    """Two batches of seeded traffic for different organisations, and what each leads to:
    the fault tests store the first, break something, then send the second."""

    first: list[SimMessage]
    second: list[SimMessage]
    want_first: Statuses
    want_all: Statuses
    reference: Reference
    now: datetime

    @classmethod
    def seeded(cls, seed: int, referrals: int = 250) -> TwoBatches:
        now = datetime.now(UTC)
        first = traffic(seed, FIRST_ORGS, now, referrals)
        second = traffic(seed + 1, SECOND_ORGS, now, referrals)
        want_first, _ = expected(first, now)
        want_all, reference = expected(first + second, now)
        return cls(first, second, want_first, want_all, reference, now)

    def store_first(self, worker: Worker, deployment: Deployment) -> None:
        """Once the worker is ready, send the first batch and wait until all of it is
        stored."""
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, keyed(self.first))
        wait_for(
            lambda: stored(worker) == self.want_first,
            60,
            what="the first batch stored",
            explain=worker.diagnosis,
        )

    def send_second(self, deployment: Deployment) -> None:
        produce(deployment.bootstrap, deployment.events_topic, keyed(self.second))

    def assert_all_stored(self, worker: Worker) -> None:
        assert_all_stored(worker, self.want_all, self.first + self.second, self.reference, self.now)


def test_clickhouse_down_then_slow_then_back_loses_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    control = tmp_path / "faults"
    deployment.extra_env.update(clickhouse_hook_env(control, tmp_path / "hook"))
    deployment.extra_env["REFTRACK_SINK_BATCH_ROWS"] = str(BATCH_ROWS)
    deployment.extra_env["REFTRACK_STALL_SECONDS"] = "10"
    batches = TwoBatches.seeded(31)
    first, second = batches.first, batches.second
    assert any(not m.valid for m in second) and any(m.duplicate for m in second)
    new_orgs = ", ".join(f"'{org}'" for org in SECOND_ORGS)

    worker = Worker(deployment)
    try:
        batches.store_first(worker, deployment)
        assert metric(worker, "reftrack_sink_failures_total") == 0

        # ClickHouse refuses every insert.
        (control / DOWN).touch()
        batches.send_second(deployment)
        wait_for(
            lambda: metric(worker, "reftrack_sink_failures_total") > 0,
            20,
            what="sink failures in /metrics",
        )
        wait_for(
            lambda: "failed, retrying in" in worker.log_path.read_text(errors="replace"),
            10,
            what="the sink's retry line in the worker log",
        )
        # The tracker goes on (state lives in Kafka): every message of both batches is
        # processed while the sinks are stuck, each holding a bounded buffer.
        worker.wait_accounted(len(first) + len(second), timeout=60)
        peak_gauge = dict.fromkeys(ROWS_PER_MESSAGE, 0.0)
        peaks = dict.fromkeys(ROWS_PER_MESSAGE, 0)
        for _ in range(8):
            for name in ROWS_PER_MESSAGE:
                gauge = metric(worker, f'reftrack_sink_rows_pending{{sink="{name}"}}')
                peak_gauge[name] = max(peak_gauge[name], gauge)
            for sink in worker.pipeline()["sinks"]:
                peaks[sink["name"]] = max(peaks[sink["name"]], sink["rows_pending"])
            time.sleep(0.4)
        assert peaks["events"] > 0, "no sink was holding rows: the outage proved nothing"
        # Bounded, not growing: a stuck sink holds at most BATCH_ROWS messages (it reads
        # only what fits), so at most BATCH_ROWS rows per row a message makes; and the
        # gauge of each sink says what that sink holds.
        bounds = {name: BATCH_ROWS * n for name, n in ROWS_PER_MESSAGE.items()}
        assert all(peaks[name] <= bounds[name] for name in bounds), (peaks, bounds)
        assert peaks["events"] <= BATCH_ROWS, peaks
        assert peak_gauge["events"] > 0, peak_gauge
        assert all(peak_gauge[name] <= bounds[name] for name in bounds), peak_gauge
        # Nothing of the second batch is half-stored; the first is untouched.
        for table in ("referral_status", "events", "stage_durations"):
            rows = worker.query(f"SELECT count() AS n FROM {table} WHERE org_id IN ({new_orgs})")
            assert rows == [{"n": 0}], table
        assert stored(worker) == batches.want_first
        # The stuck sink's partitions, messages waiting, do not move: the stall watch
        # says so (gauge and log line, with the sink's last error), and blames no other
        # consumer: ingest and the tracker went on.
        stalled = 'reftrack_stalled_partitions{consumer="sink:events"}'
        wait_for(lambda: metric(worker, stalled) >= 1, 40, what="the events sink's stall")
        assert metric(worker, 'reftrack_stalled_partitions{consumer="ingest"}') == 0
        assert metric(worker, 'reftrack_stalled_partitions{consumer="tracker"}') == 0
        stall_lines = [
            line
            for line in worker.log_path.read_text(errors="replace").splitlines()
            if "sink:events: " in line and "have not moved for" in line
        ]
        assert stall_lines and "last error injected: connection refused" in stall_lines[0], (
            stall_lines
        )

        # Back, but slow: flushes succeed, 1.5 s each.
        flushed = metric(worker, "reftrack_sink_flushes_total")
        (control / SLOW).touch()
        (control / DOWN).unlink()
        wait_for(
            lambda: metric(worker, "reftrack_sink_flushes_total") > flushed,
            20,
            what="a slow flush",
        )
        time.sleep(2)
        (control / SLOW).unlink()

        batches.assert_all_stored(worker)
        wait_for(
            lambda: metric(worker, "reftrack_stalled_partitions") == 0,
            30,
            what="no partition stalled once the sinks caught up",
        )
    finally:
        for name in (DOWN, SLOW):
            (control / name).unlink(missing_ok=True)
        code = worker.stop()
    assert code == 0, worker.logs()


def test_a_hung_tracker_is_reported_stalled_and_loses_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    control = tmp_path / "faults"
    deployment.extra_env.update(clickhouse_hook_env(control, tmp_path / "hook"))
    deployment.extra_env["REFTRACK_STALL_SECONDS"] = "10"
    batches = TwoBatches.seeded(51, referrals=60)
    stalled = 'reftrack_stalled_partitions{consumer="tracker"}'

    worker = Worker(deployment)
    try:
        batches.store_first(worker, deployment)
        (control / TRACKER_HANG).touch()
        batches.send_second(deployment)
        wait_for(lambda: metric(worker, stalled) >= 1, 40, what="the tracker's stall")
        # ingest went on: its partitions are not the stalled ones
        assert metric(worker, 'reftrack_stalled_partitions{consumer="ingest"}') == 0
        lines = [
            line
            for line in worker.log_path.read_text(errors="replace").splitlines()
            if "tracker: " in line and "have not moved for" in line
        ]
        assert lines, worker.logs()
        line = lines[0]
        assert f"{deployment.prefix}.tracked.v1/" in line, line
        assert "tracker expects offset " in line and "faust committed " in line, line
        assert "events of it in the lane" in line, line
        assert "stream buffers (then the lane) [" in line and "generation " in line, line
        assert "client: fetch position " in line, line
        assert "not available" not in line, line
        assert "tracker.py:" in line and " track > " in line, line  # where it waits

        (control / TRACKER_HANG).unlink()
        batches.assert_all_stored(worker)
        wait_for(lambda: metric(worker, stalled) == 0, 30, what="the stall over")
        log = worker.log_path.read_text(errors="replace")
        assert "tracker: moving again: " in log
    finally:
        (control / TRACKER_HANG).unlink(missing_ok=True)
        code = worker.stop()
    assert code == 0, worker.logs()


def test_messages_lost_at_the_end_of_a_partition_are_read_again(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Tracked messages thrown away between fetch and stream, with nothing after them:
    the consumer is at the end of each partition, the tracker behind it, and no later
    event shows the hole. The tracker reads the partitions again (Tracker.retry_lost)."""
    control = tmp_path / "faults"
    deployment.extra_env.update(clickhouse_hook_env(control, tmp_path / "hook"))
    batches = TwoBatches.seeded(61, referrals=60)

    worker = Worker(deployment)
    try:
        batches.store_first(worker, deployment)
        (control / TRACKER_DROP).touch()
        batches.send_second(deployment)
        batches.assert_all_stored(worker)
        dropped = int((control / DROPPED).read_text())
        assert dropped > 0
        log = worker.log_path.read_text(errors="replace")
        assert "reached the tracker" in log and "reading again" in log, worker.logs()
        assert metric(worker, "reftrack_tracker_rereads_total") >= 1
    finally:
        (control / TRACKER_DROP).unlink(missing_ok=True)
        code = worker.stop()
    assert code == 0, worker.logs()


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[ProxiedTansu]:
    with ProxiedTansu(tmp_path / "tansu-proxied.log") as broker:
        yield broker


def test_broker_unavailable_for_a_while_then_back(
    proxied_broker: ProxiedTansu, tmp_path: Path
) -> None:
    deployment = Deployment(bootstrap=proxied_broker.bootstrap, base_dir=tmp_path)
    batches = TwoBatches.seeded(41)

    worker = Worker(deployment)
    try:
        pid = worker.process.pid
        batches.store_first(worker, deployment)
        logged_before = len(worker.log_path.read_bytes())

        # The broker is unreachable for twice the session timeout.
        proxied_broker.proxy.outage()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            assert worker.process.poll() is None, f"worker died in the outage:\n{worker.logs()}"
            time.sleep(0.5)
        proxied_broker.proxy.restore()

        batches.send_second(deployment)
        wait_for(
            lambda: stored(worker) == batches.want_all,
            120,
            what="both batches stored",
            explain=worker.diagnosis,
        )
        assert_accounting(worker, batches.first + batches.second, batches.reference, batches.now)
        worker.wait_ready(60)
        assert worker.process.poll() is None and worker.process.pid == pid
        # What it says meanwhile is aiokafka's (reconnecting every ~0.1 s per client):
        # each repeated line at most once per 10 s, with how many were held back
        # (streams/logs.RepeatFilter; unfiltered, a 12 s outage wrote ~4,500 lines).
        during = worker.log_path.read_bytes()[logged_before:].decode(errors="replace")
        assert "Unable connect to node" in during, during[-3000:]
        lines = during.count("\n")
        assert lines < 300, f"{lines} log lines during a 12 s outage:\n{during[-3000:]}"
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()


def test_sigkill_inside_a_sink_flush_changes_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    """SIGKILL after a flush's rows are in ClickHouse and before the sink commits its
    offsets: the restarted worker reads those messages again and inserts the same rows
    again, which the versioned tables absorb. Views exact; every event counted once."""
    control = tmp_path / "faults"
    deployment.extra_env.update(clickhouse_hook_env(control, tmp_path / "hook"))
    now = datetime.now(UTC)
    messages = traffic(33, FIRST_ORGS, now)
    want, reference = expected(messages, now)

    (control / HOLD).touch()
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, keyed(messages))
        wait_for(
            lambda: (control / INSIDE).exists(), 60, what="a status flush held after its insert"
        )
        # the held flush's rows are stored (the hook ran the real insert), not committed
        assert int((control / INSIDE).read_text()) > 0
        worker.kill()  # SIGKILL
    finally:
        worker.kill()
    (control / HOLD).unlink()

    worker = Worker(deployment)
    try:
        worker.wait_ready()
        wait_for(
            lambda: stored(worker) == want,
            90,
            what="every referral at its final version",
            explain=worker.diagnosis,
        )
        distinct = "SELECT uniqExact(org_id, referral_id, event_id) AS n FROM events"
        wait_for(
            lambda: worker.query(distinct) == [{"n": reference.distinct_events}],
            60,
            what="every distinct event in the events table",
            explain=lambda: (
                f"{worker.query(distinct)} want {reference.distinct_events}\n" + worker.diagnosis()
            ),
        )
        rates = "SELECT sum(events) AS n FROM event_rates_1m"
        wait_for(
            lambda: worker.query(rates) == [{"n": reference.distinct_events}],
            60,
            what="every distinct event counted once in event_rates_1m",
            explain=lambda: (
                f"{worker.query(rates)} want {reference.distinct_events}\n" + worker.diagnosis()
            ),
        )
    finally:
        assert worker.stop() == 0, worker.logs()
