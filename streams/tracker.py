"""Tracker: one state record per referral, kept in a Faust table keyed `org_id/referral_id`.

Events arrive in batches (`take_events`): each batch is grouped by referral, folded
into the referral's state with one table write per referral (each write costs a
changelog message), and one status snapshot per touched referral is published to the
compacted status topic. A snapshot is published even when every event in the batch was
a duplicate: after a crash between the table write and the snapshot, the redelivered
events then repair the status topic instead of being silently dropped.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event
from faust.types import AppT, EventT, TableT, TopicT

from schemas.errors import ErrorCode
from schemas.events import TrackedEvent
from schemas.flags import DEFAULT_TARGETS, SlaTargets
from schemas.referral import ReferralState, new_state
from schemas.snapshot import status_snapshot
from streams.dlq import dead_letter
from streams.metrics import Metrics

log = logging.getLogger(__name__)


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@contextmanager
def acting_for(event: EventT) -> Iterator[None]:
    """Let a table write outside per-event iteration use this event's partition.

    Faust routes a table's changelog write to the partition of the "current event";
    in a batch there is none, so we name the last event of the referral being written.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def register_tracker(
    app: AppT,
    tracked: TopicT,
    status: TopicT,
    dlq: TopicT,
    table: TableT,
    metrics: Metrics,
    pseudonym_key: bytes,
    batch: int,
    batch_seconds: float,
    clock: Callable[[], int] = wall_clock_us,
    targets: SlaTargets = DEFAULT_TARGETS,
) -> Any:
    async def track(stream: Any) -> None:
        async for events in stream.take_events(batch, within=batch_seconds):
            groups: dict[str, list[tuple[EventT, TrackedEvent]]] = {}
            for event in events:
                try:
                    tracked_event = TrackedEvent.from_json(event.message.value)
                except Exception as exc:
                    await _reject(event, exc)
                    continue
                groups.setdefault(tracked_event.referral_key, []).append((event, tracked_event))
            now = clock()
            for key, items in groups.items():
                try:
                    await _apply(key, items, now)
                except Exception as exc:  # a bug: keep the events (DLQ), keep the agent
                    log.exception("tracker failed to apply a batch for one referral")
                    for event, _ in items:
                        await _reject(event, exc)

    async def _apply(key: str, items: list[tuple[EventT, TrackedEvent]], now: int) -> None:
        stored = table.get(key)
        first = items[0][1]
        state = (
            ReferralState.from_dict(stored)
            if stored is not None
            else new_state(first.org_id, first.referral_id)
        )
        changed = False
        for _, tracked_event in items:
            if state.apply(tracked_event):
                changed = True
                metrics.events_processed.labels(tracked_event.type, tracked_event.source).inc()
            else:
                metrics.events_duplicate.labels(tracked_event.type).inc()
        if changed:
            with acting_for(items[-1][0]):
                table[key] = state.to_dict()
        snapshot = status_snapshot(state, now, targets)
        await status.send(key=key.encode("utf-8"), value=json.dumps(snapshot).encode("utf-8"))
        metrics.status_out.inc()

    async def _reject(event: EventT, exc: Exception) -> None:
        message = event.message
        log.error(
            "tracker failed on %s/%s@%s: %s",
            message.topic,
            message.partition,
            message.offset,
            type(exc).__name__,
        )
        metrics.dlq.labels(ErrorCode.INTERNAL_ERROR.value).inc()
        await dlq.send(
            key=message.key,
            value=dead_letter(
                raw=message.value,
                code=ErrorCode.INTERNAL_ERROR,
                message=f"tracker failed: {type(exc).__name__}",
                field=None,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                pseudonym_key=pseudonym_key,
            ),
        )

    return app.agent(tracked, name="reftrack.tracker")(track)
