"""Publishing a batch's messages as one record batch per partition.

`faust.Topic.send` wraps every message in a pending and a future message, runs the send
sensors and registers a completion callback, and the client then makes a future of its
own per message. In a busy worker that cost about half a millisecond of wall time per
message (the tracker's status snapshots of one batch: 0.3 s for 450; docs/performance.md,
"Pipeline throughput: where the time goes"). The hot paths (ingest, tracker, rate
windows, and the changelog writes of their tables: streams/table_writes.py) collect
their output in an `Outbox` instead: one record batch per partition, one future per
record batch.

Nothing is given up:
- The batches go through the very producer Faust uses (acks=all), and Faust flushes it
  before every offset commit: no offset is committed before the messages published while
  processing it are on the broker.
- The agents wait for `flush()` before their events are acknowledged, so a failed send
  stops the agent instead of being forgotten.
- Partitions are chosen as Kafka's default partitioner does (murmur2 of the key), the
  same choice `Topic.send` made: the tracked topic stays co-partitioned with the tables.
- Each partition's messages keep their order, within a batch and across batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faust.types import AppT, TopicT

from streams.murmur import partition_for

# Keys whose partition is remembered (about 100 bytes each) before the memory is reset.
PARTITION_CACHE = 100_000


Slot = tuple[str, int]  # (topic, partition)


class Outbox:
    """Messages to publish together. `add` them; `flush` sends and waits."""

    def __init__(self, app: AppT) -> None:
        self._app = app
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[int, dict[bytes, int]] = {}  # by partition count, by key
        self._open: dict[Slot, list[Any]] = {}  # slot -> [record batch, messages in it]
        self._full: list[tuple[Slot, Any, int]] = []  # full batches, in the order they filled
        self._after: dict[str, Callable[[int, int], None]] = {}
        self._unkeyed = 0

    def _producer(self) -> Any:
        # The aiokafka producer under Faust's; Faust exposes no batch send of its own.
        return self._app.producer._ensure_producer()  # type: ignore[attr-defined]

    def on_acknowledged(self, topic: str, callback: Callable[[int, int], None]) -> None:
        """Call `callback(partition, offset of the last message)` for each partition of
        `topic` a flush has published to, once the broker has acknowledged it."""
        self._after[topic] = callback

    async def add(
        self, topic: TopicT | str, key: bytes | None, value: bytes, number: int | None = None
    ) -> None:
        """Queue one message for `topic`, on the partition of `key`; without a key, on
        each partition in turn (as Kafka's partitioners spread keyless messages).

        `number`, if given, is a number the caller fixes for `key` (its row's partition
        upstream), and the message goes to partition `number` modulo the topic's: every
        message of a key still lands on one partition, which is all a compacted topic
        that only the sink reads needs, without hashing a key that seldom recurs (rate
        rows: murmur2 was 3 % of a worker's time)."""
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        partitions = self._partitions.get(name)
        if partitions is None:
            found = await self._producer().partitions_for(name)
            partitions = self._partitions[name] = sorted(found)
        if number is not None:
            self.add_to(name, partitions[number % len(partitions)], key, value)
            return
        if key is None:
            self._unkeyed += 1
            self.add_to(name, partitions[self._unkeyed % len(partitions)], None, value)
            return
        known = self._partition_of.setdefault(len(partitions), {})
        partition = known.get(key)
        if partition is None:  # murmur2 is pure Python (~4 µs); keys recur (referrals)
            if len(known) >= PARTITION_CACHE:
                known.clear()
            partition = known[key] = partitions[partition_for(key, len(partitions))]
        self.add_to(name, partition, key, value)

    def add_to(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Queue one message for a given partition of `topic` (None value: a tombstone)."""
        slot = (topic, partition)
        current = self._open.get(slot)
        if current is None:
            current = self._open[slot] = [self._producer().create_batch(), 0]
        if current[0].append(timestamp=None, key=key, value=value) is None:  # full
            self._full.append((slot, current[0], current[1]))
            current = self._open[slot] = [self._producer().create_batch(), 0]
            current[0].append(timestamp=None, key=key, value=value)  # a first always fits
        current[1] += 1

    async def flush(self) -> None:
        """Send everything added so far; return once the broker has acknowledged all of
        it. Raises the first send error."""
        batches = self._full + [(slot, batch, n) for slot, (batch, n) in self._open.items()]
        self._full, self._open = [], {}
        if not batches:
            return
        producer = self._producer()
        sent = []
        for slot, batch, n in batches:  # a partition's batches in the order they filled
            batch.close()  # nothing else may be added to it once queued
            sent.append((slot, n, await producer.send_batch(batch, slot[0], partition=slot[1])))
        await asyncio.gather(*(future for _, _, future in sent))
        for (topic, partition), n, future in sent:
            callback = self._after.get(topic)
            if callback is not None:
                callback(partition, future.result().offset + n - 1)
