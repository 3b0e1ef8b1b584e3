"""Tracker: one record per referral, kept in a Faust table keyed `org_id/referral_id`, and
the SLA alerts raised from it.

Events arrive in batches (from the lane: streams/lane.py) and are applied one by one in
offset order per partition, each folded into its referral's state. Flags are judged
against the clock (SPEC §5) to raise or resolve alerts: with the wall (or file) clock
once per touched referral at the end of the batch, and for the referrals whose next
deadline has passed, found in an in-memory deadline index (schemas.deadlines), so a tick
costs in proportion to the referrals that are due; a timer does the same between
batches. With the event-time clock, time moves event by event: before each event the
referrals due by its time are judged, then its own referral is, so a replay gives the
same alerts however it is batched.

At the end of a batch every touched referral is written once (each write costs a
changelog message) and gets one status snapshot on the compacted status topic. Alert
messages are published, and acknowledged by the broker, before the table writes that
record them: after a crash the redelivered events raise the same alert again (same id)
rather than lose it. A snapshot is published even when every event of a referral was a
duplicate, so a crash between the table write and the snapshot is repaired by the
redelivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.types import TP, AppT, EventT, TableT, TopicT

from schemas import jsoncodec
from schemas.alerts import reconcile
from schemas.deadlines import DeadlineIndex
from schemas.errors import ErrorCode
from schemas.events import TrackedEvent
from schemas.flags import judge, next_deadline
from schemas.referral import ReferralState, new_state
from schemas.sla import SlaPolicy
from schemas.snapshot import status_snapshot
from streams.clock import Clock
from streams.deadline_store import DiskDeadlineIndex
from streams.dlq import send_dead_letter
from streams.faust_compat import (
    fetched_to,
    read_again,
    resume_offset,
    streams_running,
    waiting_in_stream,
)
from streams.lane import Lane, feed
from streams.metrics import Metrics
from streams.murmur import partition_for
from streams.publish import Outbox
from streams.table_reads import PartitionReader
from streams.table_writes import ChangelogWrites, acting_for
from streams.windows import WindowCounter

log = logging.getLogger(__name__)

Item = tuple[EventT, TrackedEvent]


@dataclass
class Entry:
    """One referral during a batch: loaded once, changed in place, written once."""

    key: str
    partition: int
    state: ReferralState
    firing: dict[str, int]
    stored_deadline: int | None
    status_before: str | None  # None: not in the table before this batch
    firing_before: dict[str, int]
    now: int = 0
    changed: bool = False
    had_events: bool = False
    # `deadline` and `flags` are those of a judgement of the state as it is, at `now`
    judged: bool = False
    deadline: int | None = None
    flags: list[str] = field(default_factory=list)
    accepted: list[Item] = field(default_factory=list)
    alert_events: list[dict[str, Any]] = field(default_factory=list)


# The deadline index of a partition: in memory, or on disk next to a RocksDB table store
# (streams/deadline_store.py); both answer alike.
Index = DeadlineIndex | DiskDeadlineIndex


@dataclass
class OwnedPartition:
    """What this worker knows about one tracked partition it owns."""

    number: int
    index: Index = field(default_factory=DeadlineIndex)
    watermark: int | None = None  # newest occurred_at seen (the clock in event mode)
    open_by_status: Counter[str] = field(default_factory=Counter)
    firing: Counter[tuple[str, str]] = field(default_factory=Counter)  # (org, rule)


@dataclass
class GaugeChanges:
    """A batch's changes to the open-referral and alert metrics, applied once per label
    set at its end: a labelled metric costs a lookup and a lock per update (about 1 % of
    a busy worker's time, updated per referral)."""

    open_by_status: Counter[str] = field(default_factory=Counter)
    firing: Counter[tuple[str, str]] = field(default_factory=Counter)  # (org, rule)
    raised: Counter[tuple[str, str]] = field(default_factory=Counter)
    resolved: Counter[tuple[str, str]] = field(default_factory=Counter)

    def publish(self, m: Metrics) -> None:
        for status, n in self.open_by_status.items():
            if n:
                m.referrals_open.labels(status).inc(n)
        for labels, n in self.firing.items():
            if n:
                m.alerts_firing.labels(*labels).inc(n)
        for labels, n in self.raised.items():
            m.alerts_raised.labels(*labels).inc(n)
        for labels, n in self.resolved.items():
            m.alerts_resolved.labels(*labels).inc(n)


class _PartitionEvent:
    """Stands in for an event of `partition` when a timer writes the table (Faust routes a
    changelog write to the partition of the current event)."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


def decode_record(value: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """A table value as a dict. The referral table keeps each record as its JSON bytes
    (the changelog's own bytes): in the memory store a decoded dict of a record costs
    several times its ~600 bytes of JSON (issue 7: ≤ 2 KB per open referral), and
    recovery copies changelog bytes without decoding a million records."""
    if isinstance(value, bytes | bytearray | memoryview | str):
        decoded: dict[str, Any] = jsoncodec.loads(value)
        return decoded
    return value


def encode_record(value: dict[str, Any]) -> bytes:
    """The stored (and changelog) bytes of a record: the same JSON the table's json codec
    wrote before, so existing changelogs load unchanged."""
    return jsoncodec.dumps(value)


def load_record(
    value: bytes | str | dict[str, Any],
) -> tuple[ReferralState, dict[str, int], int | None, int]:
    """(state, firing alerts, next deadline, partition) of a stored table value. Values
    written before alerting existed are a bare state: no alerts, no deadline yet."""
    value = decode_record(value)
    if "state" in value:
        return (
            ReferralState.from_dict(value["state"]),
            {k: int(v) for k, v in (value.get("alerts") or {}).items()},
            value.get("deadline"),
            int(value.get("p", -1)),
        )
    return ReferralState.from_dict(value), {}, None, -1


def partition_of(key: str, partitions: int) -> int:
    """The tracked partition of a referral key (Kafka's default partitioner)."""
    return partition_for(key.encode("utf-8"), partitions)


@dataclass
class Tracker:
    table: TableT
    status: TopicT
    dlq: TopicT
    alerts: TopicT
    windows: WindowCounter
    metrics: Metrics
    pseudonym_key: bytes
    tracked_topic: str
    partitions: int
    policy: SlaPolicy = field(default_factory=SlaPolicy.default)
    clock: Clock = field(default_factory=lambda: Clock("wall"))
    # Where the consumer resumed a partition after an assignment (None: unknown), and a
    # request to read a partition again from an offset (streams.faust_compat).
    resume_offset: Callable[[int], int | None] = lambda partition: None
    read_again: Callable[[int, int], None] = lambda partition, offset: None
    # How far the consumer has fetched a partition (its next offset; None: unknown), and
    # how many of its events wait in the lane (streams/lane.py), not yet taken (retry_lost).
    fetched_to: Callable[[int], int | None] = lambda partition: None
    waiting_in_stream: Callable[[int], int] = lambda partition: 0
    # A new, empty deadline index for a partition the tracker takes (see Index).
    new_index: Callable[[int], Index] = lambda partition: DeadlineIndex()
    _owned: dict[int, OwnedPartition] = field(default_factory=dict)
    _next_offset: dict[int, int | None] = field(default_factory=dict)
    _held: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # see _first_available
    _quiet: dict[int, tuple[int, float]] = field(default_factory=dict)  # see retry_lost
    _rebalances: int = 0  # forget() calls: see _ensure_owned
    # ids of this batch's events read again below their partition's sequence (processed
    # before, here or by the owner that committed them; see _in_sequence): counted the
    # first time, not again
    _again: set[int] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # events of the current batch, per label set (see _count_events)
    _processed: Counter[tuple[str, str]] = field(default_factory=Counter)
    _duplicates: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # Every write of the referral and window tables, to wait for before a batch's
        # events are acknowledged (see table_writes.ChangelogWrites).
        # Alerts, snapshots, rate rows and the table writes: one outbox, so one flush
        # sends all that is ready (see _finish for the order that matters).
        self._outbox = Outbox(self.status.app)
        self._writes = ChangelogWrites(self.table, self.windows.table, outbox=self._outbox)
        self._read = PartitionReader(self.table)  # one lookup per read: streams/table_reads.py

    # -- events -----------------------------------------------------------------------

    async def process(self, events: list[EventT]) -> None:
        started = time.perf_counter()
        async with self._lock:
            await self._process(events)
        self.metrics.tracker_batch_events.observe(len(events))
        self.metrics.tracker_batch_seconds.observe(time.perf_counter() - started)

    async def _process(self, events: list[EventT]) -> None:
        self._again.clear()
        try:
            await self._process_in_sequence(self._in_sequence(events))
        finally:
            self._again.clear()

    async def _process_in_sequence(self, events: list[EventT]) -> None:
        by_partition: dict[int, list[Item]] = {}
        for event in events:
            try:
                tracked_event = TrackedEvent.from_json(event.message.value or b"")
            except Exception as exc:
                if id(event) not in self._again:  # dead-lettered when first read
                    await self.reject(event, exc)
                continue
            by_partition.setdefault(event.message.partition, []).append((event, tracked_event))
        while not await self._ensure_owned(set(by_partition)):
            await asyncio.sleep(REBUILD_RETRY_SECONDS)  # let the rebalance go on
        wall_now = 0 if self.clock.event_time else self.clock.now()
        batch: dict[str, Entry] = {}
        for number, items in by_partition.items():
            owned = self._owned[number]
            items.sort(key=lambda item: item[0].message.offset)
            for event, tracked_event in items:
                now = wall_now
                if self.clock.event_time:  # time moves event by event
                    if owned.watermark is None or tracked_event.occurred_at > owned.watermark:
                        owned.watermark = tracked_event.occurred_at
                    now = owned.watermark
                    self._fire_due(owned, now, batch)
                try:
                    self._apply(batch, number, event, tracked_event, now)
                except Exception as exc:  # a bug: keep the event (DLQ), keep the agent
                    log.exception("tracker failed to apply an event")
                    await self.reject(event, exc)
            if not self.clock.event_time:
                self._fire_due(owned, wall_now, batch)
        if not self.clock.event_time:
            # One judgement per referral per batch, after all its events: a backlog
            # arriving together raises no alert its own later events would resolve.
            for entry in batch.values():
                if entry.had_events:
                    self._judge(entry, wall_now)
        await self._finish(batch)
        self._count_events()

    def _count_events(self) -> None:
        """The batch's processed and duplicate events into their counters: one update per
        label set and batch (a labelled counter costs a lookup and a lock per update)."""
        m = self.metrics
        if self._processed:
            for (event_type, source), n in self._processed.items():
                m.events_processed.labels(event_type, source).inc(n)
            m.last_event_processed.set(time.time())
            self._processed.clear()
        for event_type, n in self._duplicates.items():
            m.events_duplicate.labels(event_type).inc(n)
        self._duplicates.clear()

    def _in_sequence(self, events: list[EventT]) -> list[EventT]:
        """The events that continue each partition's sequence, in offset order.

        Rate windows count a redelivered offset at or below a cell's highest as already
        counted (schemas/windows.py), so each partition must be processed in offset order
        with no message skipped. Faust's consumer can deliver a message out of that order
        after a rebalance (streams/faust_compat.py). Such an event, and every later one of
        its partition in the batch, is left unprocessed and unacknowledged (so never
        committed), and the partition is read again from the first offset missing."""
        by_partition: dict[int, list[EventT]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        kept: list[EventT] = []
        for number, items in by_partition.items():
            items.sort(key=lambda event: event.message.offset)
            if number not in self._next_offset:  # first batch since the assignment
                self._next_offset[number] = self.resume_offset(number)
            expected = self._next_offset[number]
            for i, event in enumerate(items):
                offset = event.message.offset
                if expected is not None and offset > expected:
                    first_time = self._held.get(number, (None,))[0] != expected
                    expected = self._first_available(number, expected, offset)
                if expected is not None and offset > expected:
                    for held in items[i:]:
                        held.message.acked = True  # not processed: must not be committed
                    self.metrics.tracker_out_of_sequence.inc(len(items) - i)
                    if first_time:
                        log.warning(
                            "%s/%d: got offset %d while %d was expected; reading again",
                            self.tracked_topic,
                            number,
                            offset,
                            expected,
                        )
                    self.read_again(number, expected)
                    break
                kept.append(event)
                if expected is None or offset >= expected:
                    expected = offset + 1
                    self._held.pop(number, None)  # the sequence moved on
                else:  # below the sequence: processed (and counted) before, here or
                    self._again.add(id(event))  # by the partition's committing owner
            self._next_offset[number] = expected
        return kept

    def sequence_state(self, number: int) -> str:
        """For the stall watch: where the tracker expects partition `number` to go on, and
        whether it holds events back waiting for a missing offset."""
        held = self._held.get(number)
        waiting = (
            f"waiting for offset {held[0]} since {time.monotonic() - held[2]:.0f} s "
            f"(got {held[1]} and later)"
            if held is not None
            else "not waiting for a missing offset"
        )
        return (
            f"tracker expects offset {self._expected(number)}, {waiting}, "
            f"{self.waiting_in_stream(number)} events of it in the lane"
        )

    def _expected(self, number: int) -> int | None:
        """The next offset of partition `number` the tracker needs."""
        if number in self._next_offset:
            return self._next_offset[number]
        return self.resume_offset(number)

    def retry_lost(self, now: float | None = None) -> None:
        """Read a partition again when the consumer has fetched past offsets the tracker
        never got, and nothing of it has come for LOST_AFTER_SECONDS.

        A hole in the middle of a partition shows itself: the next event is out of
        sequence, is held back and the partition is read again (_in_sequence). A hole at
        the end does not: when the messages Faust lost between fetch and stream were the
        last ones written, nothing comes after them, and the partition waits for ever
        (the multi-worker test once stalled so after a rebalance, with the consumer at the
        end of the partition and the tracker a thousand offsets behind). Called by the
        alert timer, between batches; a partition whose events wait in the stream's
        buffer is not lost, only slow."""
        if self._lock.locked():
            return
        now = time.monotonic() if now is None else now
        for number in list(self._owned):
            expected = self._expected(number)
            fetched = self.fetched_to(number)
            if expected is None or fetched is None or fetched <= expected or number in self._held:
                self._quiet.pop(number, None)
                continue
            quiet = self._quiet.get(number)
            if quiet is None or quiet[0] != expected:
                self._quiet[number] = (expected, now)
                continue
            if now - quiet[1] < LOST_AFTER_SECONDS or self.waiting_in_stream(number):
                continue
            log.warning(
                "%s/%d: fetched to offset %d, but nothing from %d reached the tracker "
                "in %.0f s; reading again",
                self.tracked_topic,
                number,
                fetched,
                expected,
                now - quiet[1],
            )
            self.metrics.tracker_reread.inc()
            self._quiet[number] = (expected, now)  # the next try, if needed, after as long
            self.read_again(number, expected)

    def retry_held(self) -> None:
        """Ask again for the partitions still waiting for a missing offset: a read again
        can be undone by a stale fetch, and no new event may come to ask for it."""
        for number, (expected, _, _) in list(self._held.items()):
            if self._next_offset.get(number) == expected:
                self.read_again(number, expected)

    def _first_available(self, number: int, expected: int, offset: int) -> int:
        """`expected`, unless reading the partition again from there has, for
        GONE_AFTER_SECONDS, only ever answered from later offsets: then the missing ones
        are gone from the broker (retention deleted them while nobody consumed the
        partition), and the smallest offset it answered with is where to continue.
        Holding back for ever would stall the partition."""
        now = time.monotonic()
        held = self._held.get(number)
        if held is None or held[0] != expected:
            held = (expected, offset, now)
        held = (expected, min(held[1], offset), held[2])
        self._held[number] = held
        if now - held[2] < GONE_AFTER_SECONDS:
            return expected
        log.error(
            "%s/%d: offsets %d to %d are no longer on the broker; continuing from %d",
            self.tracked_topic,
            number,
            expected,
            held[1] - 1,
            held[1],
        )
        del self._held[number]
        return held[1]

    def _apply(
        self, batch: dict[str, Entry], number: int, event: EventT, tracked: TrackedEvent, now: int
    ) -> None:
        entry = self._entry(batch, tracked.referral_key, number, tracked)
        assert entry is not None
        entry.had_events = True
        entry.judged = False  # the state is about to change
        offset = event.message.offset
        applied = entry.state.apply(tracked, offset)
        if id(event) in self._again:
            pass  # read again: counted when first read (SPEC §6: each message once)
        elif applied:
            self._processed[(tracked.type, tracked.source)] += 1
        else:
            self._duplicates[tracked.type] += 1
        # New events, and accepted copies redelivered after a crash: write, so a changelog
        # write lost in the crash is made good.
        if entry.state.accepted_position(tracked.event_id) == offset:
            entry.accepted.append((event, tracked))
            entry.changed = True
        if self.clock.event_time:
            self._judge(entry, now)
        entry.now = now

    # -- the clock --------------------------------------------------------------------

    async def tick(self, app: Any) -> None:
        """Judge the referrals whose deadline has passed (wall and file clocks)."""
        if self.clock.event_time or not app.tables.recovery.completed.is_set():
            return
        assigned = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == self.tracked_topic
        }
        if not assigned:
            return
        started = time.perf_counter()
        now = self.clock.now()
        more, first = True, True
        while more:
            # In chunks, releasing the lock and the event loop in between: after an outage
            # hundreds of thousands of referrals can be due at once, and judging them in
            # one go held the loop for minutes (found by bench.recovery: Faust's consumer
            # keepalive failed and the worker could not stop).
            async with self._lock:
                if first:  # later chunks must not take back a partition revoked meanwhile
                    if not await self._ensure_owned(assigned):
                        return  # a rebalance: the next tick starts again
                    first = False
                batch: dict[str, Entry] = {}
                more = False
                for number in sorted(assigned):
                    if number in self._owned:  # not revoked while the lock was free
                        owned = self._owned[number]
                        more |= self._fire_due(owned, now, batch, TICK_CHUNK) == TICK_CHUNK
                await self._finish(batch)
            if more:
                await asyncio.sleep(0)
        self.metrics.alert_tick_seconds.observe(time.perf_counter() - started)

    def _fire_due(
        self, owned: OwnedPartition, now: int, batch: dict[str, Entry], limit: int | None = None
    ) -> int:
        """Judge the referrals of `owned` due by `now` (at most `limit`); how many."""
        due = owned.index.pop_due(now, limit)
        for key in due:
            entry = self._entry(batch, key, owned.number, None)
            if entry is not None:
                self._judge(entry, now)
        return len(due)

    def _judge(self, entry: Entry, now: int) -> None:
        entry.now = now
        targets = self.policy.targets_for(entry.state.org_id, entry.state.specialty)
        judged = judge(entry.state, now, targets)
        result = reconcile(entry.state, entry.firing, now, targets, judged)
        # At once, not at the end of the batch: with the event-time clock a later event of
        # this same batch may pass the deadline.
        entry.judged, entry.deadline, entry.flags = True, judged.deadline, judged.flags
        self._owned[entry.partition].index.set(entry.key, entry.deadline)
        if result.events:
            entry.alert_events.extend(result.events)
            entry.firing = result.firing
            entry.changed = True

    # -- loading and writing ----------------------------------------------------------

    def _entry(
        self, batch: dict[str, Entry], key: str, number: int, first: TrackedEvent | None
    ) -> Entry | None:
        entry = batch.get(key)
        if entry is not None:
            return entry
        stored = self._read(key, number)
        if stored is not None:
            state, firing, deadline, _ = load_record(stored)
            before: str | None = state.status.value
        elif first is not None:
            state, firing, deadline, before = (
                new_state(first.org_id, first.referral_id),
                {},
                None,
                None,
            )
        else:
            return None
        entry = Entry(key, number, state, firing, deadline, before, dict(firing))
        batch[key] = entry
        return entry

    async def _finish(self, batch: dict[str, Entry]) -> None:
        if not batch:
            return
        outbox = self._outbox
        for entry in batch.values():
            for message in entry.alert_events:
                await outbox.add(self.alerts, entry.key.encode("utf-8"), jsoncodec.dumps(message))
        await outbox.flush()
        accepted: list[Item] = []
        changes = GaugeChanges()
        try:
            await self._finish_entries(batch, accepted, changes)
        finally:  # the gauges follow the partitions' counts, which moved entry by entry
            changes.publish(self.metrics)
        self.metrics.deadlines_pending.set(sum(len(o.index) for o in self._owned.values()))
        await self.windows.count(accepted, outbox)  # flushes the snapshots too
        # The window writes, through the same outbox: the batch's events are acknowledged
        # (so committable) once this returns.
        await self._writes.acknowledged()

    async def _finish_entries(
        self, batch: dict[str, Entry], accepted: list[Item], changes: GaugeChanges
    ) -> None:
        """Write each changed referral's record, count it, publish its snapshot."""
        outbox = self._outbox
        snapshots = 0
        for entry in batch.values():
            owned = self._owned[entry.partition]
            targets = self.policy.targets_for(entry.state.org_id, entry.state.specialty)
            if entry.judged:  # every entry is, unless applying its event failed
                deadline, flags = entry.deadline, entry.flags  # _judge indexed the deadline
            else:  # one judgement for the index and the snapshot, raising nothing
                judged = judge(entry.state, entry.now, targets)
                deadline, flags = judged.deadline, judged.flags
                owned.index.set(entry.key, deadline)
            if entry.changed or deadline != entry.stored_deadline:
                with acting_for(_PartitionEvent(self.tracked_topic, entry.partition)):  # type: ignore[arg-type]
                    self.table[entry.key] = encode_record(
                        {
                            "state": entry.state.to_dict(),
                            "alerts": entry.firing,
                            "deadline": deadline,
                            "p": entry.partition,
                        }
                    )
            self._count(owned, entry, changes)
            if entry.had_events or entry.alert_events:
                snapshot = status_snapshot(entry.state, entry.now, targets, flags)
                await outbox.add(self.status, entry.key.encode("utf-8"), jsoncodec.dumps(snapshot))
                snapshots += 1
            accepted.extend(entry.accepted)
        self.metrics.status_out.inc(snapshots)

    def _count(self, owned: OwnedPartition, entry: Entry, changes: GaugeChanges) -> None:
        """Keep the partition's open-referral and firing-alert counts in step with this
        entry, and note the change for the gauges."""
        after = entry.state.status.value if entry.state.is_open else None
        before = entry.status_before if entry.status_before in _OPEN else None
        if before != after:
            if before is not None:
                owned.open_by_status[before] -= 1
                changes.open_by_status[before] -= 1
            if after is not None:
                owned.open_by_status[after] += 1
                changes.open_by_status[after] += 1
        if entry.firing == entry.firing_before:  # most entries: no alert came or went
            return
        org = entry.state.org_id
        for rule in entry.firing_before.keys() - entry.firing.keys():
            owned.firing[(org, rule)] -= 1
            changes.firing[(org, rule)] -= 1
            changes.resolved[(org, rule)] += 1
        for rule in entry.firing.keys() - entry.firing_before.keys():
            owned.firing[(org, rule)] += 1
            changes.firing[(org, rule)] += 1
            changes.raised[(org, rule)] += 1

    # -- ownership ----------------------------------------------------------------------

    async def _ensure_owned(self, numbers: set[int]) -> bool:
        """Rebuild the deadline index, watermark and gauges of partitions seen for the
        first time since a start or a rebalance: one pass over the table, letting the
        event loop go every REBUILD_CHUNK records (a million records take 8-12 s, and
        ingest, the sinks and the web server stood still for all of it).

        False when a rebalance came in between (forget() ran, or the store changed under
        the iteration): nothing is kept, and the caller tries again."""
        missing = numbers - self._owned.keys()
        if not missing:
            return True
        started = time.perf_counter()
        rebalances = self._rebalances
        fresh = {n: OwnedPartition(n, self.new_index(n)) for n in missing}
        records = iter(self.table.items())
        n = 0
        while True:
            n += 1
            if n % REBUILD_CHUNK == 0:
                await asyncio.sleep(0)
                if self._rebalances != rebalances:
                    return self._rebuild_abandoned(fresh, "a rebalance came in between")
            try:
                key, stored = next(records)
            except StopIteration:
                break
            except RuntimeError as exc:  # the store's partitions changed (a rebalance)
                return self._rebuild_abandoned(fresh, str(exc))
            if not isinstance(key, str) or stored is None:
                continue
            value = decode_record(stored)
            if not isinstance(value, dict):
                continue
            state, firing, deadline, number = load_record(value)
            if number < 0:
                number = partition_of(key, self.partitions)
            owned = fresh.get(number)
            if owned is None:
                continue
            if deadline is None and "state" not in value:  # a record from before alerting
                deadline = next_deadline(
                    state, -(2**62), self.policy.targets_for(state.org_id, state.specialty)
                )
            owned.index.load(key, deadline)
            last = state.last_event_at
            if last is not None and (owned.watermark is None or last > owned.watermark):
                owned.watermark = last
            if state.is_open:
                owned.open_by_status[state.status.value] += 1
            for rule in firing:
                owned.firing[(state.org_id, rule)] += 1
        for owned in fresh.values():
            owned.index.loaded()
            for status, count in owned.open_by_status.items():
                self.metrics.referrals_open.labels(status).inc(count)
            for (org, rule), count in owned.firing.items():
                self.metrics.alerts_firing.labels(org, rule).inc(count)
        self._owned.update(fresh)
        log.info(
            "deadline index rebuilt for partitions %s: %d referrals due later (%.1f s)",
            sorted(missing),
            sum(len(o.index) for o in fresh.values()),
            time.perf_counter() - started,
        )
        return True

    def _rebuild_abandoned(self, fresh: dict[int, OwnedPartition], why: str) -> bool:
        for owned in fresh.values():
            owned.index.close()
        log.info("deadline index rebuild for partitions %s abandoned: %s", sorted(fresh), why)
        return False

    def forget(self, numbers: set[int]) -> None:
        """Drop what this worker kept for partitions it no longer owns."""
        self._rebalances += 1  # a rebuild under way starts again (_ensure_owned)
        for number in numbers:
            self._next_offset.pop(number, None)
            self._held.pop(number, None)
            self._quiet.pop(number, None)
            owned = self._owned.pop(number, None)
            if owned is None:
                continue
            owned.index.close()
            for status, n in owned.open_by_status.items():
                self.metrics.referrals_open.labels(status).dec(n)
            for (org, rule), n in owned.firing.items():
                self.metrics.alerts_firing.labels(org, rule).dec(n)

    # -- failures -----------------------------------------------------------------------

    async def reject(self, event: EventT, exc: Exception) -> None:
        message = event.message
        log.error(
            "tracker failed on %s/%s@%s: %s",
            message.topic,
            message.partition,
            message.offset,
            type(exc).__name__,
        )
        await send_dead_letter(
            self.dlq,
            self.metrics,
            message,
            ErrorCode.INTERNAL_ERROR,
            f"tracker failed: {type(exc).__name__}",
            None,
            self.pseudonym_key,
        )


# Due referrals judged per partition before a tick lets other work run (see `tick`).
TICK_CHUNK = 1000
# Table records read by a deadline-index rebuild before it lets other work run, and how
# long a batch waits before it tries again after a rebalance stopped a rebuild
# (Tracker._ensure_owned).
REBUILD_CHUNK = 5000
REBUILD_RETRY_SECONDS = 0.1
# How long a partition is read again from a missing offset, answering only from later
# ones, before the missing offsets are taken as deleted (Tracker._first_available).
GONE_AFTER_SECONDS = 60.0
# How long a partition the consumer has fetched past the tracker's next offset may bring
# nothing before it is read again from that offset (Tracker.retry_lost).
LOST_AFTER_SECONDS = 10.0

_OPEN = frozenset({"created", "routed", "contacted", "scheduled", "seen"})


def register_tracker(
    app: AppT,
    tracked: TopicT,
    tracker: Tracker,
    batch: int,
    batch_seconds: float,
    tick_seconds: float,
) -> Any:
    lane = Lane.for_batches(tracker.tracked_topic, batch)
    app.reftrack_lane = lane  # type: ignore[attr-defined]  # the fetch loop's (faust_compat)

    async def track(stream: Any) -> None:
        """The agent's stream stays empty: its messages come through the lane
        (streams/lane.py). Each batch is acknowledged once processed, its outputs and
        table writes on the broker; a batch that raises is not (it is read again)."""
        app.flow_control.manage_queue(lane)  # type: ignore[arg-type]  # cleared at rebalances
        await feed(lane, app.consumer, tracker.process, batch, batch_seconds)  # type: ignore[arg-type]

    @app.timer(interval=tick_seconds, name="reftrack.alert_tick")
    async def tick() -> None:
        try:
            tracker.retry_held()
            if streams_running(app):  # where each partition resumed is known
                tracker.retry_lost()
            await tracker.tick(app)
        except Exception:  # keep the timer alive; the next tick tries again
            log.exception("alert tick failed")

    topic = tracker.tracked_topic
    tracker.resume_offset = lambda partition: resume_offset(app.consumer, TP(topic, partition))
    tracker.read_again = lambda partition, offset: read_again(
        app.consumer, TP(topic, partition), offset
    )
    tracker.fetched_to = lambda partition: fetched_to(app.consumer, TP(topic, partition))
    tracker.waiting_in_stream = lambda partition: waiting_in_stream(app, TP(topic, partition))
    return app.agent(tracked, name="reftrack.tracker")(track)
