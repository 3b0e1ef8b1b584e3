"""streams.publish.Outbox against the real embedded broker: every message lands, on the
partition Kafka's default partitioner gives its key, in the order it was added."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from streams.broker import EmbeddedBroker, free_port
from streams.publish import Outbox

pytestmark = pytest.mark.integration


async def _create(bootstrap: str, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in topics.items()])
    finally:
        await admin.close()


async def _read(bootstrap: str, topic: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        records: list[Any] = []
        async with asyncio.timeout(30):
            while len(records) < expected:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def _app(producer: AIOKafkaProducer) -> Any:
    """What Outbox uses of a Faust app: its started aiokafka producer."""
    return SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))


def test_every_message_lands_on_its_keys_partition_in_order(broker: EmbeddedBroker) -> None:
    async def main() -> tuple[list[Any], list[Any], list[Any]]:
        await _create(broker.bootstrap, {"out.a": 8, "out.b": 3, "out.probe": 8})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            outbox = Outbox(_app(producer))
            # 3,000 messages of ~200 bytes over 40 keys: many record batches per
            # partition (16 KiB each), so full batches are sent mid-way.
            for i in range(3000):
                await outbox.add("out.a", f"org/R-{i % 40}".encode(), b"%06d" % i + b"x" * 200)
            for i in range(30):
                await outbox.add("out.b", f"k{i}".encode(), b"%d" % i)
            await outbox.flush()
            await outbox.flush()  # nothing left: returns at once
            # the client's own choice of partition, for comparison
            for k in range(40):
                await producer.send_and_wait("out.probe", b"", key=f"org/R-{k}".encode())
        finally:
            await producer.stop()
        return (
            await _read(broker.bootstrap, "out.a", 3000),
            await _read(broker.bootstrap, "out.b", 30),
            await _read(broker.bootstrap, "out.probe", 40),
        )

    a, b, probe = asyncio.run(main())
    assert sorted(int(r.value[:6]) for r in a) == list(range(3000))
    assert sorted(int(r.value) for r in b) == list(range(30))
    client_partition = {r.key: r.partition for r in probe}
    by_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for r in a:
        assert r.partition == client_partition[r.key]
        by_key[r.key].append((r.offset, int(r.value[:6])))
    for key, seen in by_key.items():
        in_offset_order = [n for _, n in sorted(seen)]
        assert in_offset_order == sorted(in_offset_order), key
    assert len({r.partition for r in a}) > 1


def test_a_message_given_a_number_lands_on_that_partition_modulo_the_topics(
    broker: EmbeddedBroker,
) -> None:
    """Rate rows: the cell's tracked partition picks the partition, not murmur2 of the
    key; each key's messages still land on one partition, in order."""

    async def main() -> list[Any]:
        await _create(broker.bootstrap, {"out.n": 3})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        try:
            outbox = Outbox(_app(producer))
            for i in range(80):
                number = i % 8  # as from 8 tracked partitions
                await outbox.add("out.n", f"{number}/cell".encode(), b"%d" % i, number)
            await outbox.flush()
        finally:
            await producer.stop()
        return await _read(broker.bootstrap, "out.n", 80)

    records = asyncio.run(main())
    assert sorted(int(r.value) for r in records) == list(range(80))
    for r in records:
        number = int(r.key.split(b"/")[0])
        assert r.partition == number % 3, (r.key, r.partition)
    by_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)
    for r in records:
        by_key[r.key].append((r.offset, int(r.value)))
    for key, seen in by_key.items():
        assert [n for _, n in sorted(seen)] == sorted(n for _, n in seen), key


def test_a_failed_send_raises_from_flush(tmp_path: Path) -> None:
    """The broker goes away after messages were added: the record batches expire
    unacknowledged and flush raises, so the agent stops before its events are
    acknowledged (nothing is committed past them)."""

    async def main(bootstrap: str, stop_broker: Any) -> None:
        await _create(bootstrap, {"out.lost": 2})
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", request_timeout_ms=3000
        )
        await producer.start()
        try:
            outbox = Outbox(_app(producer))
            await outbox.add("out.lost", b"k", b"before")  # partitions known from here on
            await outbox.flush()
            stop_broker()
            await outbox.add("out.lost", b"k", b"after")
            with pytest.raises(KafkaError):
                await outbox.flush()
        finally:
            await producer.stop()

    broker = EmbeddedBroker(free_port(), log_path=tmp_path / "tansu.log")
    with broker:
        asyncio.run(main(broker.bootstrap, broker.stop))


def test_acknowledged_offsets_are_those_of_each_partitions_last_message(
    broker: EmbeddedBroker,
) -> None:
    """What a table's store records as persisted (streams/table_writes.py): per partition,
    the offset of the last message published, over several full record batches."""

    async def main() -> tuple[dict[int, int], list[Any]]:
        await _create(broker.bootstrap, {"out.changelog": 3})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        await producer.start()
        reported: dict[int, int] = {}
        try:
            outbox = Outbox(_app(producer))
            outbox.on_acknowledged("out.changelog", reported.__setitem__)
            for round_ in range(2):  # the second flush continues after the first
                for i in range(1500):
                    outbox.add_to("out.changelog", i % 2, b"k%d" % i, b"v" * 100)
                await outbox.flush()
                if round_ == 0:
                    first = dict(reported)
        finally:
            await producer.stop()
        assert first == {0: 749, 1: 749}
        return reported, await _read(broker.bootstrap, "out.changelog", 3000)

    reported, records = asyncio.run(main())
    last = {p: max(r.offset for r in records if r.partition == p) for p in (0, 1)}
    assert reported == last == {0: 1499, 1: 1499}
    assert not any(r.partition == 2 for r in records)
