"""Writing Faust tables from batched agents."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from faust.streams import _current_event
from faust.types import EventT


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
