"""Ingest's pure parts: a message becomes a pseudonymized event or a DLQ record."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from schemas.errors import ErrorCode, EventRejected
from schemas.pseudonym import pseudonymize
from streams.dlq import dead_letter, redact_patient_id
from streams.ingest import ingest_one

KEY = b"unit-test-key"
NOW = datetime(2025, 6, 1, tzinfo=UTC)
EVENT = {
    "event_id": "e1",
    "referral_id": "R1",
    "org_id": "acme",
    "type": "referral.created",
    "occurred_at": "2025-05-01T10:00:00-04:00",
    "source": "ehr",
    "patient_id": "MRN-77",
    "data": {"priority": "stat", "specialty": "cardiology"},
}


def test_ingest_pseudonymizes_and_keys_by_referral() -> None:
    tracked = ingest_one(json.dumps(EVENT).encode(), NOW, KEY)
    assert tracked.patient_ref == pseudonymize(KEY, "acme", "MRN-77")
    assert tracked.referral_key == "acme/R1"
    assert b"MRN-77" not in tracked.to_json()


def test_null_value_is_rejected() -> None:
    with pytest.raises(EventRejected) as err:
        ingest_one(None, NOW, KEY)
    assert err.value.code is ErrorCode.INVALID_JSON


def dlq_record(raw: bytes | None) -> dict[str, object]:
    return json.loads(
        dead_letter(
            raw=raw,
            code=ErrorCode.NAIVE_TIMESTAMP,
            message="m",
            field="occurred_at",
            topic="t",
            partition=2,
            offset=41,
            pseudonym_key=KEY,
            now=NOW,
        )
    )


def test_dlq_record_says_what_where_and_why() -> None:
    record = dlq_record(b"not json")
    assert record["error_code"] == "naive_timestamp"
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "t",
        2,
        41,
    )
    assert base64.b64decode(str(record["original_base64"])) == b"not json"
    assert record["patient_id_pseudonymized"] is False
    assert record["rejected_at"] == "2025-06-01T00:00:00.000000+00:00"


def test_dlq_record_never_carries_a_raw_patient_id() -> None:
    bad = dict(EVENT, occurred_at="2025-05-01T10:00:00")
    record = dlq_record(json.dumps(bad).encode())
    original = json.loads(base64.b64decode(str(record["original_base64"])))
    assert record["patient_id_pseudonymized"] is True
    assert original["patient_id"] == pseudonymize(KEY, "acme", "MRN-77")
    assert original["occurred_at"] == "2025-05-01T10:00:00"  # the rest is as it came
    assert b"MRN-77" not in json.dumps(record).encode()


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe", b"[1,2]", b'{"patient_id": null}', b'{"a": 1}', b"", b"{" * 5000]
)
def test_redaction_leaves_other_messages_byte_exact(raw: bytes) -> None:
    assert redact_patient_id(raw, KEY) == (raw, False)


def test_null_message_is_recorded_as_null() -> None:
    record = dlq_record(None)
    assert record["original_was_null"] is True
    assert record["original_base64"] == ""


@pytest.mark.parametrize(
    "raw",
    [
        b'{"org_id": "acme", "patient_id": "MRN-77", "referral_id": "R1"',  # cut off
        b'{"org_id": "acme", "patient_id": "MRN-77"}\xff\xfe',  # trailing invalid UTF-8
        b'{"org_id": "acme", "patient_id" : "MRN-77", "x": NaN-ish}',
    ],
)
def test_patient_id_in_unparseable_bytes_is_pseudonymized_in_place(raw: bytes) -> None:
    record = dlq_record(raw)
    body = base64.b64decode(str(record["original_base64"]))
    assert b"MRN-77" not in body
    assert record["patient_id_pseudonymized"] is True
    assert pseudonymize(KEY, "acme", "MRN-77").encode() in body
    assert (
        body.replace(json.dumps(pseudonymize(KEY, "acme", "MRN-77")).encode(), b'"MRN-77"') == raw
    )


def test_patient_ids_at_any_depth_and_cut_off_values_are_pseudonymized() -> None:
    batch = json.dumps(
        [{"org_id": "acme", "patient_id": "MRN-1"}, {"data": {"patient_id": 987654321}}]
    ).encode()
    body = base64.b64decode(str(dlq_record(batch)["original_base64"]))
    assert b"MRN-1" not in body and b"987654321" not in body
    assert json.loads(body)[0]["patient_id"] == pseudonymize(KEY, "acme", "MRN-1")
    assert json.loads(body)[1]["data"]["patient_id"] == pseudonymize(KEY, "", "987654321")
    cut = b'{"org_id": "acme", "patient_id": "MRN-12'
    record = dlq_record(cut)
    assert b"MRN-12" not in base64.b64decode(str(record["original_base64"]))
    assert record["patient_id_pseudonymized"] is True
