"""What every source adapter hands on: drafts of canonical events, and how a draft
becomes one (org, referral id, deterministic event id, SPEC §3 validation).

An adapter (fhir, hl7v2, comms, claims) reads one raw message and returns `Draft`s. A
draft says what happened (type, time, data) and which identifiers name the referral,
but not yet which referral id it belongs to: that depends on the org's identifier
systems (`schemas.adapters.config`), and a draft that carries only an alias id (a
filler's number, say) is resolved later, in the stream, once a message links the alias
to the referral id (streams/adapt.py).

Pure: no Kafka, no I/O. Adapters raise `EventRejected` with a DLQ code; nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.errors import ErrorCode, EventRejected
from schemas.events import EventType, Source, parse_event

EVENT_ID_PREFIX = "x-"


@dataclass(frozen=True, slots=True)
class Identifier:
    """One business identifier of a referral, as the source system wrote it.

    `system` is the namespace: a FHIR `identifier.system`, an HL7 v2 EI assigning
    authority (`EI.2` namespace id, or `EI.3` universal id), or "" when the source gave
    none. Orgs map systems to roles (referral id or alias) in the sources file.
    """

    system: str
    value: str

    @property
    def key(self) -> str:
        return f"{self.system}|{self.value}"


@dataclass(frozen=True)
class Draft:
    """One canonical event taken from a source message, before its referral is resolved.

    - `anchor`: the source object this event is about, stable across re-deliveries
      ("Task/42", "SIU/SCH|A-55"). With type, time and data it fixes the event id.
    - `identifiers`: every identifier the message gives for the referral, most
      authoritative first (the placer's number before the filler's).
    - `org_id`: set when the message itself (or its sender, through the sources file)
      says which org it belongs to; otherwise `resolve` finds it from `identifiers`.
    - `data`: the canonical `data` fields; datetimes must be timezone-aware.
    """

    type: EventType
    occurred_at: datetime
    source: Source
    anchor: str
    identifiers: tuple[Identifier, ...]
    data: dict[str, Any] = field(default_factory=dict)
    patient_id: str | None = None
    org_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """A draft with its org and referral id: ready to be a canonical event.

    `aliases` are the draft's other identifiers in the org's alias systems: the stream
    records that each of them now names `referral_id`.
    """

    draft: Draft
    org_id: str
    referral_id: str
    aliases: tuple[Identifier, ...]


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A draft named only by alias ids: it waits until one of them is linked."""

    draft: Draft
    org_id: str
    aliases: tuple[Identifier, ...]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise EventRejected(
                ErrorCode.NAIVE_TIMESTAMP, "an adapter produced a timestamp without offset"
            )
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def derive_event_id(kind: str, org_id: str, draft: Draft) -> str:
    """A deterministic event id: the same source fact delivered twice is one event.

    Hashes the adapter kind, org, anchor, type, occurred_at and data (not the identifiers,
    so a fact named by the placer's id in one delivery and the filler's in another is
    still one event). Changing any of these makes a different event.
    """
    material = json.dumps(
        [
            kind,
            org_id,
            draft.anchor,
            draft.type.value,
            _jsonable(draft.occurred_at),
            _jsonable(draft.data),
        ],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return EVENT_ID_PREFIX + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]


def canonical_json(kind: str, org_id: str, referral_id: str, draft: Draft) -> bytes:
    """The canonical event (SPEC §3) for a resolved draft, as JSON bytes."""
    doc: dict[str, Any] = {
        "event_id": derive_event_id(kind, org_id, draft),
        "referral_id": referral_id,
        "org_id": org_id,
        "type": draft.type.value,
        "occurred_at": _jsonable(draft.occurred_at),
        "source": draft.source.value,
        "data": _jsonable(draft.data),
    }
    if draft.patient_id is not None:
        doc["patient_id"] = draft.patient_id
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def to_event(kind: str, org_id: str, referral_id: str, draft: Draft, received_at: datetime) -> Any:
    """Validate a resolved draft exactly as a canonical message is validated.

    An adapter's event passes the same SPEC §3 rules as one a producer sends (lengths,
    enums, required data, time range, clock skew) and is rejected with the same codes.
    """
    return parse_event(canonical_json(kind, org_id, referral_id, draft), received_at)
