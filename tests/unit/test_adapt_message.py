"""`adapt_message`, the pure part of the adapter agents: one raw message to tracked
events, alias links and parked events; all or nothing; no raw patient id out."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from schemas.adapters.base import Draft, Identifier
from schemas.adapters.config import SourceConfig, parse_sources
from schemas.errors import ErrorCode, EventRejected
from schemas.events import EventType, Source
from schemas.pseudonym import pseudonymize
from streams.adapt import ADAPTERS, Adapter, adapt_message, alias_key
from streams.dlq import dead_letter

NOW = datetime(2025, 3, 10, tzinfo=UTC)
KEY = b"unit-test-pseudonym-key"
CONFIG = parse_sources(
    """
orgs:
  nw:
    referral_id_system: P
    alias_systems: [F]
"""
)


def fixed(*drafts: Draft) -> Adapter:
    """An adapter that finds `drafts` in any message (to test what happens after)."""

    def adapt(raw: bytes, config: SourceConfig) -> list[Draft]:
        return list(drafts)

    return Adapter("test", adapt, lambda raw, key: (raw, False))


def draft(kind: EventType, *ids: Identifier, **data: object) -> Draft:
    return Draft(
        type=kind,
        occurred_at=NOW - timedelta(days=1),
        source=Source.REFERRAL_PLATFORM,
        anchor=f"obj/{kind.value}",
        identifiers=ids,
        data=dict(data),
        patient_id="MRN-884412",
        org_id="nw",
    )


def test_resolved_events_are_tracked_with_pseudonyms_and_alias_links() -> None:
    adapter = fixed(
        draft(EventType.REFERRAL_ACCEPTED, Identifier("P", "R-1"), Identifier("F", "f-9"))
    )
    out = adapt_message(adapter, b"x", NOW, CONFIG, KEY)
    [event] = out.tracked
    assert (event.org_id, event.referral_id, event.type) == ("nw", "R-1", "referral.accepted")
    assert event.patient_ref == pseudonymize(KEY, "nw", "MRN-884412")
    assert b"MRN-884412" not in event.to_json()
    assert out.links == [(alias_key("nw", Identifier("F", "f-9")), "R-1")]
    assert out.parked == []


def test_events_named_only_by_an_alias_are_parked_under_it() -> None:
    adapter = fixed(draft(EventType.REFERRAL_ACCEPTED, Identifier("F", "f-9")))
    out = adapt_message(adapter, b"x", NOW, CONFIG, KEY)
    assert out.tracked == [] and out.links == []
    [(alias, event)] = out.parked
    assert alias == "nw/F|f-9"
    assert b"MRN-884412" not in event.to_json()


def test_one_bad_event_rejects_the_whole_message() -> None:
    good = draft(EventType.REFERRAL_ACCEPTED, Identifier("P", "R-1"))
    bad = draft(EventType.APPOINTMENT_SCHEDULED, Identifier("P", "R-1"), appointment_id="A-1")
    with pytest.raises(EventRejected) as caught:
        adapt_message(fixed(good, bad), b"x", NOW, CONFIG, KEY)
    assert caught.value.code is ErrorCode.MISSING_DATA_FIELD  # no appointment_at


def test_a_null_message_is_rejected() -> None:
    with pytest.raises(EventRejected) as caught:
        adapt_message(ADAPTERS["comms"], None, NOW, CONFIG, KEY)
    assert caught.value.code is ErrorCode.INVALID_JSON


def test_ignored_messages_give_nothing() -> None:
    out = adapt_message(fixed(), b"x", NOW, CONFIG, KEY)
    assert (out.tracked, out.links, out.parked) == ([], [], [])


def test_every_source_topic_has_an_adapter_with_a_redactor() -> None:
    assert set(ADAPTERS) == {"fhir", "hl7v2", "comms", "claims"}
    for adapter in ADAPTERS.values():
        clean, _ = adapter.redact(b"\xff not anything", KEY)
        assert isinstance(clean, bytes)


def test_dead_letter_records_use_the_formats_redactor() -> None:
    raw = b'{"kind": "claim", "patient_id": "MRN-884412", "member_id": "W-1"}'
    record = dead_letter(
        raw=raw,
        code=ErrorCode.MISSING_FIELD,
        message="claim_id is required",
        field="claim_id",
        topic="referrals.raw.claims.v1",
        partition=0,
        offset=7,
        pseudonym_key=KEY,
        redact=ADAPTERS["claims"].redact,
    )
    doc = json.loads(record)
    original = base64.b64decode(doc["original_base64"])
    assert b"MRN-884412" not in original and b"W-1" not in original
    assert b'"claim"' in original  # the rest is kept, so the sender can fix it
    assert doc["patient_id_pseudonymized"] is True
