"""The deadline-index rebuild of partitions the tracker takes (Tracker._ensure_owned):
in chunks, letting the event loop go, and abandoned when a rebalance comes in between.

Run on a stand-in holding the attributes the rebuild uses, with real table records (the
tracker's stored JSON) and real indexes; the integration tests run the real thing on
every assignment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import streams.tracker
from bench.alert_tick import build
from schemas.deadlines import DeadlineIndex
from schemas.flags import DEFAULT_TARGETS, next_deadline
from schemas.sla import SlaPolicy
from streams.metrics import Metrics
from streams.tracker import Tracker, encode_record, partition_of

PARTITIONS = 4


def records(n: int) -> list[tuple[str, bytes]]:
    """`n` open referrals as the referral table stores them."""
    states = build(n)
    now = min(s.last_event_at or 0 for s in states.values())
    return [
        (
            key,
            encode_record(
                {
                    "state": state.to_dict(),
                    "alerts": {},
                    "deadline": next_deadline(state, now, DEFAULT_TARGETS),
                    "p": partition_of(key, PARTITIONS),
                }
            ),
        )
        for key, state in states.items()
    ]


class ClosingIndex(DeadlineIndex):
    closed = 0

    def close(self) -> None:
        ClosingIndex.closed += 1


class Rebuilding:
    """The attributes Tracker._ensure_owned uses."""

    def __init__(self, table_items: Any) -> None:
        self.table = SimpleNamespace(items=table_items)
        self.partitions = PARTITIONS
        self.policy = SlaPolicy.default()
        self.metrics = Metrics()
        self._owned: dict[int, Any] = {}
        self._rebalances = 0
        self._next_offset: dict[int, int | None] = {}
        self._held: dict[int, Any] = {}
        self._quiet: dict[int, Any] = {}
        self.new_index = lambda number: ClosingIndex()

    def _rebuild_abandoned(self, fresh: Any, why: str) -> bool:
        return Tracker._rebuild_abandoned(self, fresh, why)  # type: ignore[arg-type]

    async def ensure_owned(self, numbers: set[int]) -> bool:
        return await Tracker._ensure_owned(self, numbers)  # type: ignore[arg-type]


def gauge_sum(gauge: Any) -> float:
    return sum(s.value for m in gauge.collect() for s in m.samples)


def due_keys(index: DeadlineIndex) -> list[str]:
    return sorted(index.pop_due(2**62))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.tracker, "REBUILD_CHUNK", 50)
    ClosingIndex.closed = 0


def test_a_rebuild_lets_other_tasks_run_and_indexes_what_a_single_pass_would() -> None:
    table = records(1000)

    async def main() -> tuple[bool, int, Rebuilding]:
        t = Rebuilding(lambda: iter(table))
        turns = 0

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        done = await t.ensure_owned({0, 1})
        other.cancel()
        return done, turns, t

    done, turns, t = asyncio.run(main())
    assert done and set(t._owned) == {0, 1}
    assert turns >= len(table) // 50 - 1  # the loop was let go every chunk
    for number in (0, 1):
        want = sorted(k for k, _ in table if partition_of(k, PARTITIONS) == number)
        assert due_keys(t._owned[number].index) == want
    opened = gauge_sum(t.metrics.referrals_open)
    assert opened == sum(1 for k, _ in table if partition_of(k, PARTITIONS) in (0, 1))
    # owned partitions are not rebuilt again
    assert asyncio.run(t.ensure_owned({0})) and ClosingIndex.closed == 0


def test_a_rebalance_during_a_rebuild_abandons_it_and_keeps_nothing() -> None:
    table = records(500)

    async def main() -> tuple[bool, Rebuilding]:
        t = Rebuilding(lambda: iter(table))

        async def rebalance() -> None:
            await asyncio.sleep(0)
            Tracker.forget(t, {0})  # type: ignore[arg-type]

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(rebalance()))
        return await t.ensure_owned({0, 1}), t

    done, t = asyncio.run(main())
    assert not done
    assert t._owned == {} and ClosingIndex.closed == 2
    assert gauge_sum(t.metrics.referrals_open) == 0  # no gauge counted twice later


def test_a_store_changed_under_the_rebuild_abandons_it() -> None:
    table = records(200)

    def changing() -> Iterator[tuple[str, bytes]]:
        yield from table[:120]
        raise RuntimeError("dictionary changed size during iteration")

    t = Rebuilding(changing)
    assert asyncio.run(t.ensure_owned({0, 1, 2, 3})) is False
    assert t._owned == {} and ClosingIndex.closed == 4
