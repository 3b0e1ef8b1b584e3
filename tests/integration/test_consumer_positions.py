"""What a worker reports of its aiokafka consumers (lag, stall-watch positions, a
partition's client state), against the real embedded broker: a partition taken over from
another member, with nothing new in it, has no lag; a partition whose messages wait while
the consumer does not take them is reported stalled, with the client's state of it."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from sinks.topic_sink import consumer_lag, consumer_positions, describe_partition, group_consumer
from streams.broker import EmbeddedBroker
from streams.metrics import Metrics
from streams.stall import StallWatch, Watched
from tests.integration.harness import produce

pytestmark = pytest.mark.integration

SESSION = 6.0  # seconds: Tansu's group join takes about half of it


def new_consumer(bootstrap: str, topic: str, group: str, max_records: int) -> AIOKafkaConsumer:
    """A worker's kind of consumer (sinks.topic_sink.group_consumer), plain connection."""
    return group_consumer(
        topic,
        bootstrap=bootstrap,
        group_id=group,
        session_timeout=SESSION,
        max_records=max_records,
        options={},
    )


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def test_a_partition_taken_over_with_nothing_new_has_no_lag(broker: EmbeddedBroker) -> None:
    topic, group = f"pos-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(broker.bootstrap, topic, 2))
    produce(broker.bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(40)])

    async def run() -> tuple[dict[str, int], dict[str, tuple[int | None, int]], str]:
        first = new_consumer(broker.bootstrap, topic, group, max_records=100)
        await first.start()
        try:
            got = 0
            while got < 40:
                batches = await first.getmany(timeout_ms=1000)
                got += sum(len(records) for records in batches.values())
            await first.commit()
        finally:
            await first.stop()
        # the next member of the group reads nothing new: its lag must say so
        second = new_consumer(broker.bootstrap, topic, group, max_records=100)
        await second.start()
        try:
            for _ in range(50):
                assert await second.getmany(timeout_ms=200) == {}
                positions = consumer_positions(second, {})
                if len(positions) == 2 and all(p is not None for p, _ in positions.values()):
                    break
            where = sorted(positions)[0]
            return consumer_lag(second, {}), positions, describe_partition(second, where)
        finally:
            await second.stop()

    lag, positions, described = asyncio.run(run())
    assert sum(high for _, high in positions.values()) == 40
    assert all(position == high for position, high in positions.values()), positions
    assert lag == dict.fromkeys(positions, 0)
    position = positions[sorted(positions)[0]][0]
    assert described.startswith(f"fetch position {position}, awaiting reset False, paused False")


def test_a_consumer_that_stops_taking_messages_is_reported_stalled(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = f"stall-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(broker.bootstrap, topic, 1))
    produce(broker.bootstrap, topic, [(b"k", b"{}") for _ in range(30)])
    metrics = Metrics()

    async def run() -> tuple[float | None, float | None]:
        consumer = new_consumer(broker.bootstrap, topic, group, max_records=10)
        await consumer.start()
        read = {}
        try:
            while not read:  # takes 10 of 30, then takes no more: a stuck reader
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    read[tp] = records[-1].offset + 1
            watch = StallWatch(
                [
                    Watched(
                        "sink:test",
                        lambda: consumer_positions(consumer, read),
                        lambda where: describe_partition(consumer, where),
                    )
                ],
                metrics,
                stall_seconds=1,
                check_seconds=3600,
            )
            watch.check(0)
            watch.check(1)
            stalled = metrics.registry.get_sample_value(
                "reftrack_stalled_partitions", {"consumer": "sink:test"}
            )
            read[next(iter(read))] += 1  # it moves again
            watch.check(2)
            moved = metrics.registry.get_sample_value(
                "reftrack_stalled_partitions", {"consumer": "sink:test"}
            )
            return stalled, moved
        finally:
            await consumer.stop()

    with caplog.at_level(logging.INFO, logger="streams.stall"):
        stalled, moved = asyncio.run(run())
    assert (stalled, moved) == (1, 0)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "sink:test: 1 partitions have messages waiting and have not moved for 1 s: " in (warning)
    assert f"{topic}/0 (20 waiting at 10; fetch position 10, " in warning
    assert "records waiting True" in warning
