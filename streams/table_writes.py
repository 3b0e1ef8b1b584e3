"""Writing Faust tables from batched agents."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


class ChangelogWrites:
    """The changelog writes of some tables since the last wait, to wait for exactly them.

    Faust sends changelog writes from a buffer without waiting for the broker, and its
    offset commit does not wait for them either: a SIGKILL between a commit and those
    sends loses the table state of events that will never be read again. An agent that
    awaits `acknowledged()` before its events are acknowledged closes that gap: a
    committed offset always has its table writes on the broker. Each write's future is
    kept from the moment the table makes it, so none in Faust's buffer, or on its way from
    the buffer to the client, is missed.
    """

    def __init__(self, *tables: Any) -> None:
        self._pending: list[Any] = []
        for table in tables:
            self._watch(table)

    def _watch(self, table: Any) -> None:
        send_changelog = table.send_changelog

        def sending(*args: Any, **kwargs: Any) -> Any:
            future = send_changelog(*args, **kwargs)
            self._pending.append(future)
            return future

        table.send_changelog = sending  # Table._send_changelog calls it through self

    async def acknowledged(self) -> None:
        """Wait until the broker has acknowledged every write made so far."""
        while self._pending:
            pending, self._pending = self._pending, []
            await asyncio.gather(*pending)
