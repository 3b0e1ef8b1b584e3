"""The consumer fixes of streams.faust_compat: what a commit may cover, when a partition
is read again, and where partitions without a committed offset start.

The functions are Faust's own consumer methods, patched; they are exercised here on a
stand-in holding the same bookkeeping attributes (the real thing runs in every
integration test, and the multi-worker SIGKILL test is what found the holes)."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st
from mode import Service

from streams import faust_compat
from streams.faust_compat import _new_offset, perform_seek

EVENTS = TP("events", 0)
CHANGELOG = TP("app-table-changelog", 0)


class InlineLoop:
    """A consumer thread's loop that runs what it is handed at once."""

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        callback(*args)


class FakeThread:
    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []
        self.thread_loop: Any = InlineLoop()

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class StandIn:
    """The attributes of faust.transport.consumer.Consumer the fixes read and write."""

    def __init__(self, committed: dict[TP, int | None] | None = None) -> None:
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._gap: dict[TP, Any] = {}
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._thread = FakeThread()
        self._reftrack_start: dict[TP, int] = {}
        self._reftrack_repaired: dict[TP, float] = {}
        self._reftrack_seeks = 0
        self._broker_committed = committed or {}
        self._earliest: dict[TP, int] = {}
        self.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))

    _seek_in_thread = faust_compat._seek_in_thread

    def ack(self, tp: TP, *offsets: int) -> None:
        for offset in offsets:
            self._acked[tp].append(offset)
            self._acked_index[tp].add(offset)

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self._broker_committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self._earliest.get(tp, 0) for tp in tps}


def test_a_contiguous_run_from_the_committed_offset_is_committed() -> None:
    c = StandIn()
    c._committed_offset[EVENTS] = 10
    c.ack(EVENTS, 12, 10, 11)
    assert _new_offset(c, EVENTS) == 13
    assert c._acked[EVENTS] == [] and c._acked_index[EVENTS] == set()


def test_a_missing_first_message_is_never_committed_past_and_is_read_again() -> None:
    # Faust itself would commit 13 here: it tolerates one missing offset at the head.
    c = StandIn()
    c._committed_offset[EVENTS] = 10
    c._read_offset[EVENTS] = 12
    c.ack(EVENTS, 11, 12)
    assert _new_offset(c, EVENTS) is None
    assert c._thread.seeks == [(EVENTS, 10)]
    assert c._read_offset[EVENTS] == 10  # re-fetched messages are not skipped as old
    # once it is processed, the whole run commits
    c.ack(EVENTS, 10)
    assert _new_offset(c, EVENTS) == 13


def test_reading_again_is_rate_limited_per_partition() -> None:
    c = StandIn()
    c._committed_offset[EVENTS] = 0
    c.ack(EVENTS, 5)
    assert _new_offset(c, EVENTS) is None
    assert _new_offset(c, EVENTS) is None
    assert c._thread.seeks == [(EVENTS, 0)]


def test_recorded_gaps_are_not_filled_into_the_run() -> None:
    c = StandIn()
    c._committed_offset[EVENTS] = 3
    c._gap[EVENTS] = object()  # Faust's interval tree of "gaps"
    c.ack(EVENTS, 3, 4, 9, 10)
    assert _new_offset(c, EVENTS) == 5  # stops at the first missing offset
    assert EVENTS not in c._gap


def test_offsets_below_the_committed_one_are_forgotten() -> None:
    c = StandIn()
    c._committed_offset[EVENTS] = 7
    c.ack(EVENTS, 5, 6)
    assert _new_offset(c, EVENTS) is None
    assert c._acked[EVENTS] == [] and c._thread.seeks == []


def test_a_partition_never_committed_starts_from_its_earliest_offset() -> None:
    fresh, committed = TP("events", 1), TP("events", 2)
    c = StandIn({fresh: None, committed: 40, CHANGELOG: None})
    c._earliest[fresh] = 0
    c._read_offset[fresh] = 684  # where dropped fetches had left it
    asyncio.run(perform_seek(c))
    assert c._thread.seeks == [(fresh, 0)]  # the changelog is left to table recovery
    assert c._read_offset[fresh] is None and c._read_offset[committed] == 40
    assert c._committed_offset[committed] == 40
    # and its first commit must start at that earliest offset
    c.ack(fresh, 1, 2)
    assert _new_offset(c, fresh) is None
    c.ack(fresh, 0)
    assert _new_offset(c, fresh) == 3


def test_a_seek_runs_in_the_consumer_thread_before_what_is_asked_of_it_next() -> None:
    # aiokafka is not thread-safe: a seek made from the worker's thread raced the
    # consumer thread's fetched_records (KeyError, fetcher crashed)
    loop = asyncio.new_event_loop()
    consumer_thread = threading.Thread(target=loop.run_forever, daemon=True)
    consumer_thread.start()
    try:
        c = StandIn()
        calls: list[tuple[str, Any, int | None]] = []

        def seek(tp: TP, offset: int) -> None:
            calls.append(("seek", threading.current_thread(), offset))

        c._thread.seek = seek  # type: ignore[method-assign]
        c._thread.thread_loop = loop
        faust_compat.read_again(c, EVENTS, 7)
        # what Faust's call_thread does next: a request queued on the consumer's loop
        asked = asyncio.run_coroutine_threadsafe(_record(calls, "next request"), loop)
        asked.result(timeout=5)
        assert calls == [("seek", consumer_thread, 7), ("next request", consumer_thread, None)]
        assert c._read_offset[EVENTS] == 7
    finally:
        loop.call_soon_threadsafe(loop.stop)
        consumer_thread.join(timeout=5)
        loop.close()
    # a consumer whose thread has stopped: nothing to read again, and no error
    c._reftrack_repaired.clear()
    faust_compat.read_again(c, EVENTS, 8)
    assert [name for name, _, _ in calls] == ["seek", "next request"]


async def _record(calls: list[tuple[str, Any, int | None]], name: str) -> None:
    calls.append((name, threading.current_thread(), None))


def test_a_retained_log_starts_where_its_earliest_offset_is() -> None:
    fresh = TP("events", 3)
    c = StandIn({fresh: None})
    c._earliest[fresh] = 500  # older messages deleted by retention
    asyncio.run(perform_seek(c))
    assert c._thread.seeks == [(fresh, 500)]
    c.ack(fresh, 500, 501)
    assert _new_offset(c, fresh) == 502


@given(
    start=st.integers(0, 50),
    processed=st.sets(st.integers(0, 120), max_size=60),
)
def test_a_commit_never_covers_an_unprocessed_offset(start: int, processed: set[int]) -> None:
    c = StandIn()
    c._committed_offset[EVENTS] = start
    c.ack(EVENTS, *sorted(processed))
    offset = _new_offset(c, EVENTS)
    if offset is None:
        assert start not in processed
    else:
        assert all(o in processed for o in range(start, offset))
        assert offset not in processed


@pytest.mark.parametrize("committed", [None, 0])
def test_without_a_start_the_first_run_is_committed(committed: int | None) -> None:
    # before any seek (no starting point known) Faust's behaviour, minus the gaps
    c = StandIn()
    c._committed_offset[EVENTS] = committed
    c.ack(EVENTS, 0, 1, 2, 5)
    assert _new_offset(c, EVENTS) == 3


# -- the tracker's guard: each partition processed in offset order, nothing skipped ------


class Sequencer:
    """The attributes Tracker._in_sequence uses."""

    def __init__(self, resume: dict[int, int | None]) -> None:
        from streams.metrics import Metrics

        self._next_offset: dict[int, int | None] = {}
        self._held: dict[int, Any] = {}
        self._again: set[int] = set()
        self.metrics = Metrics()
        self.tracked_topic = "tracked"
        self.resume_offset = lambda partition: resume.get(partition)
        self.asked: list[tuple[int, int]] = []
        self.read_again = lambda partition, offset: self.asked.append((partition, offset))

    def _first_available(self, number: int, expected: int, offset: int) -> int:
        from streams.tracker import Tracker

        return Tracker._first_available(self, number, expected, offset)  # type: ignore[arg-type]

    def run(self, *events: Any) -> list[tuple[int, int]]:
        from streams.tracker import Tracker

        kept = Tracker._in_sequence(self, list(events))  # type: ignore[arg-type]
        return [(e.message.partition, e.message.offset) for e in kept]


def event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, acked=False))


def test_events_continuing_the_sequence_are_kept_in_offset_order() -> None:
    s = Sequencer({0: 10, 1: None})
    assert s.run(event(0, 11), event(1, 7), event(0, 10), event(1, 8)) == [
        (0, 10),
        (0, 11),
        (1, 7),
        (1, 8),
    ]
    assert s._next_offset == {0: 12, 1: 9} and s.asked == []


def test_an_event_past_a_missing_offset_is_held_back_unacknowledged_and_read_again() -> None:
    s = Sequencer({0: 0})
    late = [event(0, 87), event(0, 88)]
    assert s.run(*late, event(0, 0)) == [(0, 0)]
    assert all(e.message.acked for e in late)  # Faust will not commit them
    assert s.asked == [(0, 1)] and s._next_offset[0] == 1
    assert s.metrics.total(s.metrics.tracker_out_of_sequence) == 2
    # read again in order, they are kept
    assert s.run(event(0, 1), event(0, 2)) == [(0, 1), (0, 2)]


def test_redelivered_offsets_below_the_sequence_are_kept() -> None:
    # already processed: the state and the windows recognise them (idempotent)
    s = Sequencer({0: 5})
    assert s.run(event(0, 5), event(0, 6)) == [(0, 5), (0, 6)]
    assert s._again == set()
    again, new = event(0, 5), event(0, 7)
    assert s.run(again, new) == [(0, 5), (0, 7)]
    assert s._next_offset[0] == 8
    # the one read again is marked, so it is not counted a second time
    assert s._again == {id(again)}


def test_a_copy_fetched_twice_in_one_batch_is_counted_once() -> None:
    # a stale fetch and the read again after a seek back can bring the same offset twice
    s = Sequencer({0: 5})
    first, second = event(0, 5), event(0, 5)
    assert s.run(first, second, event(0, 6)) == [(0, 5), (0, 5), (0, 6)]
    assert s._again == {id(second)}


def test_offsets_below_the_resume_point_were_processed_by_the_committing_owner() -> None:
    s = Sequencer({0: 10})
    stale = event(0, 8)
    assert s.run(stale, event(0, 10)) == [(0, 8), (0, 10)]
    assert s._again == {id(stale)}


def test_offsets_the_broker_no_longer_has_are_given_up_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # committed 10, but retention deleted up to 499 while nobody consumed the partition:
    # reading again from 10 keeps answering from 500
    import streams.tracker

    s = Sequencer({0: 10})
    assert s.run(event(0, 520), event(0, 521)) == []
    assert s.run(event(0, 500)) == []  # still within the grace period
    monkeypatch.setattr(streams.tracker, "GONE_AFTER_SECONDS", 0.0)
    assert s.run(event(0, 501)) == []  # continue from the smallest offset it answered
    assert s._next_offset[0] == 500 and s.asked[-1] == (0, 500)
    assert s.run(event(0, 500), event(0, 501)) == [(0, 500), (0, 501)]


def test_a_partition_still_waiting_is_asked_for_again_until_the_sequence_moves() -> None:
    from streams.tracker import Tracker

    s = Sequencer({0: 3})
    assert s.run(event(0, 9)) == []
    Tracker.retry_held(s)  # type: ignore[arg-type]
    assert s.asked == [(0, 3), (0, 3)]
    assert s.run(event(0, 3)) == [(0, 3)]
    Tracker.retry_held(s)  # type: ignore[arg-type]
    assert s.asked == [(0, 3), (0, 3)] and s._held == {}


def test_faust_read_offsets_never_make_its_fetch_loop_drop_a_message() -> None:
    # Faust's loop drops a fetched message when `offset < read_offset[tp]`; None never does
    offsets = faust_compat.NoReadOffsets()
    offsets[EVENTS] = 5000
    assert offsets[EVENTS] is None and offsets.get(EVENTS) == 5000
    offsets.update({EVENTS: 7})
    assert offsets[EVENTS] is None and EVENTS in offsets


# -- the fetch loop's delivery (faust_compat._deliver) ---------------------------------


class Flow(Service):
    """What _deliver uses of Faust's consumer: its flow switch and its stopped and
    crashed events (a mode Service's)."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


def count_tasks() -> list[int]:
    """Make the running loop count the tasks created from now on (in the list's one item)."""
    made = [0]
    loop = asyncio.get_running_loop()

    def factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made[0] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    return made


def test_a_delivery_that_need_not_wait_runs_at_once_without_a_task() -> None:
    delivered: list[int] = []

    async def put(n: int) -> None:
        delivered.append(n)

    async def main() -> int:
        flow = Flow()
        made = count_tasks()
        for n in range(3):
            assert await faust_compat._deliver(flow, put(n))
        return made[0]

    assert asyncio.run(main()) == 0
    assert delivered == [0, 1, 2]


def test_a_delivery_that_waits_finishes_once_its_buffer_has_room() -> None:
    """A full stream buffer: the rest of the delivery waits for room, picks up the value
    the queue gives it and completes."""

    async def main() -> list[Any]:
        flow = Flow()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(0)
        got: list[Any] = []

        async def put(n: int) -> None:
            await buffer.put(n)
            got.append(("put", n))

        async def agent() -> None:
            await asyncio.sleep(0.01)
            got.append(("took", buffer.get_nowait()))

        taker = asyncio.create_task(agent())
        assert await faust_compat._deliver(flow, put(1))
        await taker
        got.append(("left", buffer.get_nowait()))
        return got

    assert asyncio.run(main()) == [("took", 0), ("put", 1), ("left", 1)]


def test_waiting_deliveries_share_one_watch_of_the_flow() -> None:
    """Faust raced every waiting delivery in wait_first (four tasks each); here the tasks
    made do not grow with the number of deliveries that wait."""

    async def main(deliveries: int) -> tuple[int, list[int]]:
        flow = Flow()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(-1)
        taken: list[int] = []

        async def agent() -> None:
            while len(taken) <= deliveries:
                taken.append(await buffer.get())
                await asyncio.sleep(0)

        made = count_tasks()
        taker = asyncio.create_task(agent())
        for n in range(deliveries):
            assert await faust_compat._deliver(flow, buffer.put(n))
        await taker
        faust_compat._stop_flow_watch(flow)
        return made[0], taken

    made, taken = asyncio.run(main(50))
    assert taken == list(range(-1, 50))  # every one delivered, in order
    assert made <= 5  # the agent, the watch and its three waits: not 4 per delivery


def test_a_waiting_delivery_is_abandoned_when_the_consumer_stops() -> None:
    async def main() -> tuple[bool, int]:
        flow = Flow()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(0)

        async def stop() -> None:
            await asyncio.sleep(0.01)
            flow._stopped.set()

        stopper = asyncio.create_task(stop())
        delivered = await faust_compat._deliver(flow, buffer.put(1))
        await stopper
        return delivered, buffer.qsize()

    assert asyncio.run(main()) == (False, 1)


def test_a_cancelled_fetch_loop_cancels_its_waiting_delivery() -> None:
    async def main() -> list[str]:
        flow = Flow()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(0)
        seen: list[str] = []

        async def put() -> None:
            try:
                await buffer.put(1)
            finally:
                seen.append("put ended")

        loop = asyncio.create_task(faust_compat._deliver(flow, put()))
        await asyncio.sleep(0.01)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        seen.append(f"buffer holds {buffer.qsize()}, {len(buffer._putters)} waiting")  # type: ignore[attr-defined]
        return seen

    assert asyncio.run(main()) == ["put ended", "buffer holds 1, 0 waiting"]


def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    """As in Faust: a rebalance (flow suspended) stops a delivery stuck on a full
    buffer; the delivery is cancelled, and its cleanup runs."""

    async def main() -> list[str]:
        flow = Flow()
        buffer: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        buffer.put_nowait(0)
        seen: list[str] = []

        async def put(n: int) -> None:
            try:
                await buffer.put(n)
                seen.append("put")
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        async def rebalance() -> None:
            await asyncio.sleep(0.01)
            flow.suspend_flow.set()

        suspender = asyncio.create_task(rebalance())
        assert not await faust_compat._deliver(flow, put(1))  # not delivered: read again
        await suspender
        await asyncio.sleep(0)  # let the cancelled delivery unwind
        seen.append(f"buffer holds {buffer.qsize()}")
        return seen

    assert asyncio.run(main()) == ["cancelled", "buffer holds 1"]


def test_a_delivery_while_suspended_is_not_delivered() -> None:
    delivered: list[int] = []

    async def put(n: int) -> None:
        await asyncio.sleep(0.01)
        delivered.append(n)

    async def main() -> None:
        flow = Flow()
        flow.suspend_flow.set()
        assert not await faust_compat._deliver(flow, put(1))
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert delivered == []


@pytest.mark.parametrize("waits", [False, True])
def test_a_failing_delivery_raises_in_the_fetch_loop(waits: bool) -> None:
    async def put() -> None:
        if waits:
            await asyncio.sleep(0.01)
        raise ValueError("cannot decode")

    async def main() -> None:
        await faust_compat._deliver(Flow(), put())

    with pytest.raises(ValueError, match="cannot decode"):
        asyncio.run(main())


# -- fetched but not delivered (faust_compat.getmany, _read_undelivered) -----------------


class Fetching(StandIn):
    """What getmany uses of Faust's consumer: one fetch's records, the flow switch, the
    app's generation and the partitions it may hand out."""

    def __init__(self, records: dict[TP, list[int]], active: set[TP] | None = None) -> None:
        from faust.transport.utils import DefaultSchedulingStrategy

        super().__init__()
        self.records = {
            tp: [SimpleNamespace(offset=o) for o in offsets] for tp, offsets in records.items()
        }
        self.active = set(records) if active is None else active
        self.flow_active = True
        self.should_stop = False
        self._buffered_partitions: set[TP] = set()
        self._reftrack_undelivered: dict[TP, tuple[int, str, int]] = {}
        self.scheduler = DefaultSchedulingStrategy()
        self.app.consumer_generation_id = 1
        self.app.monitor = SimpleNamespace(track_tp_end_offset=lambda tp, offset: None)

    async def _wait_next_records(self, timeout: float) -> Any:
        return self.records, self.active

    def _to_message(self, tp: TP, record: Any) -> Any:
        return record.offset

    def highwater(self, tp: TP) -> int:
        return 0

    def fetch(self, stop_after: int | None = None, on_each: Any = None) -> list[tuple[TP, int]]:
        async def main() -> list[tuple[TP, int]]:
            got: list[tuple[TP, int]] = []
            async for tp, offset in faust_compat.getmany(self, timeout=1.0):
                got.append((tp, offset))
                if on_each is not None:
                    on_each(self, got)
                if stop_after is not None and len(got) == stop_after:
                    break
            return got

        return asyncio.run(main())


OTHER = TP("events", 1)


def test_a_fetch_handed_out_whole_leaves_nothing_to_read_again() -> None:
    c = Fetching({EVENTS: [5, 6, 7], OTHER: [1, 2]})
    got = c.fetch()
    assert sorted(got) == [(EVENTS, 5), (EVENTS, 6), (EVENTS, 7), (OTHER, 1), (OTHER, 2)]
    assert c._reftrack_undelivered == {}


def test_records_left_when_a_rebalance_begins_are_noted_from_the_first_per_partition() -> None:
    def rebalance_after_three(c: Fetching, got: list[Any]) -> None:
        if len(got) == 3:
            c.app.consumer_generation_id = 2

    c = Fetching({EVENTS: [5, 6, 7, 8], OTHER: [1, 2, 3]})
    got = c.fetch(on_each=rebalance_after_three)
    assert len(got) == 3
    first_missing = {
        tp: min(o for o in offsets if (tp, o) not in got)
        for tp, offsets in {EVENTS: [5, 6, 7, 8], OTHER: [1, 2, 3]}.items()
    }
    assert {tp: note[0] for tp, note in c._reftrack_undelivered.items()} == first_missing
    assert {note[1] for note in c._reftrack_undelivered.values()} == {"a rebalance began"}


def test_records_left_when_the_flow_stops_are_noted() -> None:
    def stop_flow(c: Fetching, got: list[Any]) -> None:
        c.flow_active = False

    c = Fetching({EVENTS: [5, 6, 7]})
    assert c.fetch(on_each=stop_flow) == [(EVENTS, 5)]
    assert c._reftrack_undelivered == {EVENTS: (6, "the flow stopped", 0)}


def test_records_of_a_paused_partition_are_noted_and_the_others_handed_out() -> None:
    c = Fetching({EVENTS: [5, 6], OTHER: [1, 2]}, active={OTHER})
    assert c.fetch() == [(OTHER, 1), (OTHER, 2)]
    assert c._reftrack_undelivered == {EVENTS: (5, "its partition was not active", 0)}
    # a partition whose stream buffer is full is still handed out (as in Faust)
    c = Fetching({EVENTS: [5, 6]}, active=set())
    c._buffered_partitions.add(EVENTS)
    assert c.fetch() == [(EVENTS, 5), (EVENTS, 6)]
    assert c._reftrack_undelivered == {}


def test_records_left_when_the_fetch_loop_stops_taking_them_are_noted() -> None:
    c = Fetching({EVENTS: [5, 6, 7]})
    assert c.fetch(stop_after=1) == [(EVENTS, 5)]
    assert c._reftrack_undelivered == {EVENTS: (6, "the fetch loop stopped", 0)}


def test_undelivered_partitions_are_sought_back_to_their_first_undelivered_offset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Fetching({})
    faust_compat._not_delivered(c, EVENTS, 9, "the flow stopped")
    faust_compat._not_delivered(c, EVENTS, 7, "a rebalance began")  # the first one counts
    faust_compat._not_delivered(c, EVENTS, 8, "the flow stopped")
    faust_compat._not_delivered(c, CHANGELOG, 3, "its partition was not active")
    with caplog.at_level("INFO", logger="streams.faust_compat"):
        faust_compat._read_undelivered(c)
    assert c._thread.seeks == [(EVENTS, 7)]  # changelogs: recovery positions them itself
    assert c._reftrack_undelivered == {}
    assert "events/0: fetched messages from offset 7 were not delivered (a rebalance began)" in (
        caplog.text
    )
    faust_compat._read_undelivered(c)
    assert c._thread.seeks == [(EVENTS, 7)]


def test_a_stopped_consumer_thread_does_not_break_the_fetch_loop_at_shutdown() -> None:
    class ClosedLoop:
        def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
            raise RuntimeError("Event loop is closed")

    c = Fetching({})
    c._thread.thread_loop = ClosedLoop()
    faust_compat._not_delivered(c, EVENTS, 7, "the fetch loop stopped")
    faust_compat._read_undelivered(c)  # does not raise
    assert c._reftrack_undelivered == {}


def test_a_note_made_before_the_seek_to_the_committed_offsets_is_void() -> None:
    # noted at 500, then a rebalance ends with perform_seek to the committed 450: seeking
    # to 500 now would skip 450-499
    c = Fetching({})
    c._broker_committed = {EVENTS: 450}
    faust_compat._not_delivered(c, EVENTS, 500, "its partition was not active")
    asyncio.run(perform_seek(c))
    faust_compat._read_undelivered(c)
    assert c._thread.seeks == [] and c._reftrack_undelivered == {}
    # a note made after it stands, and replaces the void one
    faust_compat._not_delivered(c, EVENTS, 600, "its partition was not active")
    faust_compat._read_undelivered(c)
    assert c._thread.seeks == [(EVENTS, 600)]


# -- a hole at the end of a partition (Tracker.retry_lost) --------------------------------


class Tail(Sequencer):
    """The attributes Tracker.retry_lost uses, on top of the sequencer's."""

    def __init__(self, resume: dict[int, int | None], fetched: dict[int, int]) -> None:
        super().__init__(resume)
        self._owned = {number: object() for number in resume}
        self._quiet: dict[int, Any] = {}
        self._lock = asyncio.Lock()
        self.fetched = fetched
        self.waiting: dict[int, int] = {}
        self.fetched_to = lambda partition: self.fetched.get(partition)
        self.waiting_in_stream = lambda partition: self.waiting.get(partition, 0)

    def _expected(self, number: int) -> int | None:
        from streams.tracker import Tracker

        return Tracker._expected(self, number)  # type: ignore[arg-type]

    def check(self, now: float) -> list[tuple[int, int]]:
        from streams.tracker import Tracker

        Tracker.retry_lost(self, now)  # type: ignore[arg-type]
        return self.asked


def test_a_partition_fetched_past_what_the_tracker_got_is_read_again_after_a_quiet_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streams.tracker import LOST_AFTER_SECONDS

    t = Tail({0: 10, 1: 4}, fetched={0: 2048, 1: 4})
    assert t.run(event(0, 10), event(0, 11)) == [(0, 10), (0, 11)]
    assert t.check(100.0) == []  # first seen: the quiet while starts
    assert t.check(100.0 + LOST_AFTER_SECONDS - 1) == []
    with caplog.at_level("WARNING", logger="streams.tracker"):
        assert t.check(100.0 + LOST_AFTER_SECONDS) == [(0, 12)]
    assert "tracked/0: fetched to offset 2048, but nothing from 12 reached the tracker" in (
        caplog.text
    )
    assert t.metrics.total(t.metrics.tracker_reread) == 1
    # not again at once: the read again gets as long to bring the events
    assert t.check(100.0 + LOST_AFTER_SECONDS + 1) == [(0, 12)]
    assert t.check(100.0 + 2 * LOST_AFTER_SECONDS) == [(0, 12), (0, 12)]
    # once events come, the sequence moves and the partition is quiet no more
    assert t.run(event(0, 12)) == [(0, 12)]
    assert t.check(100.0 + 3 * LOST_AFTER_SECONDS) == [(0, 12), (0, 12)]
    assert 0 in t._quiet and t._quiet[0][0] == 13


def test_a_partition_never_delivered_since_its_assignment_is_read_again_from_its_resume() -> None:
    t = Tail({0: 10}, fetched={0: 50})
    t.check(0.0)
    assert t.check(60.0) == [(0, 10)]


@pytest.mark.parametrize(
    "case", ["caught up", "fetch unknown", "events in the stream", "held back", "batch running"]
)
def test_a_partition_that_is_not_lost_is_left_alone(case: str) -> None:
    t = Tail({0: 10}, fetched={0: 10 if case == "caught up" else 50})
    if case == "fetch unknown":
        t.fetched = {}
    if case == "events in the stream":
        t.waiting[0] = 3  # delivered, not yet taken: slow, not lost
    if case == "held back":
        assert t.run(event(0, 30)) == []  # retry_held asks for those
        t.asked.clear()

    async def check_while_locked() -> list[tuple[int, int]]:
        async with t._lock:
            t.check(0.0)
            return t.check(60.0)

    if case == "batch running":
        assert asyncio.run(check_while_locked()) == []
    else:
        t.check(0.0)
        assert t.check(60.0) == []
