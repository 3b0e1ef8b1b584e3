"""Writing Faust tables from batched agents."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from faust.streams import _current_event
from faust.types import TP, EventT

from streams.publish import Outbox


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
    """The changelog writes of some tables, published through an `Outbox`, so an agent
    can wait for exactly them.

    Faust sends changelog writes from a buffer without waiting for the broker, and its
    offset commit does not wait for them either: a SIGKILL between a commit and those
    sends loses the table state of events that will never be read again. An agent that
    awaits `acknowledged()` before its events are acknowledged closes that gap: a
    committed offset always has its table writes on the broker.

    The writes go into the agent's outbox (one record batch per changelog partition, in
    the order the table made them) instead of Faust's buffer, which published them one
    `Topic.send` at a time and made each message's fetch wait for that buffer to ebb.
    What Faust did once a write was acknowledged is done once per batch: the table's
    store records the changelog offset it holds data up to (RocksDB reads only the
    changelog beyond it at the next start).
    """

    def __init__(self, *tables: Any, outbox: Outbox | None = None) -> None:
        self._outbox = outbox if outbox is not None else Outbox(tables[0].app)
        for table in tables:
            self._route(table)

    def _route(self, table: Any) -> None:
        outbox = self._outbox
        registered: set[str] = set()

        def persisted(topic: str) -> Callable[[int, int], None]:
            return lambda partition, offset: table.data.set_persisted_offset(
                TP(topic, partition), offset
            )

        def sending(
            partition: int | None,
            key: Any,
            value: Any,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> _Queued:
            topic = table.changelog_topic
            name = topic.get_topic_name()
            if partition is None:  # Faust passes the current event's partition
                raise RuntimeError(f"a write to {name} without a partition")
            raw_key, _ = topic.prepare_key(key, key_serializer or table.key_serializer)
            raw_value, _ = topic.prepare_value(value, value_serializer or table.value_serializer)
            outbox.add_to(name, partition, raw_key, raw_value)
            if name not in registered:
                outbox.on_acknowledged(name, persisted(name))
                registered.add(name)
            return _Queued(partition)

        table.send_changelog = sending  # Table._send_changelog calls it through self

    async def acknowledged(self) -> None:
        """Publish every write made so far and wait until the broker has acknowledged
        them (with everything else in the same outbox)."""
        await self._outbox.flush()


class _Queued:
    """What Faust's table reads of a changelog send: the partition it went to."""

    __slots__ = ("message",)

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)
