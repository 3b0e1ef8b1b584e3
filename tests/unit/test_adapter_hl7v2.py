"""The HL7 v2 adapter: every mapping from fixtures (the standard's examples and messy
real-world variants), time zones, every rejection code, deterministic event ids,
dead-letter copies without personal data, the encoder round trip, and fuzzing (nothing
but EventRejected ever escapes, and every draft is a valid canonical event)."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.adapters import hl7v2
from schemas.adapters.base import Identifier, Resolved, derive_event_id, to_event
from schemas.adapters.config import SourceConfig, parse_sources
from schemas.errors import ErrorCode, EventRejected
from schemas.events import MAX_TIMESTAMP, parse_event
from schemas.pseudonym import pseudonymize
from streams.upstream.hl7v2_encode import encode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7v2"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"k" * 32
NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")
SOURCES = """
default_timezone: UTC
orgs:
  northwind:
    timezone: America/New_York
    hl7v2_senders: [NWH]
  eastside:
    timezone: America/Los_Angeles
    hl7v2_senders: [EWHIN]
  muenster:
    timezone: Europe/Berlin
    hl7v2_senders: ["KIS^MUE"]
  westbank:
    hl7v2_senders: ["E&W"]
"""
CONFIG = parse_sources(SOURCES)
FUZZ_CONFIG = parse_sources("default_org: northwind\n" + SOURCES)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def message(*segments: str) -> bytes:
    return "\r".join(segments).encode("utf-8")


def seg(name: str, **fields: str) -> str:
    """A segment from fields by number: seg("SCH", f2="A-1", f26="R-1")."""
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join([name, *(numbered.get(n, "") for n in range(1, max(numbered) + 1))])


def events(raw: bytes, config: SourceConfig = CONFIG, received: datetime = NOW) -> list[Any]:
    """Adapt, place and validate, as the pipeline does; the events' event ids too."""
    out = []
    for draft in hl7v2.adapt(raw, config):
        placed = config.resolve(draft)
        assert isinstance(placed, Resolved)
        out.append(to_event(hl7v2.KIND, placed.org_id, placed.referral_id, draft, received))
    return out


def event_ids(raw: bytes) -> list[str]:
    return [e.event_id for e in events(raw)]


def rejected(raw: bytes, config: SourceConfig = CONFIG) -> EventRejected:
    with pytest.raises(EventRejected) as err:
        events(raw, config)
    return err.value


# -- mappings ----------------------------------------------------------------------

SCHEDULED = {
    "appointment_id": "A-55",
    "appointment_at": datetime(2025, 3, 11, 9, 0, tzinfo=NY),
    "in_network": True,
}
NWH_REF = [Identifier("NWH-REF", "R-100234")]
NWH_SIU = [Identifier("NWH-REF", "R-100234"), Identifier("SCHED", "F-77")]
STD_RRI = [Identifier("BLAKEMD", "REF4502"), Identifier("JIME", "J-2231")]

# fixture, type, org, referral id, occurred_at, data (None fields left out), identifiers,
# patient id
MAPPINGS: list[tuple[str, str, str, str, datetime, dict[str, Any], list[Identifier], str]] = [
    (
        "ref_i12_standard.hl7",
        "referral.created",
        "eastside",
        "REF4502",
        datetime(1994, 1, 11, 11, 31, 42, tzinfo=LA),
        {
            "priority": "routine",
            "specialty": "MED",
            "referring_provider_id": "BLAKE, BEVERLY",
            "referred_to_provider_id": "JIMENEZ, JOSE",
            "in_network": True,
        },
        [Identifier("", "REF4502")],
        "1234567891",
    ),
    (
        "ref_i12_minimal.hl7",
        "referral.created",
        "northwind",
        "R-100235",
        datetime(2025, 3, 4, 15, 20, tzinfo=NY),
        {"priority": "stat", "specialty": "ORTHO", "in_network": True},
        [Identifier("", "R-100235")],
        "MRN-5",
    ),
    (
        "ref_i12_latin1.hl7",
        "referral.created",
        "muenster",
        "Ü-1",
        datetime(2025, 1, 15, 7, 30, tzinfo=UTC),
        {
            "priority": "routine",
            "specialty": "KARDIO",
            "referring_provider_id": "LANR-1",
            "reason": "Zweitmeinung für Frau Müller",
            "in_network": True,
        },
        [Identifier("MUE-ÜW", "Ü-1")],
        "P-ÄÖ",
    ),
    (
        "ref_i12_escapes.hl7",
        "referral.created",
        "northwind",
        "R|1^2\\3",
        datetime(2025, 3, 4, 20, 20, 0, 123400, tzinfo=UTC),
        {
            "priority": "stat",
            "specialty": "CARDIO&VASC",
            "reason": "Chest pain\nsee notes; A \\Zfoo\\",
            "in_network": True,
        },
        [Identifier("NWH~REF", "R|1^2\\3")],
        "MRN|884412",
    ),
    (
        "ref_i13_routed.hl7",
        "referral.routed",
        "northwind",
        "R-100234",
        datetime(2025, 3, 5, 10, 15, tzinfo=NY),
        {"referred_to_provider_id": "0815", "in_network": True},
        NWH_REF,
        "MRN-884412",
    ),
    (
        "ref_i14_cancel.hl7",
        "referral.cancelled",
        "northwind",
        "R-100234",
        datetime(2025, 3, 6, 14, 0, tzinfo=NY),
        {"reason": "Patient preference"},
        NWH_REF,
        "MRN-884412",
    ),
    (
        "rri_i12_accepted.hl7",
        "referral.accepted",
        "eastside",
        "REF4502",
        datetime(1994, 1, 12, 9, 15, tzinfo=LA),
        {},
        STD_RRI,
        "1234567891",
    ),
    (
        "rri_i12_declined.hl7",
        "referral.declined",
        "eastside",
        "REF4502",
        datetime(1994, 1, 12, 9, 17, tzinfo=LA),
        {"reason": "Work load"},
        STD_RRI,
        "1234567891",
    ),
    (
        "rri_i12_expired.hl7",
        "referral.cancelled",
        "eastside",
        "REF4502",
        datetime(1994, 5, 11, 0, 5, tzinfo=LA),
        {},
        STD_RRI,
        "1234567891",
    ),
    *[
        (
            name,
            "appointment.scheduled",
            "northwind",
            "R-100234",
            datetime(2025, 3, 4, 15, 20, tzinfo=NY),
            SCHEDULED,
            NWH_SIU,
            "MRN-884412",
        )
        for name in (
            "siu_s12.hl7",
            "siu_s12_lf.hl7",
            "siu_s12_crlf.hl7",
            "siu_s12_mllp.hl7",
            "siu_s12_custom_delimiters.hl7",
            "siu_s12_sparse.hl7",
            "siu_s12_ais_start.hl7",
        )
    ],
    (
        "siu_s13.hl7",
        "appointment.rescheduled",
        "northwind",
        "R-100234",
        datetime(2025, 3, 5, 8, 0, tzinfo=NY),
        {**SCHEDULED, "appointment_at": datetime(2025, 3, 18, 14, 0, tzinfo=NY)},
        NWH_SIU,
        "MRN-884412",
    ),
    (
        "siu_s14.hl7",
        "appointment.rescheduled",
        "northwind",
        "R-100234",
        datetime(2025, 3, 5, 8, 15, tzinfo=NY),
        {**SCHEDULED, "appointment_at": datetime(2025, 3, 18, 14, 30, tzinfo=NY)},
        NWH_SIU,
        "MRN-884412",
    ),
    (
        "siu_s15.hl7",
        "appointment.cancelled",
        "northwind",
        "R-100234",
        datetime(2025, 3, 10, 17, 0, tzinfo=NY),
        {"appointment_id": "A-55", "reason": "Patient cancelled: moving away"},
        NWH_SIU,
        "MRN-884412",
    ),
    (
        "siu_s17.hl7",
        "appointment.cancelled",
        "northwind",
        "R-100234",
        datetime(2025, 3, 10, 17, 10, tzinfo=NY),
        {"appointment_id": "A-55", "reason": "Entered in error"},
        NWH_SIU,
        "MRN-884412",
    ),
    (
        "siu_s26.hl7",
        "appointment.no_show",
        "northwind",
        "R-100234",
        datetime(2025, 3, 11, 10, 5, tzinfo=NY),
        {"appointment_id": "A-55"},
        NWH_SIU,
        "MRN-884412",
    ),
    (
        "adt_a03.hl7",
        "appointment.completed",
        "northwind",
        "R-100234",
        datetime(2025, 3, 11, 9, 45, tzinfo=NY),
        {"appointment_id": "A-55", "in_network": False},
        NWH_REF,
        "MRN-884412",
    ),
]


@pytest.mark.parametrize(
    ("name", "kind", "org", "referral_id", "occurred_at", "data", "identifiers", "patient"),
    MAPPINGS,
    ids=[m[0] for m in MAPPINGS],
)
def test_fixture_maps_to_a_canonical_event(
    name: str,
    kind: str,
    org: str,
    referral_id: str,
    occurred_at: datetime,
    data: dict[str, Any],
    identifiers: list[Identifier],
    patient: str,
) -> None:
    drafts = hl7v2.adapt(fixture(name), CONFIG)
    assert [list(d.identifiers) for d in drafts] == [identifiers]
    [event] = events(fixture(name))
    assert (event.type, event.org_id, event.referral_id) == (kind, org, referral_id)
    assert event.occurred_at == occurred_at
    assert event.data.model_dump(exclude_none=True) == data
    assert event.patient_id == patient


@pytest.mark.parametrize(
    "name",
    [
        "adt_a04_standard.hl7",  # registration: the A03 that ends the visit is the milestone
        "adt_a03_unlinked.hl7",  # a discharge no ZRT ties to a referral
        "rri_i12_pending.hl7",  # RF1-1 P: nothing decided yet
        "siu_s14_noshow_status.hl7",  # S14 restating a no-show the S26 already said
    ],
)
def test_known_messages_without_a_milestone_are_ignored(name: str) -> None:
    assert hl7v2.adapt(fixture(name), CONFIG) == []


def _ignored(*segments: str) -> None:
    assert hl7v2.adapt(message(*segments), CONFIG) == []


def test_other_ignored_triggers() -> None:
    msh = "MSH|^~\\&|EPIC|NWH|||20250304152000||{}|C1|P|2.5.1"
    _ignored(msh.format("REF^I15"), "RF1|P|R|MED|||R-1")  # a status query
    _ignored(msh.format("REF^I13"), "RF1|P|R|MED|||R-1", "PRD|RP|X")  # no referred-to PRD
    _ignored(msh.format("RRI^I14"), "RF1|A|R|MED|||R-1")  # the answer to a cancel
    _ignored(msh.format("RRI^I12"), "RF1||R|MED|||R-1")  # no status
    _ignored(msh.format("SIU^S20"), "SCH||A-1")  # a service added to an appointment


def test_routed_without_a_provider_id_is_still_routed() -> None:
    raw = message(
        "MSH|^~\\&|EPIC|NWH|||20250304152000||REF^I13|C1|P|2.5.1", "RF1||||||R-1", "PRD|RT"
    )
    [event] = events(raw)
    assert event.type == "referral.routed"
    assert event.data.referred_to_provider_id is None


def test_trigger_from_evn_when_msh9_has_none() -> None:
    raw = message(
        "MSH|^~\\&|SCHED|NWH|||20250304152000||SIU|C1|P|2.3",
        "EVN|S26|20250304151500",
        seg("SCH", f2="A-55", f26="R-1"),
    )
    [event] = events(raw)
    assert event.type == "appointment.no_show"
    assert event.occurred_at == datetime(2025, 3, 4, 15, 15, tzinfo=NY)  # EVN-2 before MSH-7


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("TQ1|1||||||20250311090000", datetime(2025, 3, 11, 9, tzinfo=NY)),
        ("AIL|1|A|CARD|||20250311091500", datetime(2025, 3, 11, 9, 15, tzinfo=NY)),
        ("AIP|1|A|0815|ATT||20250311093000+0000", datetime(2025, 3, 11, 9, 30, tzinfo=UTC)),
        ("AIG|1|A|ROOM-1|||||20250311100000", datetime(2025, 3, 11, 10, tzinfo=NY)),
    ],
)
def test_appointment_start_from_the_resource_segments(start: str, expected: datetime) -> None:
    raw = message(
        "MSH|^~\\&|SCHED|NWH|||20250304152000||SIU^S12|C1|P|2.6",
        seg("SCH", f2="A-55", f26="R-1"),
        "RGS|1",
        start,
    )
    [event] = events(raw)
    assert event.data.appointment_at == expected


def test_repeated_fields_take_the_first_repetition() -> None:
    raw = message(
        "MSH|^~\\&|EPIC|NWH|||20250304152000||REF^I12|C1|P|2.5.1",
        "RF1||R~S|CARD~ORTHO|||R-1^A~R-2^B",
        "PRD|RT~RP|X|||||NPI-1~NPI-2",
        "PID|1||MRN-1^^^A~MRN-2^^^B",
    )
    [event] = events(raw)
    assert event.referral_id == "R-1"
    assert (event.data.priority, event.data.specialty) == ("routine", "CARD")
    assert event.data.referred_to_provider_id == "NPI-1"
    assert event.patient_id == "MRN-1"


# -- time zones --------------------------------------------------------------------


def _siu_at(msh7: str, facility: str = "NWH") -> bytes:
    return message(
        f"MSH|^~\\&|SCHED|{facility}|||{msh7}||SIU^S26|C1|P|2.5.1",
        seg("SCH", f2="A-55", f26="R-1"),
    )


@pytest.mark.parametrize(
    ("msh7", "expected", "offset_hours"),
    [
        ("20250704120000", datetime(2025, 7, 4, 16, tzinfo=UTC), -4),  # EDT
        ("20250115120000", datetime(2025, 1, 15, 17, tzinfo=UTC), -5),  # EST
        ("20250704120000+0200", datetime(2025, 7, 4, 10, tzinfo=UTC), 2),  # the offset wins
        ("20250704", datetime(2025, 7, 4, 4, tzinfo=UTC), -4),  # a date: local midnight
        ("202507", datetime(2025, 7, 1, 4, tzinfo=UTC), -4),  # month precision
        ("20251102013000", datetime(2025, 11, 2, 5, 30, tzinfo=UTC), -4),  # repeated hour: fold 0
        ("20250309023000", datetime(2025, 3, 9, 7, 30, tzinfo=UTC), -5),  # skipped hour
        ("20250704120000.5", datetime(2025, 7, 4, 16, 0, 0, 500000, tzinfo=UTC), -4),
        ("20250704120000.123456-0000", datetime(2025, 7, 4, 12, 0, 0, 123456, tzinfo=UTC), 0),
    ],
)
def test_times_without_offset_take_the_senders_zone(
    msh7: str, expected: datetime, offset_hours: int
) -> None:
    [draft] = hl7v2.adapt(_siu_at(msh7), CONFIG)
    assert draft.occurred_at == expected
    assert draft.occurred_at.utcoffset() == timedelta(hours=offset_hours)


def test_zone_of_an_unlisted_sender() -> None:
    # Not a listed sender: the org resolve() will find (here default_org), else UTC.
    [draft] = hl7v2.adapt(_siu_at("20250704120000", "OTHER"), CONFIG)
    assert draft.org_id is None
    assert draft.occurred_at == datetime(2025, 7, 4, 12, tzinfo=UTC)
    [event] = events(_siu_at("20250704120000", "OTHER"), FUZZ_CONFIG)
    assert event.org_id == "northwind"
    assert event.occurred_at == datetime(2025, 7, 4, 12, tzinfo=NY)


# -- rejections --------------------------------------------------------------------

GOOD_MSH = "MSH|^~\\&|EPIC|NWH|||20250304152000||REF^I12|C1|P|2.5.1"
GOOD_RF1 = "RF1||R|CARD|||R-1"


def _ref(msh: str = GOOD_MSH, rf1: str = GOOD_RF1, *more: str) -> bytes:
    return message(msh, rf1, *more)


@pytest.mark.parametrize(
    ("raw", "code", "where"),
    [
        (b"MSH|^~\\&|" + b"x" * hl7v2.MAX_HL7_BYTES, ErrorCode.TOO_LARGE, None),
        (
            fixture("ref_i12_latin1.hl7").replace(b"8859/1", b"UNICODE UTF-8"),
            ErrorCode.INVALID_ENCODING,
            "MSH-18",
        ),
        (
            fixture("ref_i12_latin1.hl7").replace(b"|8859/1", b""),
            ErrorCode.INVALID_ENCODING,
            "MSH-18",
        ),
        (b"PID|1||MRN-1", ErrorCode.INVALID_HL7, None),
        (b"", ErrorCode.INVALID_HL7, None),
        (b"MSH|^~", ErrorCode.INVALID_HL7, "MSH-2"),
        (b"MSHA^~\\&A", ErrorCode.INVALID_HL7, "MSH-1"),
        (_ref(GOOD_MSH.replace("^~\\&", "^^\\&")), ErrorCode.INVALID_HL7, "MSH-2"),
        (_ref(GOOD_MSH.replace("^~\\&", "^~\\")), ErrorCode.INVALID_HL7, "MSH-2"),
        (_ref(GOOD_MSH, GOOD_RF1, "this is not a segment"), ErrorCode.INVALID_HL7, None),
        (_ref(GOOD_MSH, GOOD_RF1, "PID1||MRN-1"), ErrorCode.INVALID_HL7, None),
        (_ref(GOOD_MSH, GOOD_RF1, GOOD_MSH, GOOD_RF1), ErrorCode.INVALID_HL7, None),
        (_ref(GOOD_MSH.replace("REF^I12", "")), ErrorCode.INVALID_HL7, "MSH-9"),
        (_ref(GOOD_MSH.replace("20250304152000", "")), ErrorCode.INVALID_HL7, "MSH-7"),
        (
            message("MSH|^~\\&|S|NWH|||20250304152000||SIU^S12|C1|P|2.5.1", "PID|1||M"),
            ErrorCode.INVALID_HL7,
            "SCH",
        ),
        (fixture("adt_a08.hl7"), ErrorCode.UNSUPPORTED_MESSAGE, "MSH-9"),
        (_ref(GOOD_MSH.replace("REF^I12", "ORU^R01")), ErrorCode.UNSUPPORTED_MESSAGE, "MSH-9"),
        (_ref(GOOD_MSH.replace("REF^I12", "REF^I99")), ErrorCode.UNSUPPORTED_MESSAGE, "MSH-9"),
        (_ref(GOOD_MSH.replace("REF^I12", "RRI^I01")), ErrorCode.UNSUPPORTED_MESSAGE, "MSH-9"),
        (_ref(GOOD_MSH.replace("REF^I12", "SIU^S27")), ErrorCode.UNSUPPORTED_MESSAGE, "MSH-9"),
        (_ref(GOOD_MSH, "RF1||Z|CARD|||R-1"), ErrorCode.UNMAPPED_CODE, "RF1-2"),
        (
            _ref(GOOD_MSH.replace("REF^I12", "RRI^I12"), "RF1|X|R|CARD|||R-1"),
            ErrorCode.UNMAPPED_CODE,
            "RF1-1",
        ),
        (_ref(GOOD_MSH, GOOD_RF1, "ZRT|maybe"), ErrorCode.UNMAPPED_CODE, "ZRT-1"),
        (
            message(
                "MSH|^~\\&|S|NWH|||20250304152000||SIU^S14|C1|P|2.5.1",
                seg("SCH", f2="A-1", f25="Confirmed", f26="R-1"),
            ),
            ErrorCode.UNMAPPED_CODE,
            "SCH-25",
        ),
        (_ref(GOOD_MSH, "RF1||R|CARD"), ErrorCode.MISSING_REFERRAL_ID, None),
        (_ref(GOOD_MSH, "PID|1||MRN-1"), ErrorCode.MISSING_REFERRAL_ID, None),
        (
            message("MSH|^~\\&|S|NWH|||20250304152000||SIU^S12|C1|P|2.5.1", "SCH||A-1"),
            ErrorCode.MISSING_REFERRAL_ID,
            None,
        ),
        (_ref(GOOD_MSH, "RF1||R||||R-1"), ErrorCode.MISSING_DATA_FIELD, "RF1-3"),
        (
            message(
                "MSH|^~\\&|S|NWH|||20250304152000||SIU^S12|C1|P|2.5.1",
                seg("SCH", f2="A-1", f26="R-1"),
            ),
            ErrorCode.MISSING_DATA_FIELD,
            "SCH-11",
        ),
        (
            message(
                "MSH|^~\\&|S|NWH|||20250304152000||SIU^S15|C1|P|2.5.1",
                seg("SCH", f26="R-1"),
            ),
            ErrorCode.MISSING_DATA_FIELD,
            "SCH-2",
        ),
        (
            message(
                "MSH|^~\\&|R|NWH|||20250304152000||ADT^A03|C1|P|2.5.1",
                "PV1|1|O",
                "ZRT||R-1",
            ),
            ErrorCode.MISSING_DATA_FIELD,
            "PV1-19",
        ),
        (_ref(GOOD_MSH.replace("20250304152000", "2025-03-04")), ErrorCode.INVALID_FIELD, "MSH-7"),
        (_ref(GOOD_MSH.replace("20250304152000", "20251304")), ErrorCode.INVALID_FIELD, "MSH-7"),
        (_ref(GOOD_MSH.replace("20250304152000", "20250230")), ErrorCode.INVALID_FIELD, "MSH-7"),
        (
            _ref(GOOD_MSH.replace("20250304152000", "20250304152000+2500")),
            ErrorCode.INVALID_FIELD,
            "MSH-7",
        ),
        (
            _ref(GOOD_MSH.replace("20250304152000", "202503041520.5")),
            ErrorCode.INVALID_FIELD,
            "MSH-7",
        ),
        (_ref(GOOD_MSH, "RF1||R|CARD|||" + "R" * 129), ErrorCode.INVALID_FIELD, "RF1-6"),
        (_ref(GOOD_MSH, "RF1||R|CARD|||R\\X01\\1"), ErrorCode.INVALID_FIELD, "RF1-6"),
        (_ref(GOOD_MSH, GOOD_RF1, "PRD|RT||||||" + "P" * 129), ErrorCode.INVALID_FIELD, "PRD-7"),
        (
            _ref(GOOD_MSH.replace("20250304152000", "18991231")),
            ErrorCode.TIMESTAMP_OUT_OF_RANGE,
            "MSH-7",
        ),
        (
            _ref(GOOD_MSH.replace("20250304152000", "99991231")),
            ErrorCode.TIMESTAMP_OUT_OF_RANGE,
            "MSH-7",
        ),
    ],
)
def test_every_rejection_has_its_code(raw: bytes, code: ErrorCode, where: str | None) -> None:
    err = rejected(raw)
    assert err.code is code
    assert err.field == where


def test_a_bad_patient_id_is_rejected_without_showing_it() -> None:
    secret = "MRN-SECRET-" + "9" * 120
    err = rejected(_ref(GOOD_MSH, GOOD_RF1, f"PID|1||{secret}"))
    assert (err.code, err.field) == (ErrorCode.INVALID_FIELD, "PID-3")
    assert "SECRET" not in str(err)


def test_canonical_rules_still_apply_after_adapting() -> None:
    # The adapter does not know the ingestion time: too far in the future is to_event's.
    raw = _ref(GOOD_MSH.replace("20250304152000", "20250310120000-0500"))
    with pytest.raises(EventRejected) as err:
        events(raw, received=datetime(2025, 3, 9, tzinfo=UTC))
    assert err.value.code is ErrorCode.FUTURE_TIMESTAMP
    # A sender nobody listed, no default org: resolve() cannot place it.
    err2 = rejected(_ref(GOOD_MSH.replace("|NWH|", "|NOBODY|")))
    assert err2.code is ErrorCode.UNKNOWN_ORG


# -- deterministic event ids --------------------------------------------------------


def test_the_same_fact_gets_the_same_event_id() -> None:
    ids = event_ids(fixture("siu_s12.hl7"))
    assert event_ids(fixture("siu_s12.hl7")) == ids  # delivered twice
    for variant in ("lf", "crlf", "mllp", "custom_delimiters"):
        assert event_ids(fixture(f"siu_s12_{variant}.hl7")) == ids, variant
    # the same text in UTF-8 rather than Latin-1
    latin = fixture("ref_i12_latin1.hl7")
    utf8 = latin.decode("latin-1").replace("8859/1", "UNICODE UTF-8").encode("utf-8")
    assert event_ids(utf8) == event_ids(latin)


def test_a_different_message_gets_a_different_event_id() -> None:
    ids = event_ids(fixture("siu_s12.hl7"))
    assert event_ids(fixture("siu_s12.hl7").replace(b"NWH-SIU-0001", b"NWH-SIU-9999")) != ids
    assert event_ids(fixture("siu_s13.hl7")) != ids


def test_the_anchor_is_type_sender_and_control_id() -> None:
    [draft] = hl7v2.adapt(fixture("siu_s12.hl7"), CONFIG)
    assert draft.anchor == "SIU^S12|SCHED^NWH|NWH-SIU-0001"
    assert derive_event_id(hl7v2.KIND, "northwind", draft) == event_ids(fixture("siu_s12.hl7"))[0]


# -- dead-letter copies ------------------------------------------------------------


def test_redact_removes_the_patient_from_the_standard_example() -> None:
    raw = fixture("adt_a04_standard.hl7")
    out, changed = hl7v2.redact(raw, KEY)
    assert changed
    for personal in (b"MASSIE", b"191919", b"371-66-925", b"19560129"):
        assert personal not in out, personal
    pid = next(line for line in out.split(b"\r") if line.startswith(b"PID"))
    fields = pid.decode().split("|")
    assert fields[3] == (
        f"{pseudonymize(KEY, '', '191919')}^^^GENHOS^MR~"
        f"{pseudonymize(KEY, '', '371-66-9256')}^^^USSSA^SS"
    )
    assert fields[5] == fields[7] == fields[11] == fields[13] == fields[14] == ""
    assert fields[8] == "M"  # not an identifier: kept for the sender to debug
    kept = [line for line in raw.split(b"\r") if line[:3] in (b"MSH", b"EVN", b"PV1", b"OBX")]
    assert all(line in out for line in kept)


def test_redact_keeps_separators_framing_and_charset_bytes() -> None:
    for name in ("siu_s12_lf.hl7", "siu_s12_crlf.hl7", "siu_s12_mllp.hl7"):
        raw = fixture(name)
        out, changed = hl7v2.redact(raw, KEY)
        assert changed
        assert b"MRN-884412" not in out and b"DOE" not in out and b"5551212" not in out
        assert out.count(b"\n") == raw.count(b"\n") and out.count(b"\r") == raw.count(b"\r")
        assert out[:1] == raw[:1] and out[-2:] == raw[-2:]
    latin = fixture("ref_i12_latin1.hl7")
    out, _ = hl7v2.redact(latin, KEY)
    assert "MÜLLER^GRÉTA".encode("latin-1") not in out and b"P-\xc4\xd6" not in out
    assert "Zweitmeinung für".encode("latin-1") in out  # the rest, byte for byte


def test_redact_custom_delimiters_and_rejected_messages() -> None:
    out, changed = hl7v2.redact(fixture("siu_s12_custom_delimiters.hl7"), KEY)
    assert changed and b"MRN-884412" not in out and b"DOE@JANE" not in out
    out, changed = hl7v2.redact(fixture("adt_a08.hl7"), KEY)  # adapt rejects it
    assert changed and b"MRN-884412" not in out
    fragment = b"garbage\nPID|1||MRN-7^^^X~MRN-8||ROE^RICHARD\x1c"
    out, changed = hl7v2.redact(fragment, KEY)  # no MSH: standard delimiters
    assert changed and b"MRN-7" not in out and b"MRN-8" not in out and b"ROE" not in out
    # blanks before a segment name, as adapt skips them (here a Latin-1 no-break space)
    out, changed = hl7v2.redact(b"MSH|^~\\&|A\r\x0c\xa0PID|1||MRN-1||DOE", KEY)
    assert changed and b"MRN-1" not in out and b"DOE" not in out and b"\x0c\xa0PID" in out


def test_redact_leaves_messages_without_personal_data_alone() -> None:
    for raw in (b"", b"\xff\xfe\x00", fixture("siu_s12.hl7").split(b"PID")[0]):
        assert hl7v2.redact(raw, KEY) == (raw, False)


def test_redact_without_a_key_empties_identifiers() -> None:
    out, changed = hl7v2.redact(b"PID|1|X|MRN-1^^^A~MRN-2|Y", b"")
    assert (out, changed) == (b"PID|1||^^^A~|", True)


# -- the encoder round trip --------------------------------------------------------

FACILITIES = {"northwind": "NWH", "eastside": "EWHIN", "westbank": "E&W"}
_ID_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"))
IDS = st.text(_ID_CHARS, min_size=1, max_size=128).filter(lambda s: s == s.strip() and s != '""')
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=1024).filter(
    lambda s: s == s.strip()
)
ZONES = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
TIMES = st.datetimes(datetime(1900, 1, 2), datetime(2262, 4, 9), timezones=ZONES).map(
    lambda t: t.isoformat()
)


ENCODED_TYPES = [
    "referral.created",
    "referral.routed",
    "referral.accepted",
    "referral.declined",
    "referral.cancelled",
    "appointment.scheduled",
    "appointment.rescheduled",
    "appointment.cancelled",
    "appointment.no_show",
    "appointment.completed",
]
WITH_NETWORK = {
    "referral.created",
    "referral.routed",
    "appointment.scheduled",
    "appointment.rescheduled",
    "appointment.completed",
}
WITH_REASON = {
    "referral.created",
    "referral.declined",
    "referral.cancelled",
    "appointment.cancelled",
}


@st.composite
def canonical_events(draw: Any) -> dict[str, Any]:
    """Canonical events of every type the encoder writes, optional fields on or off."""
    kind = draw(st.sampled_from(ENCODED_TYPES))
    data: dict[str, Any] = {}
    if kind == "referral.created":
        data["priority"] = draw(st.sampled_from(["routine", "urgent", "stat"]))
        data["specialty"] = draw(IDS)
        for name in ("referring_provider_id", "referred_to_provider_id"):
            if draw(st.booleans()):
                data[name] = draw(IDS)
    if kind == "referral.routed" and draw(st.booleans()):
        data["referred_to_provider_id"] = draw(IDS)
    if kind.startswith("appointment."):
        data["appointment_id"] = draw(IDS)
    if kind in ("appointment.scheduled", "appointment.rescheduled"):
        data["appointment_at"] = draw(TIMES)
    if kind in WITH_REASON and draw(st.booleans()):
        data["reason"] = draw(TEXT)
    if kind in WITH_NETWORK and draw(st.booleans()):
        data["in_network"] = draw(st.booleans())
    event = {
        "event_id": draw(IDS),
        "referral_id": draw(IDS),
        "org_id": draw(st.sampled_from(sorted(FACILITIES))),
        "type": kind,
        "occurred_at": draw(TIMES),
        "source": "ehr",
        "data": data,
    }
    if draw(st.booleans()):
        event["patient_id"] = draw(IDS)
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical_events())
def test_encoded_events_adapt_back_to_themselves(event: dict[str, Any]) -> None:
    expected = parse_event(json.dumps(event).encode("utf-8"), MAX_TIMESTAMP)
    raw = encode(event, FACILITIES[event["org_id"]])
    assert raw is not None
    [got] = events(raw, received=MAX_TIMESTAMP)
    assert (got.referral_id, got.org_id, got.type) == (
        expected.referral_id,
        expected.org_id,
        expected.type,
    )
    assert got.occurred_at == expected.occurred_at
    assert got.data.model_dump() == expected.data.model_dump()
    assert got.patient_id == expected.patient_id


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("patient.outreach", {"channel": "sms"}),
        ("patient.responded", {}),
        ("patient.feedback", {"score": 4}),
        ("care.out_of_network", {}),
        ("report.received", {}),
    ],
)
def test_types_hl7v2_does_not_carry_encode_to_none(kind: str, data: dict[str, Any]) -> None:
    event = {
        "event_id": "e-1",
        "referral_id": "R-1",
        "org_id": "northwind",
        "type": kind,
        "occurred_at": "2025-03-04T15:20:00-05:00",
        "source": "comms",
        "data": data,
    }
    assert encode(event, "NWH") is None


def test_encoded_message_shape() -> None:
    event = {
        "event_id": "e-7f3a",
        "referral_id": "R-100234",
        "org_id": "northwind",
        "type": "appointment.scheduled",
        "occurred_at": "2025-03-04T15:20:00.25-05:00",
        "source": "scheduling",
        "patient_id": "MRN-884412",
        "data": {"appointment_id": "A-55", "appointment_at": "2025-03-11T09:00:00-05:00"},
    }
    raw = encode(event, "NWH")
    assert raw == (
        b"MSH|^~\\&|REFTRACK|NWH|||20250304152000.25-0500||SIU^S12^SIU_S12|e-7f3a|P|2.5.1"
        b"||||||UNICODE UTF-8\r"
        b"SCH||A-55|||||||||^^^20250311090000-0500|||||||||||||||R-100234\r"
        b"PID|1||MRN-884412\rRGS|1\rZRT|Y\r"
    )


# -- fuzzing -----------------------------------------------------------------------

FUZZ = settings(
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEGMENTS = [
    "PID", "PD1", "NK1", "GT1", "IN1", "RF1", "PRD", "CTD", "SCH", "TQ1", "AIS", "AIG",
    "AIL", "AIP", "RGS", "PV1", "PV2", "EVN", "ZRT", "NTE", "OBX", "DG1", "MSA", "ZXX",
]  # fmt: skip
TYPES = [
    "REF^I12", "REF^I13", "REF^I14", "REF^I15", "RRI^I12", "RRI^I14", "RRI^I15", "SIU^S12",
    "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S17", "SIU^S22", "SIU^S26", "ADT^A03", "ADT^A04",
    "ADT^A08", "ORU^R01", "SIU", "REF", "^I12", "",
]  # fmt: skip
ATOMS = st.sampled_from(
    [
        "", "A", "R", "P", "E", "S", "U", "Y", "N", "RT", "RP", "Booked", "Noshow", "Confirmed",
        '""', "R-1", "A-55", "MRN-1", "CARD", "20250304152000", "20250304", "2025",
        "20250304152000.123456-0500", "^^^20250311090000", "^^^2025031109", "19000101",
        "22620411", "99991231", "20251304", "202503041520.5", "20250304152000+9999",
        "\\F\\", "\\S\\", "\\X0D\\", "\\X01\\", "\\XZZ\\", "\\.br\\", "\\", "x" * 130,
        "NWH", "I12", "S26", "A03", "\u00fc", "\u0000", "\t ",
    ]
)  # fmt: skip
# Mostly text without line breaks (a break inside a field only makes a non-segment
# line, which the rejection tests already cover), sometimes anything.
TEXTISH = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"))
COMPONENT = st.one_of(ATOMS, ATOMS, ATOMS, TEXTISH.map(lambda t: t[:12]))
FIELD = st.lists(COMPONENT, max_size=4).map("^".join) | st.lists(COMPONENT, max_size=3).map(
    "~".join
)
# The fields the adapter reads, so that random segments reach the mappings.
READ_FIELDS = [1, 2, 3, 4, 6, 7, 10, 11, 19, 25, 26, 27, 45]
SEGMENT = st.one_of(
    st.builds(
        lambda name, fields: "|".join([name, *fields]),
        st.sampled_from(SEGMENTS),
        st.lists(FIELD, max_size=30),
    ),
    st.builds(
        lambda name, fields: (
            seg(name, **{f"f{n}": v for n, v in fields.items()}) if fields else name
        ),
        st.sampled_from(SEGMENTS),
        st.dictionaries(st.sampled_from(READ_FIELDS), FIELD, max_size=6),
    ),
)
MSH = st.builds(
    lambda app, facility, time, kind, control, charset: (
        f"MSH|^~\\&|{app}|{facility}|||{time}||{kind}|{control}|P|2.5.1||||||{charset}"
    ),
    st.sampled_from(["EPIC", "SCHED", "", "A^B"]),
    st.sampled_from(["NWH", "EWHIN", "OTHER", "", "N\\S\\W"]),
    ATOMS,
    st.sampled_from(TYPES),
    ATOMS,
    st.sampled_from(["", "8859/1", "UNICODE UTF-8", "8859/15", "ISO IR100", "8859/99"]),
)


def _survives(raw: bytes) -> None:
    """adapt either rejects or gives drafts that are valid canonical events; redact
    never raises."""
    try:
        drafts = hl7v2.adapt(raw, FUZZ_CONFIG)
    except EventRejected:
        pass
    else:
        for draft in drafts:
            placed = FUZZ_CONFIG.resolve(draft)
            assert isinstance(placed, Resolved)
            to_event(hl7v2.KIND, placed.org_id, placed.referral_id, draft, MAX_TIMESTAMP)
    out, changed = hl7v2.redact(raw, KEY)
    assert isinstance(out, bytes) and changed == (out != raw)


@FUZZ
@given(
    MSH,
    st.lists(SEGMENT, max_size=12),
    st.sampled_from(["\r", "\n", "\r\n"]),
    st.sampled_from(["utf-8", "latin-1"]),
)
def test_fuzz_segment_soup(msh: str, segments: list[str], sep: str, codec: str) -> None:
    _survives(sep.join([msh, *segments]).encode(codec, "replace"))


FIXTURE_LINES = [
    re.split(rb"\r\n|\r|\n", fixture(p.name).strip(b"\x0b\x1c\r\n"))
    for p in sorted(FIXTURES.glob("*.hl7"))
]
BLOBS = st.one_of(
    ATOMS.map(lambda t: t.encode("utf-8")),
    TEXTISH.map(lambda t: t[:8].encode("utf-8")),
    st.binary(max_size=8),
)


@FUZZ
@given(
    st.sampled_from(FIXTURE_LINES),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 10**6), BLOBS), max_size=6),
    st.sampled_from([b"\r", b"\n", b"\r\n"]),
    st.randoms(use_true_random=False),
)
def test_fuzz_mutated_fixtures(
    lines: list[bytes], edits: list[Any], sep: bytes, rnd: random.Random
) -> None:
    lines = list(lines)
    for op, at, blob in edits:
        i = at % len(lines)
        if op == 0:  # a field replaced
            fields = lines[i].split(b"|")
            fields[at % len(fields)] = blob
            lines[i] = b"|".join(fields)
        elif op == 1 and i > 0:  # a segment dropped
            del lines[i]
        elif op == 2:  # a segment repeated elsewhere (MSH stays first)
            lines.insert(rnd.randrange(1, len(lines) + 1), lines[i])
        elif op == 3:  # bytes inserted
            line = lines[i]
            j = at % (len(line) + 1)
            lines[i] = line[:j] + blob + line[j:]
        else:  # bytes deleted
            line = lines[i]
            j = at % (len(line) + 1)
            lines[i] = line[:j] + line[j + len(blob) + 1 :]
    _survives(sep.join(lines))


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"MSH|^~\\&|", b"\x0bMSH|^~\\&|x|NWH"]))
def test_fuzz_random_bytes(tail: bytes, head: bytes) -> None:
    _survives(head + tail)


_PSEUDONYM = re.compile(r"p_[0-9a-f]{32}\Z")


@settings(max_examples=600, deadline=None)
@given(
    st.lists(st.from_regex(r"MRN[0-9]{5,9}", fullmatch=True), min_size=1, max_size=3),
    st.lists(FIELD, max_size=10),
    st.sampled_from(["\r", "\n", "\r\n"]),
    st.sampled_from([("|", "^~\\&"), ("!", "@*\\%"), ("#", "^~\\&")]),
    st.lists(SEGMENT.filter(lambda line: not line.startswith("PID")), max_size=4),
    st.booleans(),
)
def test_fuzz_redact_never_leaves_a_pid3_id(
    mrns: list[str],
    rest: list[str],
    sep: str,
    delimiters: tuple[str, str],
    others: list[str],
    framed: bool,
) -> None:
    fs, enc = delimiters
    pid3 = enc[1].join(f"{m}{enc[0]}{enc[0]}{enc[0]}NWH{enc[0]}MR" for m in mrns)
    pid = fs.join(["PID", "1", "", pid3, *[f.replace("|", fs) for f in rest]])
    body = sep.join([f"MSH{fs}{enc}{fs}A{fs}NWH", *others[:2], pid, *others[2:]])
    raw = (b"\x0b" if framed else b"") + body.encode("utf-8")
    out, changed = hl7v2.redact(raw, KEY)
    assert changed
    for mrn in mrns:
        assert mrn.encode() not in out
    line = next(x for x in re.split(r"\r\n|\r|\n", out.decode("utf-8")) if x.startswith("PID"))
    for rep in line.split(fs)[3].split(enc[1]):
        assert _PSEUDONYM.match(rep.split(enc[0])[0])
