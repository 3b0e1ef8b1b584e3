"""Writing Faust tables from batched agents."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust.streams import _current_event
from faust.types import AppT, EventT


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Let a table write outside per-event iteration use this event's partition.

    Faust routes a table's changelog write to the partition of the "current event";
    in a batch (`take_events`) there is none, so we name an event of the partition being
    written. The tables and their source topic are co-partitioned, so that is the
    partition the key belongs to.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def changelogs_acknowledged(app: AppT) -> None:
    """Wait until the broker has acknowledged every table write made so far.

    Faust sends changelog writes from a buffer without waiting for them, and commits
    source offsets without waiting either (it flushes only "attached" messages). A
    SIGKILL between the commit and the send then loses the table writes of events that
    will never be read again. Awaiting this before a batch's events are acknowledged
    closes that gap: a committed offset always has its table writes on the broker.
    """
    producer = app.producer
    while producer.buffer.size:
        await producer.buffer.flush()
    await producer.flush()
