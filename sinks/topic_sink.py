"""Copy one topic into ClickHouse tables, in batches, exactly-once in effect.

The sink has its own consumer group and commits a batch's offsets only after the rows
are in ClickHouse, so a crash replays at most the unflushed batch; the tables are
ReplacingMergeTree keyed on a version, so a replayed row changes nothing. Kafka stays
the source of truth: resetting the group's offsets rebuilds the table.

Flushes happen at `batch_rows` rows (or messages) or `flush_seconds` after the first
buffered row; a read takes only as many messages as fit, so a sink never holds more than
`batch_rows` messages. While ClickHouse fails, the sink retries with capped exponential
backoff and stops reading the topic (backpressure): memory stays bounded by one batch.
On stop it drains the topic to its end (what the tracker produced before stopping),
flushes and commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from sinks.clickhouse import ClickHouse, ClickHouseError
from streams.metrics import Metrics

log = logging.getLogger(__name__)

Rows = list[Sequence[Any]]


def group_consumer(
    topic: str,
    *,
    bootstrap: str,
    group_id: str,
    session_timeout: float,
    max_records: int,
    options: dict[str, Any],
) -> AIOKafkaConsumer:
    """A consumer of `topic` in `group_id` that commits only when told (after its
    messages' results are stored or published), from the earliest offset when the group
    has none, with the worker's session timeout."""
    session_ms = int(session_timeout * 1000)
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 6),
        rebalance_timeout_ms=max(session_ms, 10_000),
        max_poll_records=max_records,
        **options,
    )


def consumer_positions(
    consumer: AIOKafkaConsumer | None, read: dict[TopicPartition, int]
) -> dict[str, tuple[int | None, int]]:
    """Per assigned partition ("topic/partition"): (the next offset to handle; the broker's
    high watermark); empty while there is no consumer. Before the first message this
    process handles in a partition, the next offset is where the client will start (the
    group's committed offset), None while it does not know yet: counting from 0 there
    reported a whole partition as lag after every rebalance, until a new message came."""
    if consumer is None:
        return {}
    out = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            position = read.get(tp)
            out[f"{tp.topic}/{tp.partition}"] = (
                position if position is not None else fetch_position(consumer, tp),
                high,
            )
    return out


def fetch_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The next offset the client will hand out in `tp`, if it knows it yet, without
    waiting for it as aiokafka's `position()` does."""
    state = _partition_state(consumer, tp)
    return int(state.position) if state is not None and state.has_valid_position else None


def _partition_state(consumer: AIOKafkaConsumer, tp: TopicPartition) -> Any:
    """aiokafka's state of an assigned partition (client internals: read, never changed),
    None when it is not assigned."""
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None or tp not in assignment.tps:
        return None
    return assignment.state_value(tp)


def describe_partition(consumer: AIOKafkaConsumer | None, where: str) -> str:
    """What an aiokafka consumer knows of one partition ("topic/partition"), for the
    stall watch's warning: its fetch position, whether it waits for an offset reset or
    is paused, whether fetched records wait to be taken, the group generation."""
    if consumer is None:
        return "no consumer"
    topic, _, number = where.rpartition("/")
    tp = TopicPartition(topic, int(number))
    state = _partition_state(consumer, tp)
    if state is None:
        return "not assigned"
    fetcher = consumer._fetcher
    coordinator = consumer._coordinator
    subscription = consumer._subscription.subscription
    position = state.position if state.has_valid_position else None
    return (
        f"fetch position {position}, awaiting reset {state.awaiting_reset}, "
        f"paused {state.paused}, records waiting {tp in fetcher._records}, "
        f"fetches in flight to nodes {sorted(fetcher._in_flight)}, "
        f"generation {getattr(coordinator, 'generation', None)}, "
        f"rejoin needed {coordinator.need_rejoin(subscription) if coordinator else None}"
    )


def consumer_lag(
    consumer: AIOKafkaConsumer | None, read: dict[TopicPartition, int]
) -> dict[str, int]:
    """Per assigned partition ("topic/partition"): messages on the broker beyond `read`
    (the next offset to handle); empty while there is no consumer."""
    return lag_of(consumer_positions(consumer, read))


def lag_of(positions: dict[str, tuple[int | None, int]]) -> dict[str, int]:
    """Messages waiting per partition, from (next offset to handle, high watermark)."""
    return {where: max(0, high - (read or 0)) for where, (read, high) in positions.items()}


@dataclass(frozen=True)
class SinkTarget:
    """One table fed by the topic: each message (its value, and its offset in its
    partition) becomes zero or more of its rows."""

    table: str
    columns: Sequence[str]
    to_rows: Callable[[bytes, int], Rows]


class TopicSink(Service):
    """One topic -> one or more tables, flushed together, committed once all landed."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        group_id: str,
        topic: str,
        targets: Sequence[SinkTarget],
        clickhouse: ClickHouse,
        metrics: Metrics,
        batch_rows: int,
        flush_seconds: float,
        session_timeout: float,
        consumer_options: dict[str, Any] | None = None,
        drain_seconds: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sink_name = name
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.targets = tuple(targets)
        self.clickhouse = clickhouse
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.session_timeout = session_timeout
        self.consumer_options = consumer_options or {}
        # Series from the start: "no flush yet" reads as 0, and alerts can match on `sink`.
        metrics.sink_rows_pending.labels(name).set(0)
        metrics.sink_last_flush.labels(name).set(0)
        self.drain_seconds = drain_seconds
        self._consumer: AIOKafkaConsumer | None = None
        self._joined = False  # its consumer has started (joined its group)
        self._rows: dict[str, Rows] = {t.table: [] for t in self.targets}
        self._offsets: dict[TopicPartition, int] = {}
        self._read: dict[TopicPartition, int] = {}
        self._first_buffered: float | None = None
        self._messages = 0  # read and buffered, not yet flushed: at most batch_rows
        self._lock = asyncio.Lock()
        self.last_flush: float | None = None
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    @property
    def tables(self) -> list[str]:
        return [t.table for t in self.targets]

    async def on_start(self) -> None:
        self._consumer = group_consumer(
            self.topic,
            bootstrap=self.bootstrap,
            group_id=self.group_id,
            session_timeout=self.session_timeout,
            max_records=self.batch_rows,
            options=self.consumer_options,
        )

    @Service.task
    async def _run(self) -> None:
        assert self._consumer is not None
        # Started here, not in on_start: joining a consumer group takes seconds on some
        # brokers (about 3 s each on the embedded one), and the worker starts its
        # services one after another; this way the four sinks join at the same time.
        await self._consumer.start()
        self._joined = True
        while not self.should_stop:
            try:
                room = max(1, self.batch_rows - self._messages)
                batches = await self._consumer.getmany(timeout_ms=200, max_records=room)
            except Exception as exc:  # broker gone for a while: keep trying
                log.warning("sink %s: fetch failed: %s", self.sink_name, exc)
                await self.sleep(1.0)
                continue
            async with self._lock:
                self._buffer(batches)
                if self._due():
                    await self._flush()

    def _buffer(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in batches.items():
            for message in messages:
                if message.value is not None:  # compaction tombstones carry no row
                    for target in self.targets:
                        self._rows[target.table].extend(
                            target.to_rows(message.value, message.offset)
                        )
                self._offsets[tp] = message.offset + 1
            if messages:
                self._read[tp] = messages[-1].offset + 1
                self._messages += len(messages)
            if messages and self._first_buffered is None:
                self._first_buffered = time.monotonic()
        self.metrics.sink_rows_pending.labels(self.sink_name).set(self.pending)

    def _due(self) -> bool:
        if not self._offsets:
            return False
        if self.pending >= self.batch_rows or self._messages >= self.batch_rows:
            return True
        return (
            self._first_buffered is not None
            and time.monotonic() - self._first_buffered >= self.flush_seconds
        )

    async def _flush(self) -> None:
        """Insert every table's rows, retrying until they land or the sink stops; then
        commit. A retry may insert a table twice: its rows are idempotent."""
        offsets = dict(self._offsets)
        for target in self.targets:
            rows = self._rows[target.table]
            if rows and not await self._insert(target, rows):
                return  # stopping with ClickHouse down: the rows stay in Kafka
        await self._commit(offsets)
        self._rows = {t.table: [] for t in self.targets}
        self._offsets = {}
        self._first_buffered = None
        self._messages = 0
        self.last_flush = time.time()
        self.metrics.sink_last_flush.labels(self.sink_name).set(self.last_flush)
        self.metrics.sink_rows_pending.labels(self.sink_name).set(0)

    async def _insert(self, target: SinkTarget, rows: Rows) -> bool:
        delay = 0.2
        table = target.table
        while True:
            started = time.monotonic()
            try:
                await self.clickhouse.call(self.clickhouse.insert, table, rows, target.columns)
            except ClickHouseError as exc:
                self.metrics.sink_failures.labels(table).inc()
                self.last_error = str(exc)
                log.error(
                    "sink %s: insert of %d rows into %s failed, retrying in %.1fs: %s",
                    self.sink_name,
                    len(rows),
                    table,
                    delay,
                    exc,
                )
                if self.should_stop and delay > 5:
                    log.error("sink %s: giving up at shutdown; rows stay in Kafka", self.sink_name)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            elapsed = time.monotonic() - started
            self.metrics.sink_rows.labels(table).inc(len(rows))
            self.metrics.sink_flushes.labels(table).inc()
            self.metrics.sink_batch_rows.labels(table).observe(len(rows))
            self.metrics.sink_flush_seconds.labels(table).observe(elapsed)
            self.last_error = None
            return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # a rebalance took the partition: the rows are idempotent
            log.warning("sink %s: commit failed (rows already stored): %s", self.sink_name, exc)

    async def on_stop(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        if not self._joined:  # stopped while still joining: nothing read, nothing to drain
            self._consumer = None
            await consumer.stop()
            return
        try:
            async with self._lock:
                await self._drain(consumer)
                if self._offsets:
                    await self._flush()
        finally:
            await consumer.stop()
            self._consumer = None

    async def _drain(self, consumer: AIOKafkaConsumer) -> None:
        """Read what is on the topic now, so a graceful stop leaves nothing behind."""
        assignment = consumer.assignment()
        if not assignment:
            return
        try:
            ends = await consumer.end_offsets(list(assignment))
        except Exception as exc:
            log.warning("sink %s: cannot read end offsets at stop: %s", self.sink_name, exc)
            return
        deadline = time.monotonic() + self.drain_seconds
        while time.monotonic() < deadline:
            behind = [tp for tp in assignment if await consumer.position(tp) < ends[tp]]
            if not behind:
                return
            room = max(1, self.batch_rows - self._messages)
            batches = await consumer.getmany(*behind, timeout_ms=200, max_records=room)
            self._buffer(batches)
            if self._due():
                await self._flush()
        log.warning("sink %s: stopped before reaching the end of %s", self.sink_name, self.topic)

    def lag(self) -> dict[str, int]:
        """Per partition: messages on the topic this sink has not read yet."""
        return consumer_lag(self._consumer, self._read)

    def positions(self) -> dict[str, tuple[int | None, int]]:
        """For the stall watch: per partition (next offset to handle, high watermark)."""
        return consumer_positions(self._consumer, self._read)

    def describe(self, where: str) -> str:
        state = describe_partition(self._consumer, where)
        return f"{state}; rows pending {self.pending}; last error {self.last_error}"
