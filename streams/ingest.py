"""Ingest: canonical events in; validated, pseudonymized, re-keyed events out.

Producers may key messages any way they like (or not at all). Ingest re-keys every
valid event by `org_id/referral_id` onto the internal `<prefix>.tracked.v1` topic, so
each referral's events meet in one partition and one tracker, whatever the producer
did. Rejected messages go to the DLQ with their error code. After this step no message
carries a raw patient_id.

Ingest keeps no state, so it needs none of what Faust's streams give (tables, their
changelogs, co-partitioned assignment): it reads the events topic with a plain aiokafka
consumer in a consumer group of its own, `<app id>.ingest`, a batch at a time. That
halved a worker's cost per event: every message Faust hands an agent goes through its
fetch thread, conductor, stream queue and event acknowledgement, and each event used to
pay for that twice, once here and once in the tracker (docs/performance.md).

Nothing is given up. A batch's tracked copies and dead letters are published through one
outbox and acknowledged by the broker (acks=all) before the batch's offsets are
committed: a crash re-reads at most the uncommitted batches, and the tracker counts a
re-read event once (its event_id). A batch whose publishing fails is read again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import AppT
from mode import Service

from schemas.errors import ErrorCode, EventRejected
from schemas.events import TrackedEvent, parse_event, to_tracked
from schemas.pseudonym import pseudonymize
from sinks.topic_sink import (
    consumer_lag,
    consumer_positions,
    describe_partition,
    group_consumer,
)
from streams.dlq import send_dead_letter
from streams.metrics import Metrics
from streams.publish import Outbox
from streams.topics import offsets_client, topic_partitions

log = logging.getLogger(__name__)

# Wait before reading a batch again whose tracked copies could not be published.
RETRY_SECONDS = 1.0
# How often ingest looks whether the app is ready for it (see IngestService._run).
READY_POLL_SECONDS = 0.1


def ingest_one(raw: bytes | None, received_at: datetime, pseudonym_key: bytes) -> TrackedEvent:
    """Validate and pseudonymize one message; raises EventRejected."""
    if raw is None:
        raise EventRejected(ErrorCode.INVALID_JSON, "message has no value (null)")
    event = parse_event(raw, received_at)
    ref = pseudonymize(pseudonym_key, event.org_id, event.patient_id) if event.patient_id else None
    return to_tracked(event, ref)


def ingest_group(app_id: str) -> str:
    """The consumer group ingest reads the events topic in."""
    return f"{app_id}.ingest"


class IngestService(Service):
    """Reads the canonical events topic in batches: each valid event's tracked copy, each
    rejected message's dead letter, published together; then the batch is committed."""

    def __init__(
        self,
        *,
        app: AppT,
        bootstrap: str,
        app_id: str,
        topic: str,
        tracked: str,
        dlq: str,
        metrics: Metrics,
        pseudonym_key: bytes,
        batch: int,
        session_timeout: float,
        consumer_options: dict[str, Any] | None = None,
        ready: Callable[[], bool] = lambda: True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ready = ready
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.group_id = ingest_group(app_id)
        self.topic = topic
        self.tracked = tracked
        self.dlq = dlq
        self.metrics = metrics
        self.pseudonym_key = pseudonym_key
        self.batch = batch
        self.session_timeout = session_timeout
        self.consumer_options = consumer_options or {}
        self._outbox = Outbox(app)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # held while a batch is processed and committed
        self._read: dict[TopicPartition, int] = {}
        self._reading = False  # past the wait for the app: see positions()

    async def on_start(self) -> None:
        self._consumer = group_consumer(
            self.topic,
            bootstrap=self.bootstrap,
            group_id=self.group_id,
            session_timeout=self.session_timeout,
            max_records=self.batch,
            options=self.consumer_options,
        )

    @Service.task
    async def _run(self) -> None:
        consumer = self._consumer
        if consumer is None:  # stopped before it ran
            return
        # Started here, not in on_start: joining a group takes seconds on some brokers,
        # and the worker must not wait for it (the sinks do the same).
        try:
            await adopt_agent_offsets(
                self.bootstrap, self.app_id, self.topic, self.consumer_options
            )
        except Exception as exc:  # the events are then read again: counted once, not lost
            log.warning("ingest: could not look up the agent group's offsets: %s", exc)
        await consumer.start()
        # Joined while the app recovers its tables (joining takes seconds on some brokers,
        # and a busy event loop after recovery made it take many more); reads once the
        # app can publish and its tracker can apply what ingest publishes.
        while not (self.should_stop or self.ready()):
            await self.sleep(READY_POLL_SECONDS)
        self._reading = True
        while not self.should_stop:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch)
            except Exception as exc:  # broker gone for a while: keep trying
                if self.should_stop:
                    return
                log.warning("ingest: fetch failed: %s", exc)
                await self.sleep(RETRY_SECONDS)
                continue
            if not batches:
                continue
            async with self._lock:
                if self._consumer is None:  # stopped while fetching: read again next start
                    return
                await self._process(consumer, batches)

    async def _process(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            if not records:
                continue
            self.metrics.messages_in.labels(tp.topic).inc(len(records))
            for record in records:
                await self._ingest(record)
            offsets[tp] = records[-1].offset + 1
        try:
            await self._outbox.flush()
        except Exception as exc:  # not on the broker: read the batch again, lose nothing
            log.error("ingest: publishing a batch failed, reading it again: %s", exc)
            for tp, records in batches.items():
                if records and tp in consumer.assignment():
                    consumer.seek(tp, records[0].offset)
            await self.sleep(RETRY_SECONDS)
            return
        self._read.update(offsets)
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # a rebalance took a partition: its next owner re-reads
            log.warning("ingest: commit failed (the events are published): %s", exc)

    async def _ingest(self, message: Any) -> None:
        received_at = datetime.now(UTC)
        try:
            tracked_event = ingest_one(message.value, received_at, self.pseudonym_key)
        except EventRejected as rejected:
            await self._reject(message, rejected.code, rejected.detail, rejected.field)
            return
        except Exception as exc:  # a bug must not lose the message or stop ingest
            log.exception(
                "ingest failed on %s/%s@%s", message.topic, message.partition, message.offset
            )
            await self._reject(message, ErrorCode.INTERNAL_ERROR, type(exc).__name__, None)
            return
        lag = (received_at.timestamp() * 1e6 - tracked_event.occurred_at) / 1e6
        self.metrics.event_time_lag.observe(max(0.0, lag))
        await self._outbox.add(
            self.tracked, tracked_event.referral_key.encode("utf-8"), tracked_event.to_json()
        )

    async def _reject(self, message: Any, code: ErrorCode, detail: str, field: str | None) -> None:
        await send_dead_letter(
            self.dlq,
            self.metrics,
            message,
            code,
            detail,
            field,
            self.pseudonym_key,
            outbox=self._outbox,
        )

    async def on_stop(self) -> None:
        """Finish the batch in hand (published and committed), then leave the group."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._lock:
            self._consumer = None
        await consumer.stop()

    def lag(self) -> dict[str, int]:
        """Per partition: messages on the events topic ingest has not read yet."""
        return consumer_lag(self._consumer, self._read)

    def positions(self) -> dict[str, tuple[int | None, int]]:
        """For the stall watch: per partition (next offset to handle, high watermark);
        nothing while ingest waits for the app to be ready, which is not a stall."""
        return consumer_positions(self._consumer, self._read) if self._reading else {}

    def describe(self, where: str) -> str:
        return describe_partition(self._consumer, where)

    @property
    def assigned(self) -> bool:
        consumer = self._consumer
        return consumer is not None and bool(consumer.assignment())


async def adopt_agent_offsets(
    bootstrap: str, app_id: str, topic: str, options: dict[str, Any] | None = None
) -> dict[TopicPartition, int]:
    """Until ingest had a consumer group of its own it was a Faust agent, committing in
    the app's group. Every partition of `topic` the ingest group has no offset for gets
    the app group's offset, if it has one, so an upgraded worker neither reads again nor
    dead-letters again what the agent already handled. Run before the ingest consumer
    joins its group (a seek from its rebalance listener raced the first fetch); returns
    what was copied."""
    group = ingest_group(app_id)
    own = offsets_client(bootstrap, group, options)
    await own.start()
    try:
        tps = await topic_partitions(own, topic)
        fresh = [tp for tp, offset in (await committed_in(own, tps)).items() if offset is None]
        if not fresh:
            return {}
        agent = offsets_client(bootstrap, app_id, options)
        await agent.start()
        try:
            found = await committed_in(agent, fresh)
        finally:
            await agent.stop()
        adopted = {tp: offset for tp, offset in found.items() if offset is not None}
        if adopted:
            own.assign(list(adopted))  # a client that never joins: it only commits
            await own.commit(adopted)
            log.info(
                "ingest: %d partitions of %s start where consumer group %s left off",
                len(adopted),
                topic,
                app_id,
            )
        return adopted
    finally:
        await own.stop()


async def committed_in(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The offsets the consumer's group has committed for `partitions` (None: none)."""
    return {tp: await consumer.committed(tp) for tp in partitions}
