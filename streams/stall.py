"""Stall watch: a partition with messages waiting whose read position does not move.

Lag that grows says a worker is slow. Lag that sits still while the position is frozen
says something is waiting that will not come back by itself: a fetch that never
completes, a publish that never returns, a group stuck in a rebalance. Nothing else a
worker reports names that failure (its lag looks like an ordinary backlog), so the watch
does: a WARNING once per stall, naming the partitions, where each of the worker's own tasks
is waiting and what the consumer knows of the partition, then an INFO when it moves again;
and the gauge `reftrack_stalled_partitions{consumer}` for an alert rule
(ReftrackPartitionStalled, docs/runbooks.md).

`StallDetector` is the bookkeeping, free of Kafka and of the clock; `StallWatch` is the
worker service that feeds it every CHECK_SECONDS.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from mode import Service

from sinks.topic_sink import describe_partition, lag_of
from streams.faust_compat import stream_buffers, streams_running
from streams.metrics import Metrics

log = logging.getLogger(__name__)

# A partition whose position has not moved for this long while messages wait is stalled.
# Far above any healthy pause: a rebalance (seconds), table recovery at 1 M referrals
# (~40 s, and the tracker's partitions are not assigned to it meanwhile), a batch.
STALL_SECONDS = 120.0
CHECK_SECONDS = 10.0

# "topic/partition" -> (next offset to handle, or None before the first; high watermark)
Positions = dict[str, tuple[int | None, int]]

_OWN_CODE = tuple(str(Path(__file__).resolve().parents[1] / d) for d in ("streams", "sinks"))


@dataclass
class Watched:
    """One consumer of the worker: its metric label, its positions, and a description of
    its state of one partition for the warning."""

    name: str
    positions: Callable[[], Positions]
    describe: Callable[[str], str] = lambda where: ""


@dataclass
class _Seen:
    position: int | None
    since: float
    stalled: bool = False


@dataclass
class StallDetector:
    """Which partitions have had messages waiting, at an unchanged position, for
    `stall_seconds` or more."""

    stall_seconds: float = STALL_SECONDS
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)

    def observe(
        self, consumer: str, positions: Positions, now: float
    ) -> tuple[list[str], list[str], int]:
        """Record one look at a consumer's partitions: (partitions newly stalled,
        partitions that moved again after a stall, partitions stalled now)."""
        stalled, moved = [], []
        current = set()
        waiting = lag_of(positions)
        for where, (position, _) in positions.items():
            key = (consumer, where)
            current.add(key)
            seen = self._seen.get(key)
            if seen is None or seen.position != position or not waiting[where]:
                if seen is not None and seen.stalled:
                    moved.append(where)
                self._seen[key] = _Seen(position, now)
                continue
            if not seen.stalled and now - seen.since >= self.stall_seconds:
                seen.stalled = True
                stalled.append(where)
        for key in [k for k in self._seen if k[0] == consumer and k not in current]:
            del self._seen[key]  # no longer assigned here: not this worker's to watch
        count = sum(1 for k, s in self._seen.items() if k[0] == consumer and s.stalled)
        return stalled, moved, count

    def stalled_for(self, consumer: str, where: str, now: float) -> float:
        seen = self._seen.get((consumer, where))
        return 0.0 if seen is None else now - seen.since


class StallWatch(Service):
    """Looks at every watched consumer every `check_seconds`; logs and counts stalls."""

    def __init__(
        self,
        watched: list[Watched],
        metrics: Metrics,
        *,
        stall_seconds: float = STALL_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.watched = watched
        self.metrics = metrics
        self.detector = StallDetector(stall_seconds)
        self.check_seconds = check_seconds
        for w in watched:  # every series from 0
            metrics.stalled_partitions.labels(w.name).set(0)

    @Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.sleep(self.check_seconds)
            if not self.should_stop:
                self.check(time.monotonic())

    def check(self, now: float) -> None:
        for w in self.watched:
            try:
                positions = w.positions()
            except Exception as exc:  # a consumer starting or stopping: look next time
                log.debug("stall watch: no positions of %s: %r", w.name, exc)
                continue
            stalled, moved, count = self.detector.observe(w.name, positions, now)
            self.metrics.stalled_partitions.labels(w.name).set(count)
            if moved:
                log.info("%s: moving again: %s", w.name, ", ".join(moved))
            if stalled:
                lag = lag_of(positions)
                parts = [
                    f"{where} ({lag[where]} waiting at {positions[where][0]}; "
                    f"{_safe(w.describe, where)})"
                    for where in stalled
                ]
                log.warning(
                    "%s: %d partitions have messages waiting and have not moved for %.0f s: "
                    "%s; tasks: %s",
                    w.name,
                    len(stalled),
                    self.detector.stalled_for(w.name, stalled[0], now),
                    "; ".join(parts),
                    " | ".join(task_stacks()),
                )


def _safe(describe: Callable[[str], str], where: str) -> str:
    try:
        return describe(where)
    except Exception as exc:  # a diagnosis must not break the watch
        return f"(not available: {exc!r})"


def task_stacks() -> list[str]:
    """Where each task running reftrack's own code is waiting: its frames in streams/ and
    sinks/, outermost first, then the innermost frame; one line per place ("(×n)" when
    several tasks wait there)."""
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no event loop running here
        return []
    lines: Counter[str] = Counter()
    for task in tasks:
        frames = _await_chain(task.get_coro())
        own = [f for f in frames if f.f_code.co_filename.startswith(_OWN_CODE)]
        if not own:
            continue
        shown = own if own[-1] is frames[-1] else [*own, frames[-1]]
        chain = " > ".join(
            f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}" for f in shown
        )
        lines[chain] += 1
    return sorted(line if n == 1 else f"{line} (×{n})" for line, n in lines.items())


def _await_chain(coro: Any) -> list[FrameType]:
    """The frames of a suspended coroutine and of each coroutine or async generator it
    awaits, outermost first (a task's own get_stack() stops at the outermost). Awaiting
    through a wrapper (an awaitable object's __await__, an async generator's asend) hides
    what it wraps from these attributes; the garbage collector's referents still name it."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    while coro is not None and id(coro) not in seen:
        seen.add(id(coro))
        frame = _frame_of(coro)
        if frame is None:
            wrapped = [r for r in gc.get_referents(coro) if _frame_of(r) is not None]
            if len(wrapped) != 1:
                break
            coro = wrapped[0]
            continue
        frames.append(frame)
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )
    return frames


def _frame_of(obj: Any) -> FrameType | None:
    for name in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(obj, name, None)
        if isinstance(frame, FrameType):
            return frame
    return None


def stream_positions(app: Any, topic: str) -> Positions:
    """Per partition of `topic` the Faust app's consumer is assigned: (the next offset
    the app will process, else its committed offset; the high watermark). Empty while
    the consumer starts."""
    if not app.started:
        return {}
    consumer = app.consumer
    try:
        assignment = sorted(consumer.assignment())
    except ConsumerNotStarted:  # while Faust starts its consumer thread
        return {}
    out: Positions = {}
    for tp in assignment:
        if tp.topic != topic:
            continue
        high = consumer.highwater(tp)
        if high is None:
            continue
        read = consumer._read_offset.get(tp)
        out[f"{tp.topic}/{tp.partition}"] = (
            (read + 1) if read is not None else consumer._committed_offset.get(tp),
            high,
        )
    return out


def tracker_watch(app: Any, topic: str, sequence_state: Callable[[int], str]) -> Watched:
    """The tracker's partitions, watched while the app's tables are recovered and no
    rebalance is under way (while they recover, Faust holds its stream partitions back:
    that is not a stall). A stalled
    partition is described by the tracker (`sequence_state`), Faust's consumer and the
    client under it."""

    def positions() -> Positions:
        if not (app.started and streams_running(app)):
            return {}
        return stream_positions(app, topic)

    def describe(where: str) -> str:
        number = int(where.rpartition("/")[2])
        tp = TP(topic, number)
        c = app.consumer
        active = c._active_partitions
        faust = (
            f"faust committed {c._committed_offset.get(tp)}, "
            f"acked waiting to commit {len(c._acked.get(tp) or ())}, "
            f"active {active is None or tp in active}, paused {tp in c._paused_partitions}, "
            f"buffer full {tp in c._buffered_partitions}"
        )
        app_state = (
            f"flow {'on' if c.flow_active else 'stopped'}, flow control "
            f"{'on' if app.flow_control.is_active() else 'off'}, "
            f"generation {app.consumer_generation_id}, rebalancing {app.rebalancing}, "
            f"stream buffers (then the lane) {stream_buffers(app, topic)}"
        )
        client = describe_partition(c._thread._consumer, where)
        return f"{sequence_state(number)}; {faust}; {app_state}; client: {client}"

    return Watched("tracker", positions, describe)
