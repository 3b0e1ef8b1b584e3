"""The tracker's lane: the tracked topic's messages go from Faust's fetch loop straight to
the tracker, in batches, past Faust's conductor, stream queue, stream iteration and
per-event acknowledgement.

Every event crosses Faust's consumer once, into the tracker, and that crossing cost about
a fifth of a worker's time (the conductor's decode, flow checks and queue per message,
the stream's drainer and `take_events`, an Event and an acknowledgement each: py-spy,
bench.pipeline backlog; docs/performance.md). The tracker needs none of it: it reads
each message's value itself, in batches, and acknowledges a batch once its outputs and
table writes are on the broker.

What Faust's consumer does for its streams stays, because the lane uses the same
pieces:
- The tracker is still an agent on the tracked topic, so Faust still subscribes to it,
  assigns its partitions together with the tables' (co-partitioning), recovers the
  tables before the partitions are read, and seeks them to the committed offsets.
- The fetch loop (streams/faust_compat.py) hands each tracked message to `put` instead
  of to the conductor; a message is tracked by the consumer (`track_message`) as the
  conductor's streams would, and acknowledged with `Consumer.ack` after its batch, so
  the commit rules (contiguous runs only) and the wait for in-flight messages at a
  rebalance (`wait_empty`) are Faust's and faust_compat's as before.
- The lane is one of Faust's flow-controlled queues: a rebalance clears it (as it
  clears the streams' buffers) and the fetch loop puts nothing while the flow is
  suspended; what was cleared is read again from the committed offsets, and a hole is
  repaired as one in a stream was (the tracker's sequence check, `retry_lost`).
- A full lane holds the fetch loop back, as a full stream buffer did.

A batch whose processing raises is not acknowledged (Faust's `take_events` acknowledged
it on the way out): the agent crashes and Faust's supervisor starts it again, and the
offset commit stops below the batch; faust_compat seeks back to it once later messages
are acknowledged, and a restart reads from the committed offset anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

# Messages the lane holds before the fetch loop waits: Faust's stream buffer size.
LANE_SIZE = 4096


class Delivered:
    """A tracked message as the tracker sees it: what it used of Faust's Event (its
    `message`), and a weak reference for `table_writes.acting_for`."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, message: Any) -> None:
        self.message = message


class Lane:
    """Tracked messages between the fetch loop (`put`) and the tracker (`take`)."""

    @classmethod
    def for_batches(cls, topic: str, batch: int) -> Lane:
        """A lane with room for the batch being taken and the next one: one no larger
        than a batch would leave every batch short and waiting its whole `within`."""
        return cls(topic, max(LANE_SIZE, 2 * batch))

    def __init__(self, topic: str, maxsize: int = LANE_SIZE) -> None:
        self.topic = topic
        self.maxsize = maxsize
        self._buffer: deque[Any] = deque()
        self._wanted = 1  # how many messages wake the taker
        self._arrived: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    def waiting(self, partition: int) -> int:
        """How many messages of `partition` wait in the lane."""
        return sum(1 for message in list(self._buffer) if message.partition == partition)

    # -- the fetch loop's side ----------------------------------------------------------

    def full(self) -> bool:
        return len(self._buffer) >= self.maxsize

    def room(self) -> asyncio.Future[None]:
        """Done once the lane is not full (at once if it is not)."""
        if self._room is None or self._room.done():
            self._room = asyncio.get_running_loop().create_future()
            if not self.full():
                self._room.set_result(None)
        return self._room

    def put(self, message: Any) -> None:
        self._buffer.append(message)
        arrived = self._arrived
        if arrived is not None and not arrived.done() and len(self._buffer) >= self._wanted:
            arrived.set_result(None)

    # -- the tracker's side -------------------------------------------------------------

    async def take(self, size: int, within: float) -> list[Any]:
        """Up to `size` messages, in the order they came: once there is one, waiting at
        most `within` seconds for `size` (as Faust's `take_events`)."""
        while not self._buffer:
            await self._wait(1, None)
        if len(self._buffer) < size:
            deadline = time.monotonic() + within
            while len(self._buffer) < size and (left := deadline - time.monotonic()) > 0:
                await self._wait(size, left)
        buffer = self._buffer
        batch = [buffer.popleft() for _ in range(min(size, len(buffer)))]
        room = self._room
        if room is not None and not room.done() and not self.full():
            room.set_result(None)
        return batch or await self.take(size, within)  # empty: cleared meanwhile

    async def _wait(self, wanted: int, timeout: float | None) -> None:
        self._wanted = wanted
        arrived = self._arrived = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((arrived,), timeout=timeout)
        finally:
            self._arrived = None
            self._wanted = 1

    # -- flow control (mode's FlowControlEvent calls it at a rebalance and a resume) -------

    def clear(self) -> None:
        """Drop what waits: the rebalance's seek to the committed offsets reads it again
        (nothing of it was acknowledged, so nothing of it was committed)."""
        self._buffer.clear()
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)


async def feed(
    lane: Lane,
    consumer: Any,
    process: Callable[[list[Delivered]], Awaitable[None]],
    size: int,
    within: float,
) -> None:
    """The tracker agent's loop: take a batch, `process` it, then acknowledge its messages
    (a held-back one the tracker marked acknowledged itself, so it is never committed).
    If `process` raises, nothing of the batch is acknowledged."""
    while True:
        messages = await lane.take(size, within)
        await process([Delivered(message) for message in messages])
        for message in messages:
            consumer.ack(message)
