"""SPEC §3: every rejection rule of the canonical event, with its exact DLQ code."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from schemas.errors import ErrorCode, EventRejected
from schemas.events import (
    DATA_MODELS,
    MAX_MESSAGE_BYTES,
    EventType,
    TrackedEvent,
    from_micros,
    parse_event,
    to_micros,
    to_tracked,
)

RECEIVED = datetime(2025, 3, 5, 12, 0, tzinfo=UTC)
PATIENT = "MRN-884412-SECRET"
DROP = object()  # marks a field to remove from the document

MINIMAL_DATA: dict[str, dict[str, Any]] = {
    "referral.created": {"priority": "routine", "specialty": "cardiology"},
    "referral.routed": {},
    "referral.accepted": {},
    "referral.declined": {},
    "referral.cancelled": {},
    "patient.outreach": {"channel": "sms"},
    "patient.responded": {},
    "appointment.scheduled": {
        "appointment_id": "A-55",
        "appointment_at": "2025-03-11T09:00:00-05:00",
    },
    "appointment.rescheduled": {
        "appointment_id": "A-55",
        "appointment_at": "2025-03-12T09:00:00-05:00",
    },
    "appointment.cancelled": {"appointment_id": "A-55"},
    "appointment.no_show": {"appointment_id": "A-55"},
    "appointment.completed": {"appointment_id": "A-55"},
    "report.received": {},
    "care.out_of_network": {},
    "patient.feedback": {"score": 4},
}

REQUIRED_DATA: list[tuple[str, str]] = [
    ("referral.created", "priority"),
    ("referral.created", "specialty"),
    ("patient.outreach", "channel"),
    ("appointment.scheduled", "appointment_id"),
    ("appointment.scheduled", "appointment_at"),
    ("appointment.rescheduled", "appointment_id"),
    ("appointment.rescheduled", "appointment_at"),
    ("appointment.cancelled", "appointment_id"),
    ("appointment.no_show", "appointment_id"),
    ("appointment.completed", "appointment_id"),
    ("patient.feedback", "score"),
]

TOP_LEVEL_REQUIRED = ("event_id", "referral_id", "org_id", "type", "occurred_at", "source")


def doc(event_type: str = "referral.created", data: Any = None, **fields: Any) -> dict[str, Any]:
    """A valid document of `event_type`; `fields` override top-level fields (DROP removes)."""
    d: dict[str, Any] = {
        "event_id": "e-7f3a",
        "referral_id": "R-100234",
        "org_id": "northwind",
        "type": event_type,
        "occurred_at": "2025-03-04T15:20:00-05:00",
        "source": "scheduling",
        "patient_id": PATIENT,
        "data": dict(MINIMAL_DATA[event_type]) if data is None else data,
    }
    d.update(fields)
    return {k: v for k, v in d.items() if v is not DROP}


def with_data(event_type: str, **fields: Any) -> dict[str, Any]:
    data = dict(MINIMAL_DATA[event_type])
    data.update(fields)
    return doc(event_type, {k: v for k, v in data.items() if v is not DROP})


def encode(d: Any) -> bytes:
    return json.dumps(d).encode("utf-8")


def rejected(raw: bytes | str | dict[str, Any], received_at: datetime = RECEIVED) -> EventRejected:
    message = encode(raw) if isinstance(raw, dict) else raw
    with pytest.raises(EventRejected) as info:
        parse_event(message, received_at)
    return info.value


def accepted(raw: bytes | str | dict[str, Any], received_at: datetime = RECEIVED) -> Any:
    return parse_event(encode(raw) if isinstance(raw, dict) else raw, received_at)


def padded(size: int) -> bytes:
    """A valid message of exactly `size` bytes (padding in an ignored field)."""
    bare = encode(doc(padding=""))
    raw = encode(doc(padding="x" * (size - len(bare))))
    assert len(raw) == size
    return raw


# -- too_large ----------------------------------------------------------------------------


def test_message_of_exactly_64_kib_is_accepted() -> None:
    assert accepted(padded(MAX_MESSAGE_BYTES)).event_id == "e-7f3a"


def test_message_over_64_kib_is_too_large() -> None:
    assert rejected(padded(MAX_MESSAGE_BYTES + 1)).code is ErrorCode.TOO_LARGE


def test_size_of_str_input_is_counted_in_utf8_bytes() -> None:
    # 40,000 characters but 80,000 bytes.
    text = json.dumps(doc(padding="é" * 40_000), ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode("utf-8"))
    assert rejected(text).code is ErrorCode.TOO_LARGE


def test_too_large_is_checked_before_anything_else() -> None:
    assert rejected(b"\xff" * (MAX_MESSAGE_BYTES + 1)).code is ErrorCode.TOO_LARGE


# -- invalid_encoding / invalid_json / not_an_object -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "\xff"}',
        json.dumps(doc(referral_id="R-ü"), ensure_ascii=False).encode("latin-1"),
        b"\xc3",  # truncated multi-byte sequence
        b"\xed\xa0\x80",  # an encoded surrogate is not UTF-8
    ],
)
def test_invalid_encoding(raw: bytes) -> None:
    assert rejected(raw).code is ErrorCode.INVALID_ENCODING


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"{'event_id': 'e-1'}", b'{"a": 1} trailing', b"NaN-ish", b'{"a": 1,}'],
)
def test_invalid_json(raw: bytes) -> None:
    assert rejected(raw).code is ErrorCode.INVALID_JSON


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"1", b'"referral.created"', b"null", b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert rejected(raw).code is ErrorCode.NOT_AN_OBJECT


# -- missing_field ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absent", "null"])
@pytest.mark.parametrize("name", TOP_LEVEL_REQUIRED)
def test_missing_field(name: str, how: str) -> None:
    err = rejected(doc(**{name: DROP if how == "absent" else None}))
    assert err.code is ErrorCode.MISSING_FIELD
    assert err.field == name


def test_empty_object_is_missing_fields() -> None:
    assert rejected(b"{}").code is ErrorCode.MISSING_FIELD


# -- invalid_field ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("event_id", "e" * 129),
        ("referral_id", "R" * 129),
        ("org_id", "o" * 65),
        ("patient_id", "P" * 129),
        ("event_id", ""),
        ("referral_id", ""),
        ("org_id", ""),
        ("patient_id", ""),
        ("event_id", 123),
        ("referral_id", 100234),
        ("org_id", ["northwind"]),
        ("event_id", {"id": "e-1"}),
        ("patient_id", 884412),
        ("event_id", True),
        ("org_id", "north/wind"),
        ("org_id", "/"),
        ("event_id", "e-1\n"),
        ("referral_id", "R\x00100"),
        ("org_id", "north\twind"),
        ("patient_id", "MRN\x7f1"),
        ("occurred_at", 1741119600),
        ("occurred_at", "yesterday"),
        ("occurred_at", "1741119600"),  # unix seconds are not RFC 3339
        ("occurred_at", "2025-03-04"),
        ("occurred_at", "2025-03-04T15:20-05:00"),  # RFC 3339 requires seconds
        ("occurred_at", "2025-03-04T15:20:00-0500"),  # offset needs a colon
        ("occurred_at", "2025-03-04T25:20:00Z"),
        ("occurred_at", "2025-02-30T15:20:00Z"),
    ],
)
def test_invalid_field(name: str, value: Any) -> None:
    err = rejected(doc(**{name: value}))
    assert err.code is ErrorCode.INVALID_FIELD
    assert err.field == name


@pytest.mark.parametrize(
    ("name", "length"),
    [("event_id", 128), ("referral_id", 128), ("org_id", 64), ("patient_id", 128)],
)
def test_id_lengths_at_the_limit_are_accepted(name: str, length: int) -> None:
    event = accepted(doc(**{name: "x" * length}))
    assert getattr(event, name) == "x" * length


def test_one_character_ids_are_accepted() -> None:
    event = accepted(doc(event_id="e", referral_id="R", org_id="n"))
    assert (event.event_id, event.referral_id, event.org_id) == ("e", "R", "n")


def test_slash_is_allowed_in_referral_and_event_ids() -> None:
    assert accepted(doc(referral_id="R/1", event_id="e/1")).referral_id == "R/1"


# -- unknown_type / unknown_source --------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["referral.unknown", "Referral.Created", "referral_created", "", "referral.created ", 5],
)
def test_unknown_type(value: Any) -> None:
    err = rejected(doc(type=value))
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert err.field == "type"


@pytest.mark.parametrize("value", ["fax", "EHR", "", "scheduling ", 3])
def test_unknown_source(value: Any) -> None:
    err = rejected(doc(source=value))
    assert err.code is ErrorCode.UNKNOWN_SOURCE
    assert err.field == "source"


# -- naive_timestamp ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["2025-03-04T15:20:00", "2025-03-04T15:20:00.123456", "2025-03-04 15:20:00"]
)
def test_naive_occurred_at(value: str) -> None:
    err = rejected(doc(occurred_at=value))
    assert err.code is ErrorCode.NAIVE_TIMESTAMP
    assert err.field == "occurred_at"


@pytest.mark.parametrize("event_type", ["appointment.scheduled", "appointment.rescheduled"])
def test_naive_appointment_at(event_type: str) -> None:
    err = rejected(with_data(event_type, appointment_at="2025-03-11T09:00:00"))
    assert err.code is ErrorCode.NAIVE_TIMESTAMP
    assert err.field == "data.appointment_at"


# -- future_timestamp ---------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def test_occurred_at_exactly_24h_after_ingestion_is_accepted() -> None:
    at = RECEIVED + timedelta(hours=24)
    assert accepted(doc(occurred_at=_iso(at))).occurred_at == at


def test_occurred_at_24h_plus_1us_after_ingestion_is_rejected() -> None:
    at = RECEIVED + timedelta(hours=24, microseconds=1)
    err = rejected(doc(occurred_at=_iso(at)))
    assert err.code is ErrorCode.FUTURE_TIMESTAMP
    assert err.field == "occurred_at"


def test_future_check_compares_instants_not_wall_clocks() -> None:
    # 24h+1µs after ingestion, written in another offset; and received_at in an offset.
    tz = datetime.fromisoformat("2025-01-01T00:00:00-05:00").tzinfo
    late = (RECEIVED + timedelta(hours=24, microseconds=1)).astimezone(tz)
    assert rejected(doc(occurred_at=_iso(late))).code is ErrorCode.FUTURE_TIMESTAMP
    ok = (RECEIVED + timedelta(hours=24)).astimezone(tz)
    assert accepted(doc(occurred_at=_iso(ok)), RECEIVED.astimezone(tz)).occurred_at == ok


def test_past_and_appointment_far_ahead_are_accepted() -> None:
    # Only occurred_at is bounded by ingestion time; appointments may be months out.
    event = accepted(
        with_data("appointment.scheduled", appointment_at="2026-01-01T09:00:00Z"),
    )
    assert event.data.appointment_at.year == 2026
    assert accepted(doc(occurred_at="2001-01-01T00:00:00Z")).occurred_at.year == 2001


def test_naive_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_event(encode(doc()), datetime(2025, 3, 5))


# -- timestamp_out_of_range ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "1899-12-31T23:59:59.999999Z",
        "1900-01-01T00:30:00+01:00",  # 1899-12-31T23:30Z
        "0001-01-01T00:00:00Z",
        "2262-04-11T00:00:00Z",
        "2300-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
    ],
)
def test_occurred_at_out_of_range(value: str) -> None:
    err = rejected(doc(occurred_at=value))
    assert err.code is ErrorCode.TIMESTAMP_OUT_OF_RANGE
    assert err.field == "occurred_at"


def test_occurred_at_range_lower_bound_is_inclusive() -> None:
    assert accepted(doc(occurred_at="1900-01-01T00:00:00Z")).occurred_at.year == 1900


@pytest.mark.parametrize(
    "value", ["1899-12-31T23:59:59Z", "2262-04-11T00:00:00Z", "0001-01-01T00:00:00+14:00"]
)
def test_appointment_at_out_of_range(value: str) -> None:
    err = rejected(with_data("appointment.scheduled", appointment_at=value))
    assert err.code is ErrorCode.TIMESTAMP_OUT_OF_RANGE
    assert err.field == "data.appointment_at"


def test_appointment_at_just_inside_the_range_is_accepted() -> None:
    event = accepted(
        with_data("appointment.rescheduled", appointment_at="2262-04-10T23:59:59.999999Z")
    )
    assert event.data.appointment_at.year == 2262


# -- missing_data_field -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absent", "null"])
@pytest.mark.parametrize(("event_type", "name"), REQUIRED_DATA)
def test_missing_data_field(event_type: str, name: str, how: str) -> None:
    err = rejected(with_data(event_type, **{name: DROP if how == "absent" else None}))
    assert err.code is ErrorCode.MISSING_DATA_FIELD
    assert err.field == f"data.{name}"


@pytest.mark.parametrize("how", ["absent", "null", "empty"])
@pytest.mark.parametrize("event_type", sorted({t for t, _ in REQUIRED_DATA}))
def test_missing_data_object_for_a_type_that_requires_data(event_type: str, how: str) -> None:
    data = {"absent": DROP, "null": None, "empty": {}}[how]
    d = doc(event_type)
    d["data"] = data
    d = {k: v for k, v in d.items() if v is not DROP}
    assert rejected(d).code is ErrorCode.MISSING_DATA_FIELD


def test_required_data_table_matches_the_models() -> None:
    from_models = {
        (t.value, name)
        for t, model in DATA_MODELS.items()
        for name, info in model.model_fields.items()
        if info.is_required()
    }
    assert from_models == set(REQUIRED_DATA)


# -- invalid_data_field -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "name", "value"),
    [
        ("referral.created", "priority", "high"),
        ("referral.created", "priority", "STAT"),
        ("referral.created", "priority", 1),
        ("referral.created", "specialty", ""),
        ("referral.created", "specialty", 7),
        ("referral.created", "specialty", "s" * 129),
        ("referral.created", "in_network", "yes"),
        ("referral.created", "in_network", 1),
        ("referral.created", "reason", "r" * 1025),
        ("referral.routed", "in_network", "yes"),
        ("referral.routed", "in_network", "true"),
        ("appointment.scheduled", "in_network", "yes"),
        ("appointment.rescheduled", "in_network", 0),
        ("appointment.completed", "in_network", "false"),
        ("patient.outreach", "channel", "fax"),
        ("patient.outreach", "channel", "SMS"),
        ("patient.outreach", "channel", 1),
        ("patient.responded", "channel", "pigeon"),
        ("patient.feedback", "score", 0),
        ("patient.feedback", "score", 6),
        ("patient.feedback", "score", -1),
        ("patient.feedback", "score", "3"),
        ("patient.feedback", "score", True),
        ("patient.feedback", "score", 3.5),
        ("appointment.scheduled", "appointment_at", "next tuesday"),
        ("appointment.scheduled", "appointment_at", 1741686000),
        ("appointment.scheduled", "appointment_id", ""),
        ("appointment.no_show", "appointment_id", 55),
        ("appointment.cancelled", "appointment_id", "A\n55"),
    ],
)
def test_invalid_data_field(event_type: str, name: str, value: Any) -> None:
    err = rejected(with_data(event_type, **{name: value}))
    assert err.code is ErrorCode.INVALID_DATA_FIELD
    assert err.field == f"data.{name}"


@pytest.mark.parametrize("value", ["x", 1, [], True])
def test_data_that_is_not_an_object(value: Any) -> None:
    assert rejected(doc("referral.accepted", value)).code is ErrorCode.INVALID_DATA_FIELD


@pytest.mark.parametrize("score", [1, 2, 3, 4, 5])
def test_feedback_score_range(score: int) -> None:
    assert accepted(with_data("patient.feedback", score=score)).data.score == score


# -- accepted documents -------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_every_type_is_accepted_with_minimal_data(event_type: str) -> None:
    event = accepted(doc(event_type))
    assert event.type == event_type
    assert event.event_id == "e-7f3a"
    assert event.occurred_at == datetime(2025, 3, 4, 20, 20, tzinfo=UTC)


def test_all_fifteen_types_are_covered() -> None:
    assert len(EventType) == 15
    assert set(MINIMAL_DATA) == {t.value for t in EventType}


@pytest.mark.parametrize(
    "event_type", [t.value for t in EventType if not any(t.value == r for r, _ in REQUIRED_DATA)]
)
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_types_without_required_data_accept_no_data(event_type: str, how: str) -> None:
    d = doc(event_type)
    if how == "absent":
        del d["data"]
    else:
        d["data"] = None if how == "null" else {}
    assert accepted(d).type == event_type


@pytest.mark.parametrize(
    "event_type",
    [
        "referral.created",
        "referral.routed",
        "appointment.scheduled",
        "appointment.rescheduled",
        "appointment.completed",
    ],
)
def test_in_network_defaults_to_true(event_type: str) -> None:
    event = accepted(doc(event_type))
    assert event.data.in_network is True
    assert to_tracked(event, None).data["in_network"] is True
    assert accepted(with_data(event_type, in_network=False)).data.in_network is False


def test_routed_without_data_defaults_in_network() -> None:
    d = doc("referral.routed")
    del d["data"]
    assert to_tracked(accepted(d), None).data == {"in_network": True}


def test_unknown_top_level_and_data_fields_are_ignored() -> None:
    d = doc("referral.created", schema_version=7, trace={"id": "t-1"}, extra=None)
    d["data"]["color"] = "blue"
    event = accepted(d)
    assert not hasattr(event, "schema_version")
    assert "color" not in to_tracked(event, None).data


def test_patient_id_is_optional_and_may_be_null() -> None:
    assert accepted(doc(patient_id=DROP)).patient_id is None
    assert accepted(doc(patient_id=None)).patient_id is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-04T15:20:00Z", datetime(2025, 3, 4, 15, 20, tzinfo=UTC)),
        ("2025-03-04t15:20:00z", datetime(2025, 3, 4, 15, 20, tzinfo=UTC)),
        ("2025-03-04 15:20:00+00:00", datetime(2025, 3, 4, 15, 20, tzinfo=UTC)),
        ("2025-03-04T15:20:00.5+05:30", datetime(2025, 3, 4, 9, 50, 0, 500000, tzinfo=UTC)),
        ("2025-03-04T15:20:00.123456-05:00", datetime(2025, 3, 4, 20, 20, 0, 123456, tzinfo=UTC)),
    ],
)
def test_rfc3339_forms_are_accepted(value: str, expected: datetime) -> None:
    assert accepted(doc(occurred_at=value)).occurred_at == expected


def test_str_and_bytes_input_parse_alike() -> None:
    raw = json.dumps(doc(referral_id="R-ü"), ensure_ascii=False)
    assert parse_event(raw, RECEIVED) == parse_event(raw.encode("utf-8"), RECEIVED)


# -- to_tracked / TrackedEvent ------------------------------------------------------------


def _micros(*fields: int) -> int:
    *ymdhms, micro = fields
    return calendar.timegm((*ymdhms, 0, 0, 0)) * 1_000_000 + micro


def test_to_tracked_normalizes_to_utc_micros_and_drops_patient_id() -> None:
    d = with_data("appointment.scheduled", appointment_at="2025-03-11T09:00:00.000001-05:00")
    d["occurred_at"] = "2025-03-04T15:20:00.123456-05:00"
    tracked = to_tracked(accepted(d), "p_ref")
    assert tracked.occurred_at == _micros(2025, 3, 4, 20, 20, 0, 123456)
    assert tracked.data == {
        "appointment_id": "A-55",
        "appointment_at": _micros(2025, 3, 11, 14, 0, 0, 1),
        "in_network": True,
    }
    assert from_micros(tracked.occurred_at) == datetime(2025, 3, 4, 20, 20, 0, 123456, tzinfo=UTC)
    assert tracked.patient_ref == "p_ref"
    assert not hasattr(tracked, "patient_id")
    assert PATIENT not in tracked.to_json().decode("utf-8")
    assert PATIENT not in repr(tracked)


def test_to_tracked_plain_values() -> None:
    tracked = to_tracked(accepted(doc("referral.created")), None)
    assert tracked.type == "referral.created"
    assert tracked.source == "scheduling"
    assert tracked.data == {"priority": "routine", "specialty": "cardiology", "in_network": True}
    assert type(tracked.data["priority"]) is str
    assert type(tracked.source) is str
    assert tracked.referral_key == "northwind/R-100234"
    assert tracked.sort_key == (tracked.occurred_at, "e-7f3a")
    assert tracked.patient_ref is None


def test_to_micros_round_trip() -> None:
    for value in (
        datetime(1900, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2262, 4, 10, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        assert from_micros(to_micros(value)) == value
    assert to_micros(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_tracked_event_json_round_trip(event_type: str) -> None:
    tracked = to_tracked(accepted(doc(event_type, referral_id="R-ü/1")), "p_abc")
    raw = tracked.to_json()
    assert isinstance(raw, bytes)
    assert TrackedEvent.from_json(raw) == tracked
    assert TrackedEvent.from_json(raw.decode("utf-8")) == tracked


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_to_tracked_data_is_the_models_own_dump(event_type: str) -> None:
    # to_tracked reads the data model's field dict instead of model_dump: the same only
    # while every data model stays flat, so a nested model added later fails here
    for model in DATA_MODELS.values():
        for name, info in model.model_fields.items():
            assert not (
                isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            ), f"{model.__name__}.{name} is a nested model"
    full = dict(MINIMAL_DATA[event_type]) | {
        "reason": "r",
        "in_network": False,
        "referred_to_provider_id": "P-1",
        "channel": "sms",
        "provider_id": "P-2",
        "unknown_extra": 1,
    }
    for data in (MINIMAL_DATA[event_type], full):
        event = accepted(doc(event_type, data=dict(data)))
        dumped = {
            k: to_micros(v) if isinstance(v, datetime) else getattr(v, "value", v)
            for k, v in event.data.model_dump(exclude_none=True).items()
        }
        assert to_tracked(event, None).data == dumped


def test_tracked_event_from_json_defaults() -> None:
    raw = json.dumps(
        {
            "event_id": "e",
            "org_id": "o",
            "referral_id": "r",
            "type": "referral.accepted",
            "occurred_at": 1,
            "source": "ehr",
            "data": None,
        }
    )
    assert TrackedEvent.from_json(raw) == TrackedEvent("e", "o", "r", "referral.accepted", 1, "ehr")


# -- no raw patient id in errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        encode(doc(patient_id=PATIENT * 10)),  # too long
        encode(doc(patient_id=PATIENT + "\n")),  # control character
        encode(doc(event_id=DROP)),
        encode(doc(type="referral.nope")),
        encode(doc(source="fax")),
        encode(doc(occurred_at="2025-03-04T15:20:00")),
        encode(doc(occurred_at="2999-01-01T00:00:00Z")),
        encode(doc(occurred_at="2025-03-06T12:00:01Z")),
        encode(with_data("patient.feedback", score=PATIENT)),
        encode(with_data("referral.created", specialty=PATIENT * 10)),
        encode(doc(org_id=PATIENT + "/x")),
        encode(doc())[:-5],  # truncated JSON
        encode(doc(padding="x" * MAX_MESSAGE_BYTES)),
        encode(doc()).replace(b"northwind", b"north\xffwind"),
        json.dumps([doc()]).encode(),
    ],
)
def test_error_never_contains_the_raw_patient_id(raw: bytes) -> None:
    err = rejected(raw)
    for text in (str(err), err.detail, repr(err), str(err.field), str(err.args)):
        assert PATIENT not in text
        assert "884412" not in text
