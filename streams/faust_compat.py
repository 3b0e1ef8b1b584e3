"""Faust quirks we work around, each with the reason.

Faust's consumer (faust-streaming 0.15) can lose stream messages around a rebalance or
a restart, and the multi-worker and SIGKILL tests caught it doing so. Three holes, which
together explain every loss those tests saw:

1. **Partitions with no committed offset skip their backlog.** After table recovery
   Faust resumes the stream partitions, then `perform_seek` moves each back to its
   committed offset: messages fetched meanwhile, while the flow was suspended, were
   dropped unprocessed, and the seek makes the consumer read them again. But aiokafka's
   `seek_to_committed` only seeks partitions whose committed offset is above 0. A
   partition nobody had committed yet (its last owner was killed before its first
   commit) kept the position those dropped fetches had moved it to, and its new owner
   started hundreds of messages in (tracked partitions resumed at 684, 813 and 858 with
   nothing committed).
2. **Commits may pass a message that was never processed.** Faust commits the run of
   acknowledged offsets that follows the committed one, but it tolerates exactly one
   missing offset at the head of the run (`min(acked) - committed > 1`) and none at all
   when the committed offset is 0 or unknown; it also fills recorded "gaps" into the run.
   A message dropped in the suspended flow and never read again (Faust skips re-fetched
   messages below the offset it last read) is then committed past: lost for good. The
   exactly-once test once counted 12,008 of 12,009 events this way.
3. **Nothing repairs a hole** once messages behind it are processed: the partition is
   stuck below the hole, or (2) commits past it. And Faust's fetch loop drops every
   message below the offset it last read, so when a stale message is delivered after a
   seek back, the messages the seek was for are dropped again.

The fixes, installed by `install_consumer_fixes()`:

- The fetch loop delivers what the client returns (`NoReadOffsets`): a seek back is
  always followed by the messages it asked for.
- `perform_seek` also seeks every stream partition without a committed offset to its
  earliest offset (what `auto_offset_reset="earliest"` promises) and remembers that
  offset as the partition's starting point.
- A commit only ever covers a contiguous run of processed messages that starts exactly
  at the committed offset (or at the starting point): never past a missing one, never
  by filling gaps. reftrack's stream topics are neither compacted nor transactional, so
  their offsets have no real gaps.
- When processed messages sit above a missing one, the partition is sought back to the
  first missing offset (at most every two seconds), so the message is read again; the
  pipeline is idempotent, so the messages after it that are read twice count once.
- The tracker, whose rate windows need each partition in offset order, holds back (and
  leaves unacknowledged) any event that does not continue its partition's sequence from
  `resume_offset`, and asks for the partition to be read again from the first missing
  offset (`read_again`; Tracker._in_sequence).

- Every seek these fixes make runs in the consumer's own thread (`_seek_in_thread`):
  aiokafka is not thread-safe, and a seek from the worker's thread once crashed the
  fetcher.
- A fetched message the fetch loop does not hand to the streams (`getmany` stops when a
  rebalance begins, or drops the records of a partition paused or revoked meanwhile; a
  delivery is abandoned when the flow is suspended) is read again: the partition is
  sought back to the first such offset after the fetch (`_read_undelivered`), and the
  drop is logged. Faust dropped them without a word and relied on the seek that ends a
  rebalance to fetch them again.
- The tracked topic's messages go from the fetch loop to the tracker's lane
  (streams/lane.py) instead of through Faust's conductor and a stream; a message the
  lane does not take (the flow suspended, the consumer stopped) is noted like any other
  undelivered one, and the lane's messages count as waiting in the stream
  (`waiting_in_stream`, `stream_buffers`).

Table changelog partitions are left alone: recovery positions them itself and Faust
never commits them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING, Consumer
from faust.types import TP
from faust.utils.functional import consecutive_numbers

from sinks.topic_sink import fetch_position

log = logging.getLogger(__name__)

REPAIR_INTERVAL_SECONDS = 2.0


def _tp(tp: Any) -> TP:
    return TP(tp.topic, tp.partition)


async def perform_seek(self: Any) -> None:
    """Seek every assigned stream partition to where processing must resume: its committed
    offset, or its earliest offset if none was ever committed (Faust skipped those)."""
    self._reftrack_seeks += 1  # fetched-but-undelivered notes from before are void now
    committed = {_tp(tp): offset for tp, offset in (await self.seek_to_committed()).items()}
    changelogs = set(self.app.tables.changelog_topics)
    fresh = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
    earliest = await self.earliest_offsets(*fresh) if fresh else {}
    starts: dict[TP, int] = self._reftrack_start
    for tp in fresh:
        start = int(earliest.get(tp) or 0)
        self._seek_in_thread(tp, start)
        starts[tp] = start
    for tp in list(starts):
        if committed.get(tp) or tp not in committed:  # committed since, or not assigned
            del starts[tp]
    # Faust's own bookkeeping, unchanged.
    self._read_offset.update(
        {
            tp: offset if offset is not None and offset >= 0 else None
            for tp, offset in committed.items()
        }
    )
    self._committed_offset.update(
        {tp: offset if offset else None for tp, offset in committed.items() if offset is not None}
    )
    if fresh:
        log.info(
            "no committed offset for %d stream partitions: reading them from the earliest offset",
            len(fresh),
        )


def _seek_in_thread(self: Any, tp: TP, offset: int) -> None:
    """Have the consumer's own thread seek `tp` to `offset`, before anything asked of that
    thread after this call (Faust's `call_thread` requests queue behind it), without
    waiting for it.

    Faust runs the aiokafka consumer in a thread of its own, and aiokafka is not
    thread-safe: seeking from the worker's thread (as Faust's own `seek` does) raced the
    consumer thread's `fetched_records`, which then failed on `del self._records[tp]`
    with a KeyError; the fetcher crashed and took the worker down (seen once in the
    multi-worker test)."""
    thread = self._thread
    thread.thread_loop.call_soon_threadsafe(_seek_quietly, thread, tp, offset)
    self._read_offset[tp] = offset if offset else None


def _seek_quietly(thread: Any, tp: TP, offset: int) -> None:
    try:
        thread.seek(tp, offset)
    except Exception as exc:  # not assigned any more: its next owner starts there anyway
        log.info("could not seek %s/%s to %d: %s", tp.topic, tp.partition, offset, exc)


def _new_offset(self: Any, tp: TP) -> int | None:
    """The offset to commit for `tp`: the end of the contiguous run of processed messages
    that starts at the committed offset (or the starting point); None if there is none."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    self._gap.pop(tp, None)  # real gaps do not occur in reftrack's stream topics
    committed = self._committed_offset[tp]
    start = committed if committed is not None else self._reftrack_start.get(tp)
    if start is not None:
        done = bisect_left(acked, start)
        if done:  # already committed: forget them
            self._acked_index[tp].difference_update(acked[:done])
            del acked[:done]
        if not acked:
            return None
        if acked[0] != start:
            _read_again(self, tp, start, acked[0])
            return None
    run = next(consecutive_numbers(acked))
    del acked[: len(run)]
    self._acked_index[tp].difference_update(run)
    return int(run[-1]) + 1


def resume_offset(consumer: Any, tp: TP) -> int | None:
    """Where `consumer` resumed `tp` at its last assignment: the committed offset, or the
    earliest one if none was committed; None if unknown."""
    committed = consumer._committed_offset.get(tp)
    if committed:
        return int(committed)
    start = consumer._reftrack_start.get(tp)
    return None if start is None else int(start)


def streams_running(app: Any) -> bool:
    """Faust's streams run: the tables are recovered and no rebalance is under way (Faust
    sets `recovery.completed` once, at the first recovery, and never clears it). Until
    then the stream partitions are held back, and where they resume is not known yet."""
    return bool(app.tables.recovery.completed.is_set()) and not app.rebalancing


def fetched_to(consumer: Any, tp: TP) -> int | None:
    """The next offset of `tp` the aiokafka client under `consumer` will fetch (what it
    has handed to Faust is below it); None if unknown (not assigned, not started)."""
    try:
        client = consumer._thread._consumer
    except AttributeError:  # the consumer thread has not started
        return None
    if client is None:
        return None
    try:
        return fetch_position(client, TopicPartition(tp.topic, tp.partition))
    except Exception:  # a change of client internals must not break the caller
        return None


def waiting_in_stream(app: Any, tp: TP) -> int:
    """How many events of `tp` wait in the buffers of the streams reading its topic, or
    in the tracker's lane (delivered by the consumer, not yet taken by an agent)."""
    lane = getattr(app, "reftrack_lane", None)
    n = lane.waiting(tp.partition) if lane is not None and lane.topic == tp.topic else 0
    for queue in _stream_queues(app, tp.topic):
        for event in list(queue._queue):
            message = getattr(event, "message", None)
            if message is not None and message.partition == tp.partition:
                n += 1
    return n


def stream_buffers(app: Any, topic: str) -> list[int]:
    """The size of each stream buffer of `topic` (one per channel Faust delivers to:
    more than the agent's streams means some buffer has no reader), then the tracker's
    lane's if it reads `topic`."""
    sizes = [queue.qsize() for queue in _stream_queues(app, topic)]
    lane = getattr(app, "reftrack_lane", None)
    if lane is not None and lane.topic == topic:
        sizes.append(len(lane))
    return sizes


def _stream_queues(app: Any, topic: str) -> list[Any]:
    queues = []
    for channel in list(app.topics):
        queue = getattr(channel, "_queue", None)
        if queue is not None and topic in getattr(channel, "topics", ()):
            queues.append(queue)
    return queues


def read_again(consumer: Any, tp: TP, offset: int) -> None:
    """Make `consumer` read `tp` again from `offset` (a message there was skipped)."""
    _read_again(consumer, tp, offset, None)


def _read_again(self: Any, tp: TP, missing: int, first_done: int | None) -> None:
    """Messages above `missing` were delivered but it was not: read from it again."""
    repaired: dict[TP, float] = self._reftrack_repaired
    now = time.monotonic()
    if now - repaired.get(tp, float("-inf")) < REPAIR_INTERVAL_SECONDS:
        return
    repaired[tp] = now
    if first_done is not None:
        log.warning(
            "%s/%s: offset %d was never processed but offsets from %d were; reading again",
            tp.topic,
            tp.partition,
            missing,
            first_done,
        )
    try:
        self._seek_in_thread(tp, missing)
    except RuntimeError as exc:  # the consumer's thread has stopped: nothing to read again
        log.info("could not seek %s/%s back to %d: %s", tp.topic, tp.partition, missing, exc)


class NoReadOffsets(dict):  # type: ignore[type-arg]
    """Faust's `_read_offset` map, made to answer None: its fetch loop then delivers every
    message the client returns instead of dropping those below the offset it last read.

    That guard only ever dropped messages the consumer had been sought back to read
    again (after a rebalance, or by `read_again`), and a stale message delivered after
    the seek moved it past them: the re-read messages were dropped, and the partition
    stalled below them. Offsets still go in (Faust writes them); they are never read.
    aiokafka itself never returns a record twice without a seek, and every consumer of
    reftrack's topics is idempotent for the messages a seek re-reads."""

    def __getitem__(self, key: Any) -> None:
        return None


async def _drain_messages(self: Any, fetcher: Any) -> None:
    """Faust's fetch loop (`Consumer._drain_messages`), with three changes.

    - Each message is handed to the streams by `_deliver` instead of a `wait_first` of
      its own: Faust made four tasks and an `asyncio.wait` per message, about 100 µs,
      the largest single cost of a reftrack worker after its own work (two passes per
      event then; docs/performance.md). A delivery that must wait for room in a stream's
      buffer races one shared watch of the flow (`_flow_watch`), not tasks of its own.
    - Every message the client returns is delivered (see `NoReadOffsets`), so the
      read-offset check and its gap bookkeeping are gone.
    - A message that was fetched but not delivered is read again (`_read_undelivered`).

    - The tracked topic's messages go to the tracker's lane (`_to_lane`,
      streams/lane.py), not through the conductor to a stream.

    The rest is Faust's: the same stop conditions, periodic yield and commit cadence.
    """
    callback = self.callback
    lane = getattr(self.app, "reftrack_lane", None)  # the tracker's (streams/lane.py)
    lane_topic = lane.topic if lane is not None else None
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
    commit_every = self._commit_every
    yield_every, num_since_yield = 100, 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)  # getmany may return at once, again and again
            if not self.should_stop:
                async for _tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if message.topic == lane_topic:
                        delivered = await _to_lane(self, lane, message)
                    else:
                        delivered = await _deliver(self, callback(message))
                    if not delivered:
                        _not_delivered(self, message.tp, message.offset, "the flow stopped")
                _read_undelivered(self)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
        _stop_flow_watch(self)


async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
    """Faust's `Consumer.getmany`: one fetch's records, round-robin over partitions, as
    messages. Faust stops handing them out when a rebalance begins (the flow stops, the
    generation changes) and skips those of a partition paused or revoked meanwhile; the records
    left over are gone from the client. Here each partition's first record not handed
    out is noted (`_not_delivered`), so the fetch loop reads it again."""
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:  # as Faust: positions go back to the committed offsets
        try:
            await self.perform_seek()
        except Exception as exc:
            log.warning("could not seek to the committed offsets: %r", exc)
        return
    to_message = self._to_message
    buffered = self._buffered_partitions
    handed: dict[TP, int] = {}  # records taken per partition, handed out or skipped
    reason = ""
    try:
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active:
                reason = "the flow stopped"
                break
            if self.app.consumer_generation_id != generation_id:
                reason = "a rebalance began"
                break
            handed[tp] = handed.get(tp, 0) + 1
            if active_partitions is None or tp in active_partitions or tp in buffered:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                yield tp, to_message(tp, record)
            else:
                _not_delivered(self, tp, record.offset, "its partition was not active")
    finally:
        for tp, taken in records.items():
            n = handed.get(tp, 0)
            if n < len(taken):
                _not_delivered(self, tp, taken[n].offset, reason or "the fetch loop stopped")


def _not_delivered(self: Any, tp: TP, offset: int, reason: str) -> None:
    """Note that the message at `offset` of `tp` was fetched but never reached a stream."""
    pending: dict[TP, tuple[int, str, int]] = self._reftrack_undelivered
    noted = pending.get(tp)
    if noted is None or offset < noted[0] or noted[2] != self._reftrack_seeks:
        pending[tp] = (offset, reason, self._reftrack_seeks)


def _read_undelivered(self: Any) -> None:
    """Seek each partition with a message fetched but not delivered back to the first one,
    so it is fetched again (the client has moved past it). Not if the consumer has been
    sought to the committed offsets since (perform_seek, after a rebalance): that seek
    goes back at least as far, and a seek now could undo it. A partition revoked
    meanwhile is not sought: its next owner starts at the committed offset anyway."""
    pending: dict[TP, tuple[int, str, int]] = self._reftrack_undelivered
    if not pending:
        return
    changelogs = set(self.app.tables.changelog_topics)
    for tp, (offset, reason, seeks) in sorted(pending.items()):
        if tp.topic in changelogs or seeks != self._reftrack_seeks:
            continue  # recovery positions changelogs itself; perform_seek came since
        log.info(
            "%s/%s: fetched messages from offset %d were not delivered (%s); reading again",
            tp.topic,
            tp.partition,
            offset,
            reason,
        )
        try:
            self._seek_in_thread(tp, offset)
        except RuntimeError as exc:  # the consumer's thread has stopped (shutdown)
            log.info("could not seek %s/%s back to %d: %s", tp.topic, tp.partition, offset, exc)
    pending.clear()


async def _deliver(consumer: Any, delivery: Coroutine[Any, Any, Any]) -> bool:
    """Run `delivery` (Faust's callback for one message: put it on its streams' queues)
    as Faust does, racing the flow being suspended, but without tasks: it is run one
    step here, and only if it has to wait (a stream's buffer is full) is the rest driven
    by `_deliver_waiting`. False if the flow was suspended (or the consumer stopped)
    first: the message was not delivered."""
    if consumer.suspend_flow.is_set():
        delivery.close()
        return False
    try:
        awaiting = delivery.send(None)
    except StopIteration:
        return True  # delivered without waiting: the common case
    return await _deliver_waiting(consumer, delivery, awaiting)


async def _deliver_waiting(
    consumer: Any, delivery: Coroutine[Any, Any, Any], awaiting: Any
) -> bool:
    """The rest of a delivery that stopped at `awaiting` (a full stream buffer): driven on
    each time what it waits for is done, racing one watch of the flow (`_flow_watch`).

    Faust raced each such delivery in mode's `wait_first`: four tasks and an
    `asyncio.wait` per message. With the tracker the slowest step, the buffer is full
    most of the time, and that was 3.7 % of a worker's time (py-spy, bench.pipeline
    backlog). If the watch fires first the delivery is cancelled, as Faust's was (a
    queue's `put` withdraws), and the message was not delivered."""
    try:
        while True:
            if awaiting is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                if not awaiting.done():
                    watch = _flow_watch(consumer)
                    await asyncio.wait((awaiting, watch), return_when=asyncio.FIRST_COMPLETED)
                if not awaiting.done():  # suspended or stopped first
                    _cancel(delivery, awaiting)
                    return False
            awaiting = delivery.send(None)
    except StopIteration:
        return True
    except BaseException:  # the delivery failed, or the fetch loop was cancelled
        delivery.close()
        raise


async def _to_lane(consumer: Any, lane: Any, message: Any) -> bool:
    """Hand a tracked message to the tracker's lane, tracked by the consumer as the
    conductor tracks a stream's message (so a rebalance waits for it to be acknowledged).
    A full lane holds the fetch loop back, racing the flow watch as a delivery to a full
    stream buffer does; False if the flow was suspended (or the consumer stopped)
    first, or already was: the message was not delivered."""
    if consumer.suspend_flow.is_set():
        return False
    if lane.full():
        room = lane.room()
        await asyncio.wait((room, _flow_watch(consumer)), return_when=asyncio.FIRST_COMPLETED)
        if not room.done() or consumer.suspend_flow.is_set():
            return False
    consumer.track_message(message)
    lane.put(message)
    return True


def _cancel(delivery: Coroutine[Any, Any, Any], awaiting: Any) -> None:
    """Cancel a delivery waiting on `awaiting`, as a task is cancelled: the future first,
    then CancelledError thrown in, so its cleanup runs."""
    awaiting.cancel()
    try:
        delivery.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        return
    delivery.close()  # it went on waiting: stop it for good


def _flow_watch(consumer: Any) -> asyncio.Future[Any]:
    """One task, shared by every waiting delivery, that ends when the consumer's flow is
    suspended (a rebalance), or it stops or crashes: what Faust's `wait_first` raced
    each delivery against. A new one once it has ended."""
    watch: asyncio.Future[Any] | None = getattr(consumer, "_reftrack_flow_watch", None)
    if watch is None or watch.done():
        watch = consumer._reftrack_flow_watch = asyncio.ensure_future(_flow_stops(consumer))
    return watch


async def _flow_stops(consumer: Any) -> None:
    waits = [
        asyncio.ensure_future(event.wait())
        for event in (consumer.suspend_flow, consumer._stopped, consumer._crashed)
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _stop_flow_watch(consumer: Any) -> None:
    watch = getattr(consumer, "_reftrack_flow_watch", None)
    if watch is not None:
        watch.cancel()
        consumer._reftrack_flow_watch = None


_original_init = Consumer.__init__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    self._read_offset = NoReadOffsets()
    # Where each stream partition without a committed offset is read from (perform_seek),
    # and when each partition was last sought back to a missing message (_read_again).
    self._reftrack_start = {}
    self._reftrack_repaired = {}
    # The first message per partition fetched but not delivered (see getmany), and how
    # many times perform_seek has run (a note made before the last one is void).
    self._reftrack_undelivered = {}
    self._reftrack_seeks = 0


def install_consumer_fixes() -> None:
    """Patch Faust's consumer in this process (idempotent)."""
    Consumer.__init__ = _init  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._seek_in_thread = _seek_in_thread  # type: ignore[attr-defined]
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Consumer.getmany = getmany  # type: ignore[method-assign]
