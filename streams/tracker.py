"""Tracker: one state record per referral, kept in a Faust table keyed `org_id/referral_id`.

Events arrive in batches (`take_events`). Each batch is grouped by referral and folded
into the referral's state, with one table write per referral (each write costs a
changelog message). One status snapshot per touched referral goes to the compacted
status topic. The accepted events then go to the window counter. A snapshot is
published even when every event in the batch was a duplicate: after a crash between the
table write and the snapshot, the redelivered events repair the status topic instead of
being silently dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faust.types import AppT, EventT, TableT, TopicT

from schemas.errors import ErrorCode
from schemas.events import TrackedEvent
from schemas.flags import DEFAULT_TARGETS, SlaTargets
from schemas.referral import ReferralState, new_state
from schemas.snapshot import status_snapshot
from streams.dlq import dead_letter
from streams.metrics import Metrics
from streams.table_writes import acting_for
from streams.windows import WindowCounter

log = logging.getLogger(__name__)

Item = tuple[EventT, TrackedEvent]


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Tracker:
    table: TableT
    status: TopicT
    dlq: TopicT
    windows: WindowCounter
    metrics: Metrics
    pseudonym_key: bytes
    clock: Callable[[], int] = wall_clock_us
    targets: SlaTargets = DEFAULT_TARGETS

    async def process(self, events: list[EventT]) -> None:
        groups: dict[str, list[Item]] = {}
        for event in events:
            try:
                tracked_event = TrackedEvent.from_json(event.message.value or b"")
            except Exception as exc:
                await self.reject(event, exc)
                continue
            groups.setdefault(tracked_event.referral_key, []).append((event, tracked_event))
        now = self.clock()
        accepted: list[Item] = []
        for key, items in groups.items():
            try:
                accepted.extend(await self.apply(key, items, now))
            except Exception as exc:  # a bug: keep the events (DLQ), keep the agent
                log.exception("tracker failed to apply a batch for one referral")
                for event, _ in items:
                    await self.reject(event, exc)
        await self.windows.count(accepted)

    async def apply(self, key: str, items: list[Item], now: int) -> list[Item]:
        """Fold a referral's events in; return the accepted copies among them (new
        events, and accepted copies redelivered after a crash)."""
        stored = self.table.get(key)
        first = items[0][1]
        state = (
            ReferralState.from_dict(stored)
            if stored is not None
            else new_state(first.org_id, first.referral_id)
        )
        accepted: list[Item] = []
        for event, tracked_event in items:
            offset = event.message.offset
            if state.apply(tracked_event, offset):
                self.metrics.events_processed.labels(tracked_event.type, tracked_event.source).inc()
            else:
                self.metrics.events_duplicate.labels(tracked_event.type).inc()
            if state.accepted_position(tracked_event.event_id) == offset:
                accepted.append((event, tracked_event))
        # New events, or accepted copies redelivered after a crash: write, so a changelog
        # write lost in the crash is made good.
        if accepted:
            with acting_for(items[-1][0]):
                self.table[key] = state.to_dict()
        snapshot = status_snapshot(state, now, self.targets)
        await self.status.send(key=key.encode("utf-8"), value=json.dumps(snapshot).encode("utf-8"))
        self.metrics.status_out.inc()
        return accepted

    async def reject(self, event: EventT, exc: Exception) -> None:
        message = event.message
        log.error(
            "tracker failed on %s/%s@%s: %s",
            message.topic,
            message.partition,
            message.offset,
            type(exc).__name__,
        )
        self.metrics.dlq.labels(ErrorCode.INTERNAL_ERROR.value).inc()
        await self.dlq.send(
            key=message.key,
            value=dead_letter(
                raw=message.value,
                code=ErrorCode.INTERNAL_ERROR,
                message=f"tracker failed: {type(exc).__name__}",
                field=None,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                pseudonym_key=self.pseudonym_key,
            ),
        )


def register_tracker(
    app: AppT, tracked: TopicT, tracker: Tracker, batch: int, batch_seconds: float
) -> Any:
    async def track(stream: Any) -> None:
        async for events in stream.take_events(batch, within=batch_seconds):
            await tracker.process(events)

    return app.agent(tracked, name="reftrack.tracker")(track)
