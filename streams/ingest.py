"""Ingest: canonical events in; validated, pseudonymized, re-keyed events out.

Producers may key messages any way they like (or not at all). Ingest re-keys every
valid event by `org_id/referral_id` onto the internal `<prefix>.tracked.v1` topic, so
each referral's events meet in one partition and one tracker, whatever the producer
did. Rejected messages go to the DLQ with their error code. After this step no message
carries a raw patient_id.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from faust.types import AppT, TopicT

from schemas.errors import ErrorCode, EventRejected
from schemas.events import TrackedEvent, parse_event, to_tracked
from schemas.pseudonym import pseudonymize
from streams.dlq import send_dead_letter
from streams.metrics import Metrics
from streams.publish import Outbox

log = logging.getLogger(__name__)


def ingest_one(raw: bytes | None, received_at: datetime, pseudonym_key: bytes) -> TrackedEvent:
    """Validate and pseudonymize one message; raises EventRejected."""
    if raw is None:
        raise EventRejected(ErrorCode.INVALID_JSON, "message has no value (null)")
    event = parse_event(raw, received_at)
    ref = pseudonymize(pseudonym_key, event.org_id, event.patient_id) if event.patient_id else None
    return to_tracked(event, ref)


def register_ingest(
    app: AppT,
    source: TopicT,
    tracked: TopicT,
    dlq: TopicT,
    metrics: Metrics,
    key: bytes,
    batch: int = 1000,
    batch_seconds: float = 0.1,
) -> Any:
    """The ingest agent. It takes events in batches (Faust charges per message it hands
    an agent one by one), queues each valid event's tracked copy in an outbox and
    publishes them together at the end of the batch; the batch's events are acknowledged
    once the broker has acknowledged every tracked copy."""

    outbox = Outbox(app)

    async def ingest(stream: Any) -> None:
        async for events in stream.take_events(batch, within=batch_seconds):
            # counted per batch and topic: a labelled counter costs a lookup per update
            for topic, n in Counter(event.message.topic for event in events).items():
                metrics.messages_in.labels(topic).inc(n)
            for event in events:
                await _ingest(event.message)
            await outbox.flush()

    async def _ingest(message: Any) -> None:
        received_at = datetime.now(UTC)
        try:
            tracked_event = ingest_one(message.value, received_at, key)
        except EventRejected as rejected:
            await _reject(message, rejected.code, rejected.detail, rejected.field)
            return
        except Exception as exc:  # a bug must not lose the message or kill the agent
            log.exception(
                "ingest failed on %s/%s@%s", message.topic, message.partition, message.offset
            )
            await _reject(message, ErrorCode.INTERNAL_ERROR, type(exc).__name__, None)
            return
        lag = (received_at.timestamp() * 1e6 - tracked_event.occurred_at) / 1e6
        metrics.event_time_lag.observe(max(0.0, lag))
        await outbox.add(
            tracked, tracked_event.referral_key.encode("utf-8"), tracked_event.to_json()
        )

    async def _reject(message: Any, code: ErrorCode, detail: str, field: str | None) -> None:
        await send_dead_letter(dlq, metrics, message, code, detail, field, key)

    return app.agent(source, name="reftrack.ingest")(ingest)
