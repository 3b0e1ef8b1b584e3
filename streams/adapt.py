"""Source adapters in the stream: the raw topics (FHIR, HL7 v2, messaging, claims) in,
validated and pseudonymized tracked events out. For these sources this is the ingest
step: after it no message carries a raw patient id.

One raw message gives zero or more events (a FHIR bundle gives several; a delivery
receipt none). They are validated together: if one is rejected the whole message goes
to the DLQ, with personal data removed by the adapter's `redact`.

Referral ids across systems: an event named by the org's referral id goes straight to
the tracked topic, and each alias id it also carries (a filler's number) is linked to
that referral id on the internal `<prefix>.idlinks.v1` topic. An event named only by an
alias is parked there, keyed by the alias, in a table (`id-links`); when the alias is
linked, its parked events are released to the tracked topic. Link and parked events for
one alias share a key, so they meet in one partition, in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from faust.types import AppT, TableT, TopicT

from schemas.adapters import claims, comms, fhir, hl7v2
from schemas.adapters.base import Draft, Identifier, Resolved, to_event
from schemas.adapters.config import SourceConfig
from schemas.errors import ErrorCode, EventRejected
from schemas.events import TrackedEvent, to_tracked
from schemas.pseudonym import pseudonymize
from streams.dlq import send_dead_letter
from streams.metrics import Metrics
from streams.table_writes import ChangelogWrites

log = logging.getLogger(__name__)

MAX_PARKED_PER_ALIAS = 1000


@dataclass(frozen=True)
class Adapter:
    """One source format: how to read it, and how to make a dead-letter copy of it."""

    kind: str
    adapt: Callable[[bytes, SourceConfig], list[Draft]]
    redact: Callable[[bytes, bytes], tuple[bytes, bool]]


ADAPTERS: dict[str, Adapter] = {
    m.KIND: Adapter(m.KIND, m.adapt, m.redact) for m in (fhir, hl7v2, comms, claims)
}


@dataclass
class Outcome:
    """What one raw message became."""

    tracked: list[TrackedEvent] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (alias key, referral id)
    parked: list[tuple[str, TrackedEvent]] = field(default_factory=list)  # (alias key, event)


def alias_key(org_id: str, alias: Identifier) -> str:
    return f"{org_id}/{alias.system}|{alias.value}"


def adapt_message(
    adapter: Adapter,
    raw: bytes | None,
    received_at: datetime,
    config: SourceConfig,
    pseudonym_key: bytes,
) -> Outcome:
    """Adapt, place and validate every event of one raw message; raises EventRejected."""
    if raw is None:
        raise EventRejected(ErrorCode.INVALID_JSON, "message has no value (null)")
    out = Outcome()
    for draft in adapter.adapt(raw, config):
        placed = config.resolve(draft)
        rid = placed.referral_id if isinstance(placed, Resolved) else placed.aliases[0].value
        event = to_event(adapter.kind, placed.org_id, rid, draft, received_at)
        ref = (
            pseudonymize(pseudonym_key, placed.org_id, event.patient_id)
            if event.patient_id
            else None
        )
        tracked = to_tracked(event, ref)
        if isinstance(placed, Resolved):
            out.tracked.append(tracked)
            out.links.extend((alias_key(placed.org_id, a), rid) for a in placed.aliases)
        else:
            out.parked.append((alias_key(placed.org_id, placed.aliases[0]), tracked))
    return out


def register_adapters(
    app: AppT,
    raw_topics: dict[str, TopicT],
    tracked: TopicT,
    links: TopicT,
    dlq: TopicT,
    metrics: Metrics,
    key: bytes,
    config: SourceConfig,
) -> None:
    """One agent per raw topic, all the same code with their own adapter."""
    for kind, source in raw_topics.items():
        app.agent(source, name=f"reftrack.adapt.{kind}")(
            _adapt_agent(ADAPTERS[kind], tracked, links, dlq, metrics, key, config)
        )


def _adapt_agent(
    adapter: Adapter,
    tracked: TopicT,
    links: TopicT,
    dlq: TopicT,
    metrics: Metrics,
    key: bytes,
    config: SourceConfig,
) -> Callable[[Any], Any]:
    kind = adapter.kind

    async def adapt(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            metrics.messages_in.labels(message.topic).inc()
            received_at = datetime.now(UTC)
            try:
                out = adapt_message(adapter, message.value, received_at, config, key)
            except EventRejected as rejected:
                await _reject(message, rejected.code, rejected.detail, rejected.field)
                continue
            except Exception as exc:  # a bug must not lose the message or stop the agent
                log.exception(
                    "%s adapter failed on %s/%s@%s",
                    kind,
                    message.topic,
                    message.partition,
                    message.offset,
                )
                await _reject(message, ErrorCode.INTERNAL_ERROR, type(exc).__name__, None)
                continue
            produced = len(out.tracked) + len(out.parked)
            metrics.adapter_messages.labels(kind, "adapted" if produced else "ignored").inc()
            metrics.adapter_events.labels(kind).inc(produced)
            for item in out.tracked:
                await tracked.send(key=item.referral_key.encode("utf-8"), value=item.to_json())
            for alias, referral_id in out.links:
                await links.send(key=alias.encode("utf-8"), value=_link(referral_id))
            for alias, item in out.parked:
                await links.send(key=alias.encode("utf-8"), value=_parked(item))

    async def _reject(message: Any, code: ErrorCode, detail: str, field_: str | None) -> None:
        metrics.adapter_messages.labels(kind, "rejected").inc()
        await send_dead_letter(
            dlq, metrics, message, code, detail, field_, key, redact=adapter.redact
        )

    return adapt


def _link(referral_id: str) -> bytes:
    return json.dumps({"link": referral_id}, ensure_ascii=False).encode("utf-8")


def _parked(item: TrackedEvent) -> bytes:
    return b'{"parked":' + item.to_json() + b"}"


class IdLinks:
    """The alias table: which referral id an alias names, and events waiting for it.

    Record (key `org/system|value`): `{"referral_id": str | None, "parked": [event]}`.
    The first link of an alias wins; a different later one is counted and logged (a
    filler's number reused for another referral is a data problem upstream).
    """

    def __init__(
        self, table: TableT, tracked: TopicT, dlq: TopicT, metrics: Metrics, key: bytes
    ) -> None:
        self.table = table
        self.tracked = tracked
        self.dlq = dlq
        self.metrics = metrics
        self.key = key
        self._writes = ChangelogWrites(table)

    async def on_message(self, message: Any) -> None:
        alias = message.key.decode("utf-8")
        doc = json.loads(message.value)
        record = self.table.get(alias) or {"referral_id": None, "parked": []}
        known = record["referral_id"]
        if "link" in doc:
            referral_id = doc["link"]
            if known is None:
                await self._release(record["parked"], referral_id)
                self.table[alias] = {"referral_id": referral_id, "parked": []}
                await self._writes.acknowledged()
            elif known != referral_id:
                self.metrics.alias_conflicts.inc()
                log.warning("alias linked to two referrals; the first link is kept")
            return
        item = TrackedEvent.from_dict(doc["parked"])
        if known is not None:  # linked while this one was on its way: it waited too
            self.metrics.adapter_parked.inc()
            await self._release([doc["parked"]], known)
            return
        if len(record["parked"]) >= MAX_PARKED_PER_ALIAS:
            await self._overflow(message, item)
            return
        self.metrics.adapter_parked.inc()
        self.table[alias] = {"referral_id": None, "parked": [*record["parked"], doc["parked"]]}
        await self._writes.acknowledged()  # before this message is committed

    async def _release(self, parked: list[dict[str, Any]], referral_id: str) -> None:
        """Send parked events under their referral id; acknowledged before the table
        forgets them, so a crash in between sends them again (the tracker dedups)."""
        futures = []
        for raw in parked:
            item = replace(TrackedEvent.from_dict(raw), referral_id=referral_id)
            futures.append(
                await self.tracked.send(key=item.referral_key.encode("utf-8"), value=item.to_json())
            )
        for fut in futures:
            await fut
        self.metrics.adapter_released.inc(len(parked))

    async def _overflow(self, message: Any, item: TrackedEvent) -> None:
        await send_dead_letter(
            self.dlq,
            self.metrics,
            message,
            ErrorCode.UNRESOLVED_REFERRAL,
            f"over {MAX_PARKED_PER_ALIAS} events wait for this alias to be linked",
            None,
            self.key,
            raw=item.to_json(),
        )


def register_id_links(app: AppT, links: TopicT, id_links: IdLinks) -> None:
    async def resolve(stream: Any) -> None:
        async for event in stream.events():
            await id_links.on_message(event.message)

    app.agent(links, name="reftrack.idlinks")(resolve)
