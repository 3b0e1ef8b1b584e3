"""streams.ingest.IngestService against the real embedded broker: every message read ends
up on the tracked topic or in the DLQ before its offset is committed; a batch whose
publishing fails is read again; a worker upgraded from the ingest agent starts where the
agent's consumer group left off."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.events import TrackedEvent
from streams.broker import EmbeddedBroker
from streams.config import Topics, load_settings
from streams.ingest import IngestService, ingest_group
from streams.metrics import Metrics
from streams.topics import ensure_topics
from tests.integration.harness import (
    Deployment,
    Worker,
    committed_offsets,
    produce,
    read_committed,
    read_topic,
    wait_for,
)

pytestmark = pytest.mark.integration

KEY = b"ingest-test-key-ingest-test-key!"


def event(i: int, patient: str = "MRN-1") -> bytes:
    return json.dumps(
        {
            "event_id": f"ev-{i}",
            "referral_id": f"R-{i % 7}",
            "org_id": "acme",
            "type": "referral.created",
            "source": "ehr",
            "patient_id": patient,
            "data": {"priority": "routine", "specialty": "cardiology"},
            "occurred_at": (datetime(2025, 5, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
        }
    ).encode()


def create_topics(bootstrap: str, prefix: str, base_dir: Path, partitions: int = 4) -> None:
    settings = load_settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        partitions=partitions,
        data_dir=str(base_dir / "state"),
    )
    asyncio.run(ensure_topics(settings))


async def _run_ingest(
    bootstrap: str,
    topics: Topics,
    app_id: str,
    until: Callable[[IngestService], Awaitable[bool]],
    fail_first_flushes: int = 0,
    ready: Callable[[], bool] = lambda: True,
) -> IngestService:
    """Run one IngestService (publishing through a real producer) until `until` holds."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))
    service = IngestService(
        app=app,  # type: ignore[arg-type]  # what Outbox uses of a Faust app
        bootstrap=bootstrap,
        app_id=app_id,
        topic=topics.events,
        tracked=topics.tracked,
        dlq=topics.dlq,
        metrics=Metrics(),
        pseudonym_key=KEY,
        batch=50,
        session_timeout=6.0,
        ready=ready,
    )
    outbox = service._outbox
    flush, failures = outbox.flush, [fail_first_flushes]

    async def failing_flush() -> None:
        """The broker refusing a batch: what `flush` raises when a send fails."""
        if failures[0] > 0:
            failures[0] -= 1
            outbox._full, outbox._open = [], {}  # as a failed flush leaves it
            raise ConnectionError("injected: broker unreachable")
        await flush()

    outbox.flush = failing_flush  # type: ignore[method-assign]
    try:
        await service.start()
        async with asyncio.timeout(60):
            while not await until(service):
                await asyncio.sleep(0.2)
    finally:
        await service.stop()
        await producer.stop()
    assert failures[0] == 0, "the injected failures were not all used"
    return service


def consumed(service: IngestService) -> int:
    return int(service.metrics.total(service.metrics.messages_in))


def test_every_message_is_published_before_it_is_committed_even_when_publishing_fails(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path)
    topics = Topics(deployment.prefix)
    create_topics(broker.bootstrap, deployment.prefix, tmp_path)
    valid = [(f"k{i}".encode(), event(i)) for i in range(300)]
    invalid = [(None, b'{"patient_id": "MRN-9", "cut off'), (b"x", b"[]")]
    produce(broker.bootstrap, topics.events, valid + invalid)
    total = len(valid) + len(invalid)
    group = ingest_group(deployment.app_id)

    async def all_committed(_: IngestService) -> bool:
        done = await read_committed(broker.bootstrap, group, [topics.events])
        return sum(done.values()) == total

    # The first two batches fail to publish: they are read again, not skipped.
    service = asyncio.run(
        _run_ingest(
            broker.bootstrap, topics, deployment.app_id, all_committed, fail_first_flushes=2
        )
    )
    assert consumed(service) > total  # the failed batches were read twice

    tracked = [
        TrackedEvent.from_json(m.value) for m in read_topic(broker.bootstrap, topics.tracked)
    ]
    assert {e.event_id for e in tracked} == {f"ev-{i}" for i in range(300)}
    for message in read_topic(broker.bootstrap, topics.tracked):
        assert b"MRN-" not in message.value  # pseudonymized
    dead = [json.loads(m.value) for m in read_topic(broker.bootstrap, topics.dlq)]
    assert sorted(d["error_code"] for d in dead) == ["invalid_json", "not_an_object"]
    for record in dead:
        assert b"MRN-9" not in base64.b64decode(record["original_base64"])


def test_an_upgraded_worker_starts_ingest_where_the_agents_group_left_off(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path)
    topics = Topics(deployment.prefix)
    create_topics(broker.bootstrap, deployment.prefix, tmp_path, deployment.partitions)
    handled = [(f"R-{i}".encode(), event(i)) for i in range(40)]
    produce(broker.bootstrap, topics.events, handled)
    # What the ingest agent of the version before left behind: its offsets committed
    # in the app's own consumer group, for every partition except partition 0 (as if
    # it was killed before its first commit there).
    asyncio.run(_commit_end_offsets(broker.bootstrap, deployment.app_id, topics.events, skip={0}))
    skipped_partition = sum(
        1 for m in read_topic(broker.bootstrap, topics.events) if m.partition == 0
    )
    assert 0 < skipped_partition < len(handled)
    new = [(f"R-{i}".encode(), event(i)) for i in range(40, 60)]
    produce(broker.bootstrap, topics.events, new)

    expected = skipped_partition + len(new)
    group = ingest_group(deployment.app_id)
    ends = {
        (topics.events, tp.partition): offset
        for tp, offset in asyncio.run(_end_offsets(broker.bootstrap, topics.events)).items()
    }

    async def all_committed(_: IngestService) -> bool:
        return await read_committed(broker.bootstrap, group, [topics.events]) == ends

    service = asyncio.run(_run_ingest(broker.bootstrap, topics, deployment.app_id, all_committed))
    # Read: the new events, and partition 0's, which the old group never committed.
    assert consumed(service) == expected
    tracked = read_topic(broker.bootstrap, topics.tracked)
    assert len(tracked) == expected


async def _end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def _commit_end_offsets(bootstrap: str, group: str, topic: str, skip: set[int]) -> None:
    ends = await _end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = {tp: n for tp, n in ends.items() if tp.partition not in skip}
        consumer.assign(list(offsets))  # committing needs an assignment; this one never joins
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def test_a_worker_reads_events_in_the_ingest_group_and_reports_its_lag(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path)
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        messages = [(f"R-{i}".encode(), event(i)) for i in range(30)]
        produce(deployment.bootstrap, deployment.events_topic, messages)
        worker.wait_accounted(len(messages))
        lag = worker.pipeline()["consumer_lag"]
        events_partitions = {k for k in lag if k.startswith(deployment.events_topic + "/")}
        assert len(events_partitions) == deployment.partitions
        wait_for(
            lambda: sum(worker.pipeline()["consumer_lag"][k] for k in events_partitions) == 0,
            30,
            what="no ingest lag",
        )
        group = ingest_group(deployment.app_id)
        wait_for(
            lambda: (
                sum(
                    committed_offsets(deployment.bootstrap, group, deployment.events_topic).values()
                )
                == len(messages)
            ),
            30,
            what="ingest group committed",
        )
        # The app's own group (the tracker's) reads no events.
        assert (
            committed_offsets(deployment.bootstrap, deployment.app_id, deployment.events_topic)
            == {}
        )
    finally:
        assert worker.stop() == 0, worker.logs()


def test_ingest_joins_at_once_but_reads_only_once_the_app_is_ready(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The worker starts ingest with the app, so its group join overlaps table recovery;
    it reads nothing until the app can publish and its tables are recovered."""
    deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp_path)
    topics = Topics(deployment.prefix)
    create_topics(broker.bootstrap, deployment.prefix, tmp_path)
    produce(broker.bootstrap, topics.events, [(f"R-{i}".encode(), event(i)) for i in range(20)])
    app_ready = [False]
    seen: list[tuple[bool, int]] = []

    async def until(service: IngestService) -> bool:
        seen.append((service.assigned, consumed(service)))
        if service.assigned and not app_ready[0] and len(seen) > 10:
            app_ready[0] = True  # assigned, and two seconds more without reading
        return app_ready[0] and consumed(service) == 20

    asyncio.run(
        _run_ingest(broker.bootstrap, topics, deployment.app_id, until, ready=lambda: app_ready[0])
    )
    before_ready = [n for assigned, n in seen[:-1] if assigned]
    assert before_ready, "never assigned before the app was ready: the test proves nothing"
    assert set(before_ready) == {0}, seen
    assert len(read_topic(broker.bootstrap, topics.tracked)) == 20
