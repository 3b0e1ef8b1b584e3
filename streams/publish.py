"""Publishing a batch's messages as one record batch per partition.

`faust.Topic.send` wraps every message in a pending and a future message, runs the send
sensors and registers a completion callback, and the client then makes a future of its
own per message. In a busy worker that cost about half a millisecond of wall time per
message (the tracker's status snapshots of one batch: 0.3 s for 450; docs/performance.md,
"Pipeline throughput: where the time goes"). The hot paths (ingest, tracker, rate
windows) collect their output in an `Outbox` instead: one record batch per partition,
one future per record batch.

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
from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import AppT, TopicT

# Keys whose partition is remembered (about 100 bytes each) before the memory is reset.
PARTITION_CACHE = 100_000


class Outbox:
    """Messages to publish together. `add` them; `flush` sends and waits."""

    def __init__(self, app: AppT) -> None:
        self._app = app
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[int, dict[bytes, int]] = {}  # by partition count, by key
        self._batches: dict[tuple[str, int], Any] = {}
        self._sent: list[asyncio.Future[Any]] = []

    def _producer(self) -> Any:
        # The aiokafka producer under Faust's; Faust exposes no batch send of its own.
        return self._app.producer._ensure_producer()  # type: ignore[attr-defined]

    async def add(self, topic: TopicT | str, key: bytes, value: bytes) -> None:
        """Queue one message for `topic`, on the partition of `key`."""
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        partitions = self._partitions.get(name)
        if partitions is None:
            found = await self._producer().partitions_for(name)
            partitions = self._partitions[name] = sorted(found)
        known = self._partition_of.setdefault(len(partitions), {})
        partition = known.get(key)
        if partition is None:  # murmur2 is pure Python (~10 µs); keys recur (referrals)
            if len(known) >= PARTITION_CACHE:
                known.clear()
            partition = known[key] = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        slot = (name, partition)
        batch = self._batches.get(slot)
        if batch is None:
            batch = self._batches[slot] = self._producer().create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:  # full: send it
            await self._submit(slot)
            batch = self._batches[slot] = self._producer().create_batch()
            batch.append(timestamp=None, key=key, value=value)  # a first message always fits

    async def _submit(self, slot: tuple[str, int]) -> None:
        batch = self._batches.pop(slot)
        batch.close()  # nothing else may be added to it once queued
        self._sent.append(await self._producer().send_batch(batch, slot[0], partition=slot[1]))

    async def flush(self) -> None:
        """Send everything added so far; return once the broker has acknowledged all of
        it. Raises the first send error."""
        for slot in list(self._batches):
            await self._submit(slot)
        sent, self._sent = self._sent, []
        if sent:
            await asyncio.gather(*sent)
