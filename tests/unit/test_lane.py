"""streams.lane: the tracked topic's messages from the fetch loop to the tracker, and
faust_compat._to_lane, the fetch loop's side of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from mode import Service

from streams import faust_compat
from streams.lane import LANE_SIZE, Delivered, Lane, feed

TOPIC = "t.tracked.v1"


@dataclass(eq=False)
class Message:
    partition: int
    offset: int
    topic: str = TOPIC


def messages(n: int, partition: int = 0, start: int = 0) -> list[Message]:
    return [Message(partition, start + i) for i in range(n)]


def take_while(
    lane: Lane, meanwhile: Callable[[], Awaitable[None]], size: int, within: float
) -> tuple[list[int], float]:
    """The offsets of one `take` from `lane` while `meanwhile` runs beside it, and how
    long the take waited."""

    async def main() -> tuple[list[int], float]:
        task = asyncio.create_task(meanwhile())
        started = time.monotonic()
        batch = await lane.take(size, within)
        waited = time.monotonic() - started
        await task
        return [m.offset for m in batch], waited

    return asyncio.run(main())


def test_a_full_batch_is_taken_at_once_in_order() -> None:
    async def main() -> list[list[int]]:
        lane = Lane(TOPIC)
        for m in messages(25):
            lane.put(m)
        return [[m.offset for m in await lane.take(10, within=5)] for _ in range(2)]

    started = time.monotonic()
    assert asyncio.run(main()) == [list(range(10)), list(range(10, 20))]
    assert time.monotonic() - started < 1  # no waiting for `within`


def test_a_lane_for_large_batches_holds_two_of_them() -> None:
    """A lane no larger than a batch could never hold a full one while the fetch loop
    waits for room: every batch would wait its whole `within`."""
    assert Lane.for_batches(TOPIC, 100).maxsize == LANE_SIZE

    async def main() -> tuple[bool, bool, int, bool]:
        lane = Lane.for_batches(TOPIC, 5000)
        for m in messages(9_999):  # one short of two batches
            lane.put(m)
        room_before = not lane.full()
        lane.put(Message(0, 9_999))
        full = lane.full()
        taken = await lane.take(5000, within=5)
        return room_before, full, len(taken), not lane.full()

    started = time.monotonic()
    assert asyncio.run(main()) == (True, True, 5000, True)
    assert time.monotonic() - started < 1


def test_a_short_batch_waits_at_most_within_then_goes() -> None:
    async def main() -> tuple[list[int], float]:
        lane = Lane(TOPIC)
        for m in messages(3):
            lane.put(m)
        started = time.monotonic()
        batch = await lane.take(10, within=0.2)
        return [m.offset for m in batch], time.monotonic() - started

    offsets, waited = asyncio.run(main())
    assert offsets == [0, 1, 2]
    assert 0.15 <= waited < 1


def test_a_batch_completed_while_waiting_goes_as_soon_as_it_is_full() -> None:
    lane = Lane(TOPIC)
    lane.put(Message(0, 0))

    async def more() -> None:
        await asyncio.sleep(0.05)
        for m in messages(9, start=1):
            lane.put(m)

    offsets, waited = take_while(lane, more, 10, within=5)
    assert offsets == list(range(10))
    assert waited < 1


def test_an_empty_lane_waits_for_its_first_message() -> None:
    lane = Lane(TOPIC)

    async def later() -> None:
        await asyncio.sleep(0.05)
        lane.put(Message(3, 7))

    assert take_while(lane, later, 10, within=0.01)[0] == [7]


def test_a_cleared_lane_drops_what_waits_and_the_taker_waits_for_new_messages() -> None:
    """A rebalance clears the lane (mode's flow control calls clear); a taker waiting for
    a full batch then gets only what comes after."""

    lane = Lane(TOPIC)
    for m in messages(3):
        lane.put(m)

    async def rebalance() -> None:
        await asyncio.sleep(0.02)
        lane.clear()
        await asyncio.sleep(0.1)
        lane.put(Message(0, 0))  # read again from the committed offset

    assert take_while(lane, rebalance, 10, within=0.05)[0] == [0]


def test_waiting_counts_a_partitions_messages() -> None:
    lane = Lane(TOPIC)
    for m in messages(3, partition=1) + messages(2, partition=4):
        lane.put(m)
    assert (lane.waiting(1), lane.waiting(4), lane.waiting(0), len(lane)) == (3, 2, 0, 5)


def test_room_is_ready_when_not_full_and_comes_when_a_batch_is_taken() -> None:
    async def main() -> list[bool]:
        lane = Lane(TOPIC, maxsize=4)
        seen = [lane.room().done()]
        for m in messages(4):
            lane.put(m)
        room = lane.room()
        seen.append(room.done())
        await lane.take(2, within=0)
        seen.append(room.done())
        return seen

    assert asyncio.run(main()) == [True, False, True]


# -- the agent's loop (feed) ------------------------------------------------------------


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> None:
        self.acked.append(message.offset)


def test_feed_acknowledges_each_batch_after_processing_it() -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        lane, consumer = Lane(TOPIC), Consumer()
        processed: list[list[int]] = []

        async def process(events: list[Delivered]) -> None:
            assert consumer.acked == [o for batch in processed for o in batch]  # not yet
            processed.append([e.message.offset for e in events])

        for m in messages(5):
            lane.put(m)
        task = asyncio.create_task(feed(lane, consumer, process, 2, 0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return processed, consumer.acked

    processed, acked = asyncio.run(main())
    assert processed == [[0, 1], [2, 3], [4]]
    assert acked == [0, 1, 2, 3, 4]


def test_feed_acknowledges_nothing_of_a_batch_that_raises() -> None:
    async def main() -> list[int]:
        lane, consumer = Lane(TOPIC), Consumer()

        async def process(events: list[Delivered]) -> None:
            if any(e.message.offset == 3 for e in events):
                raise RuntimeError("a bug")

        for m in messages(6):
            lane.put(m)
        with pytest.raises(RuntimeError, match="a bug"):
            await feed(lane, consumer, process, 2, 0.01)
        return consumer.acked

    assert asyncio.run(main()) == [0, 1]


# -- the fetch loop's side (faust_compat._to_lane) --------------------------------------


class Fetching(Service):
    """What _to_lane uses of Faust's consumer: its flow switch, its stopped and crashed
    events (a mode Service's) and track_message."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.tracked: list[int] = []

    def track_message(self, message: Any) -> None:
        self.tracked.append(message.offset)


def test_a_message_is_tracked_by_the_consumer_and_put_in_the_lane() -> None:
    async def main() -> tuple[list[bool], list[int], int]:
        consumer, lane = Fetching(), Lane(TOPIC)
        results = [await faust_compat._to_lane(consumer, lane, m) for m in messages(3)]
        return results, consumer.tracked, len(lane)

    assert asyncio.run(main()) == ([True] * 3, [0, 1, 2], 3)


def test_nothing_is_put_while_the_flow_is_suspended() -> None:
    async def main() -> tuple[bool, list[int], int]:
        consumer, lane = Fetching(), Lane(TOPIC)
        consumer.suspend_flow.set()
        put = await faust_compat._to_lane(consumer, lane, Message(0, 0))
        return put, consumer.tracked, len(lane)

    assert asyncio.run(main()) == (False, [], 0)


def test_a_full_lane_holds_the_fetch_loop_until_the_tracker_takes_a_batch() -> None:
    async def main() -> tuple[bool, list[str]]:
        consumer, lane = Fetching(), Lane(TOPIC, maxsize=2)
        for m in messages(2):
            lane.put(m)
        seen: list[str] = []

        async def tracker() -> None:
            await asyncio.sleep(0.05)
            seen.append("took " + ",".join(str(m.offset) for m in await lane.take(2, 0)))

        task = asyncio.create_task(tracker())
        put = await faust_compat._to_lane(consumer, lane, Message(0, 2))
        seen.append(f"put, {len(lane)} in the lane")
        await task
        faust_compat._stop_flow_watch(consumer)
        return put, seen

    assert asyncio.run(main()) == (True, ["took 0,1", "put, 1 in the lane"])


@pytest.mark.parametrize("event", ["suspend_flow", "_stopped"])
def test_a_rebalance_or_a_stop_while_the_lane_is_full_leaves_the_message_undelivered(
    event: str,
) -> None:
    async def main() -> tuple[bool, list[int], int]:
        consumer, lane = Fetching(), Lane(TOPIC, maxsize=1)
        lane.put(Message(0, 0))

        async def later() -> None:
            await asyncio.sleep(0.02)
            getattr(consumer, event).set()

        task = asyncio.create_task(later())
        put = await faust_compat._to_lane(consumer, lane, Message(0, 1))
        await task
        return put, consumer.tracked, len(lane)

    assert asyncio.run(main()) == (False, [], 1)


def test_waiting_in_stream_and_stream_buffers_count_the_lane() -> None:
    class App:
        topics: list[Any] = []
        reftrack_lane = Lane(TOPIC)

    app = App()
    for m in messages(3, partition=2) + messages(1, partition=5):
        app.reftrack_lane.put(m)
    from faust.types import TP

    assert faust_compat.waiting_in_stream(app, TP(TOPIC, 2)) == 3
    assert faust_compat.waiting_in_stream(app, TP("other", 2)) == 0
    assert faust_compat.stream_buffers(app, TOPIC) == [4]
    assert faust_compat.stream_buffers(app, "other") == []
