"""The stall watch (streams/stall.py): which partitions count as stalled, what it logs and
counts, and that it names where the worker's own tasks wait."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.metrics import Metrics
from streams.stall import StallDetector, StallWatch, Watched, task_stacks


def test_a_waiting_partition_stalls_once_after_the_stall_time_and_recovers_when_it_moves() -> None:
    d = StallDetector(stall_seconds=60)
    assert d.observe("ingest", {"t/0": (100, 500)}, now=0) == ([], [], 0)
    assert d.observe("ingest", {"t/0": (100, 500)}, now=59) == ([], [], 0)
    assert d.observe("ingest", {"t/0": (100, 600)}, now=60) == (["t/0"], [], 1)
    # reported once, counted while it lasts
    assert d.observe("ingest", {"t/0": (100, 600)}, now=500) == ([], [], 1)
    assert d.observe("ingest", {"t/0": (101, 600)}, now=501) == ([], ["t/0"], 0)
    # a new run starts from the move
    assert d.observe("ingest", {"t/0": (101, 600)}, now=560) == ([], [], 0)
    assert d.observe("ingest", {"t/0": (101, 600)}, now=561) == (["t/0"], [], 1)


def test_a_partition_with_nothing_waiting_never_stalls() -> None:
    d = StallDetector(stall_seconds=60)
    for now in range(0, 1000, 10):
        assert d.observe("tracker", {"t/1": (500, 500)}, now=now) == ([], [], 0)


def test_a_partition_never_read_stalls_while_messages_wait() -> None:
    d = StallDetector(stall_seconds=60)
    d.observe("sink:status", {"s/2": (None, 40)}, now=0)
    assert d.observe("sink:status", {"s/2": (None, 40)}, now=61) == (["s/2"], [], 1)


def test_a_partition_taken_away_is_forgotten_and_consumers_are_counted_apart() -> None:
    d = StallDetector(stall_seconds=60)
    d.observe("ingest", {"t/0": (1, 9), "t/1": (1, 9)}, now=0)
    d.observe("tracker", {"t/0": (1, 9)}, now=0)
    assert d.observe("ingest", {"t/0": (1, 9), "t/1": (1, 9)}, now=60)[2] == 2
    assert d.observe("tracker", {"t/0": (1, 9)}, now=60)[2] == 1
    assert d.observe("ingest", {"t/1": (1, 9)}, now=61) == ([], [], 1)
    # given back later, it starts a new run rather than counting the time it was away
    assert d.observe("ingest", {"t/0": (1, 9), "t/1": (1, 9)}, now=100) == ([], [], 1)


@given(
    st.lists(
        st.tuples(st.floats(0, 50), st.integers(0, 3), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    )
)
def test_stalled_means_waiting_at_one_position_for_the_stall_time(
    steps: list[tuple[float, int, int]],
) -> None:
    """Against a model: a partition is stalled exactly when, since the last look at which
    its position changed or nothing waited, `stall_seconds` have passed; each stall is
    reported once, and each end of a reported stall once."""
    d = StallDetector(stall_seconds=60)
    now = 0.0
    run_start: float | None = None
    previous: int | None = None
    was_stalled = False
    for dt, position, ahead in steps:
        now += dt
        high = position + ahead
        waiting = ahead > 0
        if run_start is None or position != previous or not waiting:
            run_start = now
        previous = position
        stalled_now = waiting and now - run_start >= 60
        newly, moved, count = d.observe("c", {"t/0": (position, high)}, now)
        assert count == int(stalled_now)
        assert newly == (["t/0"] if stalled_now and not was_stalled else [])
        assert moved == (["t/0"] if was_stalled and not stalled_now else [])
        was_stalled = stalled_now


def test_the_watch_logs_a_stall_with_the_consumer_state_and_the_waiting_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    positions = {"events/3": (7, 19)}
    watch = StallWatch(
        [Watched("ingest", lambda: positions, lambda where: f"state of {where}")],
        metrics,
        stall_seconds=30,
        check_seconds=3600,
    )

    def stalled() -> float:
        value = metrics.registry.get_sample_value(
            "reftrack_stalled_partitions", {"consumer": "ingest"}
        )
        assert value is not None
        return value

    async def run() -> None:
        await watch.start()  # its own task waits in streams/stall.py: named in the warning
        await asyncio.sleep(0)
        try:
            with caplog.at_level(logging.INFO, logger="streams.stall"):
                watch.check(0)
                assert stalled() == 0
                watch.check(31)
                assert stalled() == 1
                positions["events/3"] = (8, 19)
                watch.check(32)
                assert stalled() == 0
        finally:
            await watch.stop()

    asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert (
        "ingest: 1 partitions have messages waiting and have not moved for 31 s: "
        "events/3 (12 waiting at 7; state of events/3)" in warnings[0]
    )
    assert "stall.py:" in warnings[0] and "_watch" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "ingest: moving again: events/3" in infos


def test_a_failing_description_or_consumer_does_not_stop_the_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(where: str) -> str:
        raise RuntimeError("consumer gone")

    def starting() -> dict[str, tuple[int | None, int]]:
        raise RuntimeError("not started")

    metrics = Metrics()
    watch = StallWatch(
        [Watched("a", lambda: {"t/0": (1, 2)}, broken), Watched("b", starting)],
        metrics,
        stall_seconds=1,
    )
    with caplog.at_level(logging.WARNING, logger="streams.stall"):
        watch.check(0)
        watch.check(2)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "(not available: RuntimeError('consumer gone'))" in warning


def test_task_stacks_name_only_tasks_running_reftrack_code() -> None:
    async def outside() -> None:
        await asyncio.sleep(10)

    async def run() -> list[str]:
        watches = [StallWatch([], Metrics(), check_seconds=3600) for _ in range(2)]
        other = asyncio.ensure_future(outside())
        for watch in watches:
            await watch.start()
        try:
            await asyncio.sleep(0)
            return task_stacks()
        finally:
            for watch in watches:
                await watch.stop()
            other.cancel()

    stacks = asyncio.run(run())
    # both watches wait at the same place: one line, counted; the await chain goes down
    # to the innermost frame (in asyncio, waiting for the sleep)
    watching = [line for line in stacks if line.startswith("stall.py:")]
    assert len(watching) == 1 and watching[0].endswith(" (×2)"), stacks
    assert " _watch > tasks.py:" in watching[0], stacks
    assert not any("outside" in line for line in stacks), stacks
