"""The messaging-webhook and claims adapters: mappings, every rejection code, PHI-free
dead-letter copies, and fuzzing (nothing but EventRejected ever escapes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.adapters import claims, comms
from schemas.adapters.base import Resolved, to_event
from schemas.adapters.config import parse_sources
from schemas.errors import ErrorCode, EventRejected
from schemas.events import EventType

NOW = datetime(2025, 3, 10, tzinfo=UTC)
CONFIG = parse_sources(
    """
orgs:
  northwind:
    timezone: America/New_York
    comms_accounts: [AC0123456789abcdef]
"""
)
KEY = b"k" * 32


def _b(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _events(adapter: Any, doc: Any) -> list[Any]:
    out = []
    for draft in adapter.adapt(_b(doc), CONFIG):
        placed = CONFIG.resolve(draft)
        assert isinstance(placed, Resolved)
        out.append(to_event(adapter.KIND, placed.org_id, placed.referral_id, draft, NOW))
    return out


GENERIC = {
    "org_id": "northwind",
    "referral_id": "R-1",
    "message_id": "m-9",
    "status": "sent",
    "channel": "sms",
    "occurred_at": "2025-03-04T15:20:00-05:00",
    "patient_id": "MRN-1",
}

# Twilio's status callback as documented at
# https://www.twilio.com/docs/messaging/guides/track-outbound-message-status
# (form fields), wrapped by the relay with the referral from the callback URL.
TWILIO = {
    "provider": "twilio",
    "received_at": "2025-03-04T20:21:00Z",
    "params": {"referral_id": "R-1"},
    "body": {
        "AccountSid": "AC0123456789abcdef",
        "ApiVersion": "2010-04-01",
        "From": "+15017122661",
        "MessageSid": "SM1342fe1b2c904d1ab04f0fc7a58abca9",
        "MessageStatus": "sent",
        "SmsSid": "SM1342fe1b2c904d1ab04f0fc7a58abca9",
        "SmsStatus": "sent",
        "To": "+15558675310",
    },
}

CLAIM = {
    "kind": "claim",
    "claim_id": "CLM-77",
    "org_id": "northwind",
    "referral_number": "R-1",
    "service_date": "2025-03-06",
    "in_network": False,
    "rendering_provider_id": "NPI-1992753880",
    "specialty": "cardiology",
    "patient_id": "MRN-1",
}


class TestGenericWebhook:
    def test_sent_is_an_outreach_with_its_channel(self) -> None:
        [event] = _events(comms, GENERIC)
        assert event.type == "patient.outreach"
        assert event.org_id == "northwind" and event.referral_id == "R-1"
        assert event.data.channel == "sms"
        assert event.occurred_at == datetime(2025, 3, 4, 20, 20, tzinfo=UTC)
        assert event.source == "comms" and event.patient_id == "MRN-1"

    def test_replied_is_a_response(self) -> None:
        [event] = _events(comms, {**GENERIC, "status": "replied", "channel": None})
        assert event.type == "patient.responded" and event.data.channel is None

    @pytest.mark.parametrize("status", ["delivered", "failed"])
    def test_receipts_are_ignored(self, status: str) -> None:
        assert comms.adapt(_b({**GENERIC, "status": status}), CONFIG) == []

    def test_same_message_twice_is_one_event_id(self) -> None:
        first = _events(comms, GENERIC)[0].event_id
        assert _events(comms, dict(reversed(list(GENERIC.items()))))[0].event_id == first
        assert _events(comms, {**GENERIC, "message_id": "m-10"})[0].event_id != first

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            ({"status": "bounced"}, ErrorCode.UNMAPPED_CODE),
            ({"status": None}, ErrorCode.MISSING_FIELD),
            ({"referral_id": None}, ErrorCode.MISSING_FIELD),
            ({"referral_id": 7}, ErrorCode.INVALID_FIELD),
            ({"message_id": ""}, ErrorCode.INVALID_FIELD),
            ({"channel": None}, ErrorCode.MISSING_DATA_FIELD),
            ({"channel": "pigeon"}, ErrorCode.INVALID_DATA_FIELD),
            ({"occurred_at": "2025-03-04T15:20:00"}, ErrorCode.NAIVE_TIMESTAMP),
            ({"occurred_at": "yesterday"}, ErrorCode.INVALID_FIELD),
            ({"occurred_at": None}, ErrorCode.MISSING_FIELD),
            ({"provider": "acme-sms"}, ErrorCode.UNSUPPORTED_MESSAGE),
        ],
    )
    def test_rejections(self, change: dict[str, Any], code: ErrorCode) -> None:
        with pytest.raises(EventRejected) as caught:
            comms.adapt(_b({**GENERIC, **change}), CONFIG)
        assert caught.value.code is code

    def test_future_time_is_rejected_by_canonical_validation(self) -> None:
        later = (NOW + timedelta(days=2)).isoformat()
        with pytest.raises(EventRejected) as caught:
            _events(comms, {**GENERIC, "occurred_at": later})
        assert caught.value.code is ErrorCode.FUTURE_TIMESTAMP

    def test_no_org_anywhere_is_unknown_org(self) -> None:
        draft = comms.adapt(_b({**GENERIC, "org_id": None}), CONFIG)[0]
        with pytest.raises(EventRejected) as caught:
            CONFIG.resolve(draft)
        assert caught.value.code is ErrorCode.UNKNOWN_ORG


class TestTwilio:
    def test_sent_callback_is_an_sms_outreach_of_the_accounts_org(self) -> None:
        [event] = _events(comms, TWILIO)
        assert event.type == "patient.outreach" and event.data.channel == "sms"
        assert event.org_id == "northwind"  # from AccountSid in the sources file
        assert event.occurred_at == datetime(2025, 3, 4, 20, 21, tzinfo=UTC)

    def test_inbound_reply_is_a_response(self) -> None:
        body = {**TWILIO["body"], "SmsStatus": "received", "Body": "yes, Tuesday works"}
        del body["MessageStatus"]
        [event] = _events(comms, {**TWILIO, "body": body})
        assert event.type == "patient.responded"

    @pytest.mark.parametrize("status", ["queued", "delivered", "undelivered", "failed", "read"])
    def test_other_statuses_are_ignored(self, status: str) -> None:
        body = {**TWILIO["body"], "MessageStatus": status}
        assert comms.adapt(_b({**TWILIO, "body": body}), CONFIG) == []

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            ({"body": None}, ErrorCode.MISSING_FIELD),
            ({"params": None}, ErrorCode.MISSING_FIELD),
            ({"params": {}}, ErrorCode.MISSING_FIELD),
            ({"body": {"MessageSid": "SM1"}}, ErrorCode.MISSING_FIELD),
            ({"body": {"MessageStatus": "sent"}}, ErrorCode.MISSING_FIELD),
            ({"body": {"MessageSid": "SM1", "MessageStatus": "lost"}}, ErrorCode.UNMAPPED_CODE),
            ({"received_at": None}, ErrorCode.MISSING_FIELD),
        ],
    )
    def test_rejections(self, change: dict[str, Any], code: ErrorCode) -> None:
        with pytest.raises(EventRejected) as caught:
            comms.adapt(_b({**TWILIO, **change}), CONFIG)
        assert caught.value.code is code

    def test_dead_letter_copy_drops_numbers_and_text(self) -> None:
        body = {**TWILIO["body"], "Body": "call me at 555"}
        raw = _b({**TWILIO, "body": body, "params": {"referral_id": "R", "patient_id": "MRN-1"}})
        clean, changed = comms.redact(raw, KEY)
        assert changed
        text = clean.decode()
        for secret in ("+15017122661", "+15558675310", "call me", "MRN-1"):
            assert secret not in text
        assert "SM1342fe1b2c904d1ab04f0fc7a58abca9" in text  # what is needed to find it


class TestClaims:
    def test_out_of_network_claim_is_care_out_of_network(self) -> None:
        [event] = _events(claims, CLAIM)
        assert event.type == "care.out_of_network" and event.source == "claims"
        assert event.referral_id == "R-1" and event.data.provider_id == "NPI-1992753880"
        # a service date is midnight in the org's zone (New York, EST in March 6)
        assert event.occurred_at == datetime(2025, 3, 6, 5, tzinfo=UTC)

    def test_timestamp_service_date_is_kept(self) -> None:
        [event] = _events(claims, {**CLAIM, "service_date": "2025-03-06T10:00:00+01:00"})
        assert event.occurred_at == datetime(2025, 3, 6, 10, tzinfo=timezone(timedelta(hours=1)))

    @pytest.mark.parametrize("change", [{"in_network": True}, {"status": "denied"}])
    def test_in_network_or_denied_is_ignored(self, change: dict[str, Any]) -> None:
        assert claims.adapt(_b({**CLAIM, **change}), CONFIG) == []

    @pytest.mark.parametrize(
        ("change", "code"),
        [
            ({"kind": "invoice"}, ErrorCode.UNSUPPORTED_MESSAGE),
            ({"kind": None}, ErrorCode.MISSING_FIELD),
            ({"claim_id": None}, ErrorCode.MISSING_FIELD),
            ({"referral_number": None}, ErrorCode.MISSING_REFERRAL_ID),
            ({"in_network": None}, ErrorCode.MISSING_FIELD),
            ({"in_network": "no"}, ErrorCode.INVALID_FIELD),
            ({"service_date": "03/06/2025"}, ErrorCode.INVALID_FIELD),
            ({"service_date": "2025-02-30"}, ErrorCode.INVALID_FIELD),
            ({"rendering_provider_id": "x" * 200}, ErrorCode.INVALID_FIELD),
        ],
    )
    def test_rejections(self, change: dict[str, Any], code: ErrorCode) -> None:
        with pytest.raises(EventRejected) as caught:
            claims.adapt(_b({**CLAIM, **change}), CONFIG)
        assert caught.value.code is code

    def test_dead_letter_copy_pseudonymizes_the_patient(self) -> None:
        clean, changed = claims.redact(_b({**CLAIM, "member_id": "W123", "in_network": 3}), KEY)
        assert changed and b"MRN-1" not in clean and b"W123" not in clean


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe{}", ErrorCode.INVALID_ENCODING),
        (b"{not json", ErrorCode.INVALID_JSON),
        (b"[1, 2]", ErrorCode.NOT_AN_OBJECT),
        (b"[" * 100_000, ErrorCode.TOO_LARGE),
        (b"[" * 50_000 + b"]" * 50_000, ErrorCode.TOO_LARGE),
        (b"[" * 30_000 + b"]" * 30_000, ErrorCode.INVALID_JSON),  # too deep to read
    ],
)
@pytest.mark.parametrize("adapter", [comms, claims])
def test_bytes_that_are_not_an_object(adapter: Any, raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(EventRejected) as caught:
        adapter.adapt(raw, CONFIG)
    assert caught.value.code is code


# -- fuzzing ---------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["sent", "replied", "sms", "R-1", "2025-03-04T15:20:00Z", "2025-03-04"]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(sorted(base) + ["extra"]), _json, max_size=4).map(
        lambda change: {**base, **change}
    )


def _accounted(adapter: Any, raw: bytes) -> None:
    """Whatever the bytes, the adapter either gives valid events or a DLQ code."""
    try:
        drafts = adapter.adapt(raw, CONFIG)
        for draft in drafts:
            placed = CONFIG.resolve(draft)
            rid = placed.referral_id if isinstance(placed, Resolved) else "alias"
            to_event(adapter.KIND, placed.org_id, rid, draft, NOW)
    except EventRejected as rejected:
        assert isinstance(rejected.code, ErrorCode)
    clean, _ = adapter.redact(raw, KEY)
    assert isinstance(clean, bytes)


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(_mutations(GENERIC), _mutations(TWILIO), _json))
def test_fuzz_comms(doc: Any) -> None:
    _accounted(comms, json.dumps(doc).encode())


@FUZZ
@given(st.one_of(_mutations(CLAIM), _json))
def test_fuzz_claims(doc: Any) -> None:
    _accounted(claims, json.dumps(doc).encode())


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_bytes(raw: bytes) -> None:
    _accounted(comms, raw)
    _accounted(claims, raw)


def test_every_type_a_webhook_gives_is_a_canonical_type() -> None:
    produced = {t for t in comms.GENERIC_STATUSES.values() if t} | {
        t for t in comms.TWILIO_STATUSES.values() if t
    }
    assert produced == {EventType.PATIENT_OUTREACH, EventType.PATIENT_RESPONDED}


# -- round trip: canonical events -> webhooks/claims -> the same canonical events --------


def _simulated(types: set[str]) -> list[dict[str, Any]]:
    from streams.simulator import SimConfig, generate

    messages = generate(SimConfig(seed=3, referrals=400, invalid_rate=0.0), now=NOW)
    docs = [json.loads(m.value) for m in messages if m.fault is None]
    return [d for d in docs if d["type"] in types]


def _same_event(adapter: Any, raw: bytes, original: dict[str, Any]) -> None:
    from schemas.events import parse_event

    want = parse_event(json.dumps(original).encode(), NOW)
    [got] = _events(adapter, json.loads(raw))
    for name in ("org_id", "referral_id", "type", "occurred_at", "patient_id"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.data == want.data


@pytest.mark.parametrize("twilio", [False, True])
def test_round_trip_comms(twilio: bool) -> None:
    from streams.upstream.comms_encode import encode

    events = _simulated({"patient.outreach", "patient.responded"})
    assert len(events) > 100
    for original in events:
        raw = encode(original, twilio=twilio)
        assert raw is not None
        if twilio and original["data"].get("channel") == "sms":
            want = {**original, "data": {"channel": "sms"}}  # Twilio is SMS only
            _same_event(comms, raw, want)
        else:
            _same_event(comms, raw, original)


def test_round_trip_claims() -> None:
    from streams.upstream.claims_encode import encode

    events = _simulated({"care.out_of_network"})
    assert len(events) > 5
    for original in events:
        raw = encode(original)
        assert raw is not None
        _same_event(claims, raw, original)
