"""Hostile input at the canonical ingest step: every message becomes an event or a
dead-letter record that says why; nothing crashes, hangs or leaks the patient id.

What a rejected message turns into is exactly what the ingest agent sends
(`ingest_one`, then `dead_letter` with the same arguments), so "accounted for" here means:
`ingest_one` returns a TrackedEvent or raises EventRejected with a known code, and the
DLQ record built from it is valid JSON naming that code and holding the original bytes
(redacted). The adapters have their own fuzz tests (test_adapter_*.py).

Case counts: REFTRACK_FUZZ_EXAMPLES (default 300 per property; `make fuzz` runs more).
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import ErrorCode, EventRejected
from schemas.events import EventType, from_micros
from streams.dlq import dead_letter
from streams.ingest import ingest_one

KEY = b"fuzz-key-0123456789abcdef"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
PATIENT = "MRN-FUZZ-4711"
EXAMPLES = int(os.environ.get("REFTRACK_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,  # ms per message: a hang or a quadratic blow-up fails the test
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALID: dict[str, Any] = {
    "event_id": "e-1",
    "referral_id": "R-1",
    "org_id": "acme",
    "type": "appointment.scheduled",
    "occurred_at": "2025-05-01T10:00:00-04:00",
    "source": "scheduling",
    "patient_id": PATIENT,
    "data": {"appointment_id": "A-1", "appointment_at": "2025-05-09T09:00:00Z"},
}

SQLISH = st.sampled_from(
    [
        "'; DROP TABLE referral_state; --",
        "1' OR '1'='1",
        "\\'; SELECT * FROM system.users; --",
        "acme') UNION ALL SELECT patient_ref FROM events --",
        "${jndi:ldap://x}",
        "<script>alert(1)</script>",
        "../../etc/passwd",
    ]
)
CONTROL = st.text(
    alphabet=st.characters(max_codepoint=0x1F) | st.sampled_from("\u2028\u2029\ufeff\u202e"),
    max_size=40,
)
TIMESTAMPS = st.sampled_from(
    [
        "2025-05-01T10:00:00",  # no offset
        "2025-05-01 10:00:00",
        "0001-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
        "2262-04-12T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
        "-0005-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-05-01T25:61:61Z",
        "2025-05-01T10:00:00+99:00",
        "1e400",
        "NaN",
        "",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | SQLISH
    | CONTROL
    | TIMESTAMPS
    | st.text(min_size=129, max_size=300)  # just over the id limits
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event with fields replaced, removed or added, serialized in ways a
    careless producer might (huge, nested, control characters, odd encodings)."""
    doc: dict[str, Any] = json.loads(json.dumps(VALID))
    doc["type"] = draw(st.sampled_from([t.value for t in EventType]))
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from([*VALID, "data.appointment_at", "data.specialty", "extra"]))
        action = draw(st.sampled_from(["replace", "delete", "huge"]))
        target, _, name = field.rpartition(".")
        holder = doc.get("data") if target == "data" and isinstance(doc.get("data"), dict) else doc
        if action == "delete":
            holder.pop(name, None)
        elif action == "huge":
            holder[name] = "x" * draw(st.sampled_from([1_000, 60_000, 70_000]))
        else:
            holder[name] = draw(JSON_VALUES)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    if draw(st.booleans()):
        text = text[:-1] + ', "deep": ' + nested(draw(st.sampled_from([10, 600, 5_000]))) + "}"
    raw = text.encode("utf-8")
    tail = draw(st.sampled_from([b"", b"\xff\xfe", b"\x00", b"\xc3\x28", b"garbage", b"\n"]))
    return raw + tail if draw(st.booleans()) else raw


# The patient id as the value of a `patient_id` key: what the DLQ must pseudonymize. The
# same text under another key (a byte mutation can make `"tient_id"`) is kept, as
# documented (docs/events.md: identifiers under other names).
_KEYED = re.compile(rb'"patient_id"\s*:\s*"' + re.escape(PATIENT.encode()))


def account_for(raw: bytes | None, messages_checked: bool = True) -> str:
    """What the ingest agent does with `raw`; returns "event" or the DLQ error code.
    `messages_checked`: also require that no error message quotes the patient id (true
    for inputs built here, where the id only ever sits under `patient_id`)."""
    try:
        tracked = ingest_one(raw, NOW, KEY)
    except EventRejected as rejected:
        assert isinstance(rejected.code, ErrorCode)
        assert rejected.detail and isinstance(rejected.detail, str)
        record = json.loads(
            dead_letter(
                raw=raw,
                code=rejected.code,
                message=rejected.detail,
                field=rejected.field,
                topic="referrals.events.v1",
                partition=0,
                offset=7,
                pseudonym_key=KEY,
                now=NOW,
            )
        )
        assert record["error_code"] == rejected.code.value
        assert record["error_message"] == rejected.detail
        body = base64.b64decode(record["original_base64"])
        if raw is not None and not record["patient_id_pseudonymized"]:
            assert body == raw  # kept whole when there was no patient id to redact
        if raw is not None:
            keyed = len(_KEYED.findall(raw))
            assert body.count(PATIENT.encode()) <= raw.count(PATIENT.encode()) - keyed
        if messages_checked:
            assert PATIENT not in json.dumps(record) and PATIENT.encode() not in body
        return rejected.code.value
    out = tracked.to_json()
    assert PATIENT.encode() not in out
    assert 1900 <= from_micros(tracked.occurred_at).year <= 2262
    assert 0 < len(tracked.referral_id) <= 128 and 0 < len(tracked.org_id) <= 128
    return "event"


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_accounted_for(raw: bytes) -> None:
    account_for(raw)


@FUZZ
@given(mutated_events())
def test_mutated_events_are_accounted_for(raw: bytes) -> None:
    account_for(raw)


@FUZZ
@given(JSON_VALUES)
def test_any_json_document_is_accounted_for(value: Any) -> None:
    account_for(json.dumps(value, allow_nan=True).encode())


def test_the_hostile_corner_cases_each_get_their_code() -> None:
    """Deterministic anchors for what the properties explore at random."""

    def with_(**changes: Any) -> bytes:
        return json.dumps({**VALID, **changes}).encode()

    assert account_for(with_()) == "event"
    assert account_for(None) == "invalid_json"
    assert account_for(b"\xff" + with_()) == "invalid_encoding"
    assert account_for(nested(5_000).encode()) == "invalid_json"
    assert account_for(with_(referral_id="x" * 70_000)) == "too_large"
    assert account_for(with_(occurred_at="2025-05-01T10:00:00")) == "naive_timestamp"
    assert account_for(with_(occurred_at="9999-12-31T23:59:59Z")) == "timestamp_out_of_range"
    assert account_for(with_(occurred_at="0001-01-01T00:00:00Z")) == "timestamp_out_of_range"
    assert account_for(with_(type="'; DROP TABLE referral_state; --")) == "unknown_type"
    assert account_for(with_(referral_id=["R-1"])) == "invalid_field"
    assert account_for(with_(data={"appointment_id": "A-1"})) == "missing_data_field"
    # SQL-looking and control-character ids are data, not errors: stored as strings
    # (ClickHouse inserts are parameterized) and never interpreted.
    assert account_for(with_(referral_id="R'; DROP TABLE events; --")) == "event"
