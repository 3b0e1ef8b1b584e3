"""The FHIR R4 adapter (schemas/adapters/fhir.py): published examples and messy variants
to drafts and canonical events, every rejection code, dead-letter redaction, fuzzing, and
a round trip through streams/upstream/fhir_encode.py. Fixtures: tests/fixtures/fhir/README.md.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.adapters import fhir
from schemas.adapters.base import Draft, Identifier, Resolved, to_event
from schemas.adapters.config import SourceConfig, parse_sources
from schemas.errors import ErrorCode, EventRejected
from schemas.events import MAX_TIMESTAMP, parse_event
from schemas.pseudonym import pseudonymize
from streams.upstream.fhir_encode import REFERRAL_SYSTEM, encode

FIXTURES = Path(__file__).parent.parent / "fixtures" / "fhir"
# Far enough ahead that no fixture time is "in the future" (SPEC §3 clock skew).
RECEIVED = MAX_TIMESTAMP
SYDNEY = ZoneInfo("Australia/Sydney")
KEY = b"test-pseudonym-key"

# The R4 examples come from an Australian server: their bare dates are Sydney dates.
PLAIN = parse_sources("default_org: acme\ndefault_timezone: Australia/Sydney\n")
CONFIG = parse_sources(
    """
default_org: acme
default_timezone: Australia/Sydney
orgs:
  northwind:
    timezone: America/New_York
    fhir_sources: ["https://fhir.northwind.example/"]
    referral_id_system: "urn:oid:2.16.840.1.113883.19.1"
    alias_systems: ["urn:oid:2.16.840.1.113883.19.2"]
  saintlukes:
    fhir_sources: ["http://www.saintlukeshealthsystem.org/"]
  lakeside:
    timezone: America/Los_Angeles
"""
)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return doc


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


def adapt(doc: Any, config: SourceConfig = CONFIG) -> list[Draft]:
    return fhir.adapt(doc if isinstance(doc, bytes) else dumps(doc), config)


def one(doc: Any, config: SourceConfig = CONFIG) -> Draft:
    drafts = adapt(doc, config)
    assert len(drafts) == 1, drafts
    return drafts[0]


def event(draft: Draft, config: SourceConfig = CONFIG) -> Any:
    placed = config.resolve(draft)
    assert isinstance(placed, Resolved)
    return to_event(fhir.KIND, placed.org_id, placed.referral_id, draft, RECEIVED)


def rejection(doc: Any, config: SourceConfig = CONFIG) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        adapt(doc, config)
    return info.value


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- published examples -------------------------------------------------------------------


def test_servicerequest_myringotomy_is_a_referral_created() -> None:
    draft = one(load("servicerequest-example-myringotomy.json"), PLAIN)
    assert draft.type.value == "referral.created"
    assert draft.source.value == "ehr"
    # authoredOn is a bare date: midnight in the org's zone (here the default, Sydney).
    assert draft.occurred_at == datetime(2014, 2, 14, tzinfo=SYDNEY)
    assert draft.identifiers == (
        Identifier("http://orionhealth.com/fhir/apps/referralids", "ret4421"),
        Identifier("ServiceRequest", "myringotomy"),
    )
    assert draft.data == {
        "priority": "routine",
        "specialty": "ent",
        "referring_provider_id": "Practitioner/77272",
        "referred_to_provider_id": "Practitioner/76597",
        "reason": "For consideration of Grommets",
    }
    assert draft.patient_id == "77662"
    assert draft.org_id is None
    assert draft.anchor == "ServiceRequest/myringotomy#active"
    canonical = event(draft, PLAIN)
    assert (canonical.org_id, canonical.referral_id) == ("acme", "ret4421")
    assert canonical.occurred_at == at("2014-02-13T13:00:00+00:00")
    assert canonical.data.in_network is True


def test_task_example1_in_progress_is_accepted() -> None:
    draft = one(load("task-example1.json"), PLAIN)
    assert draft.type.value == "referral.accepted"
    assert draft.source.value == "referral_platform"
    assert draft.occurred_at == at("2016-10-31T09:45:05+10:00")  # lastModified
    # focus ServiceRequest/lipid is not in the message: its literal id names the referral;
    # the Task's own identifier follows as an alias.
    assert draft.identifiers == (
        Identifier("ServiceRequest", "lipid"),
        Identifier("http:/goodhealth.org/identifiers", "20170201-001"),
    )
    assert draft.data == {}
    assert draft.patient_id == "example"
    assert event(draft, PLAIN).referral_id == "lipid"


def test_task_example3_draft_is_ignored() -> None:
    assert adapt(load("task-example3.json"), PLAIN) == []


def test_task_example6_completed_closes_the_loop() -> None:
    draft = one(load("task-example6.json"), PLAIN)
    assert draft.type.value == "report.received"
    assert draft.occurred_at == at("2016-10-31T18:45:05+10:00")
    assert event(draft, PLAIN).type == "report.received"


def test_appointment_example_booked_is_scheduled() -> None:
    draft = one(load("appointment-example.json"), PLAIN)
    assert draft.type.value == "appointment.scheduled"
    assert draft.source.value == "scheduling"
    assert draft.occurred_at == datetime(2013, 10, 10, tzinfo=SYDNEY)  # created, a date
    assert draft.data == {
        "appointment_id": "example",
        "appointment_at": at("2013-12-10T09:00:00+00:00"),
    }
    assert draft.identifiers == (Identifier("ServiceRequest", "myringotomy"),)
    assert draft.patient_id == "example"  # the participant that is a Patient
    canonical = event(draft, PLAIN)
    assert canonical.referral_id == "myringotomy"
    assert canonical.data.appointment_at == at("2013-12-10T09:00:00+00:00")


def test_appointment_example_request_proposed_is_ignored() -> None:
    assert adapt(load("appointment-example-request.json"), PLAIN) == []


def test_communication_example_between_providers_is_ignored() -> None:
    # A lab alert from a device to a practitioner: no patient outreach or reply.
    assert adapt(load("communication-example.json"), PLAIN) == []


def test_documentreference_example_preliminary_is_ignored() -> None:
    assert adapt(load("documentreference-example.json"), PLAIN) == []


def test_documentreference_final_related_to_the_referral_is_a_report() -> None:
    doc = load("documentreference-example.json")
    doc["docStatus"] = "final"
    doc["context"]["related"].append({"reference": "ServiceRequest/myringotomy"})
    draft = one(doc, PLAIN)
    assert draft.type.value == "report.received"
    assert draft.occurred_at == at("2005-12-24T09:43:41+11:00")
    # related[0] points at a Patient: its identifier does not name the referral.
    assert draft.identifiers == (Identifier("ServiceRequest", "myringotomy"),)
    assert draft.patient_id == "xcda"
    assert event(draft, PLAIN).type == "report.received"


def test_encounter_example_home_names_no_referral() -> None:
    assert rejection(load("encounter-example-home.json")).code is ErrorCode.MISSING_REFERRAL_ID


def test_bundle_example_searchset_of_medications_is_unsupported() -> None:
    assert rejection(load("bundle-example.json")).code is ErrorCode.UNSUPPORTED_MESSAGE


def test_bser_message_bundle() -> None:
    created, report = adapt(load("bser-referral-message-bundle.json"))
    # The org comes from MessageHeader.source.endpoint through the sources file.
    assert created.org_id == report.org_id == "saintlukes"
    assert created.type.value == "referral.created"
    assert created.occurred_at == datetime(2020, 2, 14, tzinfo=SYDNEY)
    placer = Identifier("", "88888888")
    filler = Identifier("", "99999999")
    by_id = Identifier("ServiceRequest", "servicerequest-bser-referral-servicerequest-arthritis")
    assert created.identifiers == (placer, filler, by_id)
    # No performerType; the code is the bare "Patient referral": the category names it.
    assert created.data["specialty"] == "lifestyle_education_procedure"
    assert created.data["reason"] == "Arthritis (disorder)"
    assert created.patient_id == "1032702"  # the Patient entry's MRN
    # businessStatus 7.0 "fulfillment completed" beats status requested: loop closed.
    assert report.type.value == "report.received"
    assert report.occurred_at == at("2020-01-15T14:43:32-04:00")  # authoredOn, last resort
    assert report.identifiers == (
        placer,
        filler,
        by_id,
        Identifier("", "66666666"),
        Identifier("", "77777777"),
    )
    assert report.patient_id == "1032702"
    assert [event(d).referral_id for d in (created, report)] == ["88888888", "88888888"]


# -- messy real-world variants ------------------------------------------------------------


def test_messy_servicerequest() -> None:
    draft = one(load("variant-servicerequest-messy.json"))
    assert draft.org_id == "northwind"  # meta.source prefix in the sources file
    # PLAC first, untyped, FILL last, then the logical id; the empty value is skipped.
    assert draft.identifiers == (
        Identifier("urn:oid:2.16.840.1.113883.19.1", "R-100234"),
        Identifier("", "ret4421-b"),
        Identifier("urn:oid:2.16.840.1.113883.19.2", "F-9001"),
        Identifier("ServiceRequest", "myringotomy-v2"),
    )
    assert draft.occurred_at == at("2024-05-01T09:30:00.500000-05:00")
    assert draft.data == {
        "priority": "urgent",  # asap
        "specialty": "oto_rhino_laryngologie_orl_équipe_b",
        "referring_provider_id": "1234567893",  # NPI of the contained Practitioner
        "referred_to_provider_id": "1098765435",  # a single object where R4 has an array
        "in_network": False,
        "reason": "Otitis media",
    }
    assert draft.patient_id == "MRN-884412"
    placed = CONFIG.resolve(draft)
    assert isinstance(placed, Resolved)
    assert placed.referral_id == "R-100234"
    assert placed.aliases == (Identifier("urn:oid:2.16.840.1.113883.19.2", "F-9001"),)
    assert event(draft).data.in_network is False


def test_byte_order_mark_and_escapes_are_the_same_message() -> None:
    doc = load("variant-servicerequest-messy.json")
    plain = adapt(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    escaped = adapt(b"\xef\xbb\xbf" + json.dumps(doc, ensure_ascii=True, indent=3).encode())
    assert plain == escaped


def test_bser_task_scheduled_with_contained_appointment() -> None:
    draft = one(load("variant-task-bser-scheduled.json"))
    assert draft.type.value == "appointment.scheduled"
    assert draft.org_id == "northwind"  # meta.tag
    assert draft.occurred_at == at("2024-05-03T13:59:12-04:00")
    assert draft.data == {
        "appointment_id": "appt1",
        "appointment_at": at("2024-05-10T09:00:00-04:00"),
    }
    assert draft.identifiers == (
        Identifier("urn:oid:2.16.840.1.113883.19.1", "R-100234"),
        Identifier("urn:oid:2.16.840.1.113883.19.2", "F-9001"),
    )
    assert event(draft).referral_id == "R-100234"


def test_encounter_finished_linked_to_the_referral_completes_the_appointment() -> None:
    draft = one(load("variant-encounter-linked.json"), PLAIN)
    assert draft.type.value == "appointment.completed"
    assert draft.occurred_at == at("2015-01-17T16:30:00+10:00")  # period.end
    assert draft.data == {"appointment_id": "example"}
    assert event(draft, PLAIN).data.in_network is True


def test_communication_reply_from_the_patient() -> None:
    draft = one(load("variant-communication-reply.json"))
    assert draft.type.value == "patient.responded"
    assert draft.source.value == "comms"
    assert draft.occurred_at == at("2014-12-13T08:14:58+00:00")  # sent
    assert draft.data == {"channel": "sms"}
    assert draft.patient_id == "example"


def test_communication_outreach_to_the_patient() -> None:
    draft = one(load("variant-communication-outreach.json"))
    assert draft.type.value == "patient.outreach"
    # A local code the adapter does not know is passed over for the v3 code.
    assert draft.data == {"channel": "email"}
    # The basedOn reference is logical: its identifier names the referral.
    assert draft.identifiers == (
        Identifier("http://orionhealth.com/fhir/apps/referralids", "ret4421"),
    )
    assert event(draft).referral_id == "ret4421"


def test_diagnostic_report_final() -> None:
    draft = one(load("variant-diagnosticreport-final.json"))
    assert draft.type.value == "report.received"
    assert draft.occurred_at == at("2014-03-15T09:30:00+11:00")  # issued
    assert draft.patient_id == "77662"


def test_transaction_bundle_resolves_urn_references() -> None:
    created, scheduled, completed = adapt(load("variant-transaction-bundle.json"))
    referral = (Identifier("http://lakeside.example/referrals", "R-7"),)
    assert created.identifiers == scheduled.identifiers == completed.identifiers == referral
    assert {created.org_id, scheduled.org_id, completed.org_id} == {"lakeside"}
    # MRN, not the first identifier; the Encounter has no subject: the only Patient.
    assert {created.patient_id, scheduled.patient_id, completed.patient_id} == {"MRN-5"}
    assert created.data == {"priority": "stat", "specialty": "cardiology"}
    assert (
        created.anchor == "ServiceRequest?identifier=http://lakeside.example/referrals|R-7#active"
    )
    assert scheduled.data["appointment_id"] == "A-55"  # no id: the first identifier
    # The Appointment in the bundle is booked, not fulfilled: the Encounter adds seen.
    assert completed.type.value == "appointment.completed"
    assert completed.data == {"appointment_id": "A-55"}
    assert completed.occurred_at == at("2024-06-03T09:41:00-07:00")
    assert [event(d).referral_id for d in (created, scheduled, completed)] == ["R-7"] * 3


def test_encounter_yields_to_a_fulfilled_appointment_in_the_same_bundle() -> None:
    doc = load("variant-transaction-bundle.json")
    doc["entry"][2]["resource"]["status"] = "fulfilled"
    doc["entry"][2]["resource"]["meta"] = {"lastUpdated": "2024-06-03T09:45:00-07:00"}
    types = [d.type.value for d in adapt(doc)]
    assert types == ["referral.created", "appointment.completed"]


# -- mappings, code by code ---------------------------------------------------------------


def bser_task(code: str | None, status: str = "in-progress") -> dict[str, Any]:
    doc = load("variant-task-bser-scheduled.json")
    doc["status"] = status
    if code is None:
        del doc["businessStatus"]
    else:
        doc["businessStatus"]["coding"][0]["code"] = code
    return doc


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("2.0", "referral.routed"),
        ("3.0", "referral.accepted"),
        ("4.0", "referral.declined"),
        ("5.1.1", "appointment.scheduled"),
        ("5.1.2", "appointment.no_show"),
        ("5.1.3", "appointment.cancelled"),
        ("5.1.4", "appointment.completed"),
        ("5.2", None),
        ("6.0", "referral.cancelled"),
        ("7.0", "report.received"),
    ],
)
def test_bser_business_status(code: str, expected: str | None) -> None:
    drafts = adapt(bser_task(code))
    assert [d.type.value for d in drafts] == ([expected] if expected else [])
    for draft in drafts:
        assert event(draft).type == expected
        if expected and expected.startswith("appointment."):
            assert draft.data["appointment_id"] == "appt1"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("requested", "referral.routed"),
        ("received", "referral.routed"),
        ("accepted", "referral.accepted"),
        ("ready", "referral.accepted"),
        ("in-progress", "referral.accepted"),
        ("rejected", "referral.declined"),
        ("cancelled", "referral.cancelled"),
        ("completed", "report.received"),
        ("draft", None),
        ("on-hold", None),
        ("failed", None),
        ("entered-in-error", None),
    ],
)
def test_task_status(status: str, expected: str | None) -> None:
    doc = bser_task(None, status)
    doc["statusReason"] = {"text": "Patient moved out of area"}
    drafts = adapt(doc)
    assert [d.type.value for d in drafts] == ([expected] if expected else [])
    for draft in drafts:
        canonical = event(draft)
        if expected == "referral.routed":
            assert draft.data == {"referred_to_provider_id": "PractitionerRole/recipient"}
        if expected in ("referral.declined", "referral.cancelled"):
            assert canonical.data.reason == "Patient moved out of area"


def test_task_draft_says_nothing_whatever_its_business_status() -> None:
    assert adapt(bser_task("7.0", "draft")) == []


def test_task_appointment_event_without_an_appointment_names_the_task() -> None:
    doc = bser_task("5.1.2")
    del doc["output"]
    assert one(doc).data == {"appointment_id": "Task/bser-task-42"}


def test_task_yields_to_the_appointment_in_the_same_bundle() -> None:
    task = bser_task("5.1.2")
    appointment = task.pop("contained")[0]
    appointment.update(
        status="noshow",
        basedOn=[{"reference": "ServiceRequest/sr-1"}],
        meta={"lastUpdated": "2024-05-10T12:00:00-04:00"},
    )
    task["output"][0]["valueReference"]["reference"] = "Appointment/appt1"
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": task}, {"resource": appointment}],
    }
    assert [(d.type.value, d.source.value) for d in adapt(bundle)] == [
        ("appointment.no_show", "scheduling")
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("booked", "appointment.scheduled"),
        ("fulfilled", "appointment.completed"),
        ("cancelled", "appointment.cancelled"),
        ("noshow", "appointment.no_show"),
        ("proposed", None),
        ("pending", None),
        ("arrived", None),
        ("checked-in", None),
        ("waitlist", None),
        ("entered-in-error", None),
    ],
)
def test_appointment_status(status: str, expected: str | None) -> None:
    doc = load("appointment-example.json")
    doc["status"] = status
    doc["meta"] = {"lastUpdated": "2013-12-10T11:05:00Z"}
    doc["cancelationReason"] = {"text": "Patient unwell"}
    drafts = adapt(doc, PLAIN)
    assert [d.type.value for d in drafts] == ([expected] if expected else [])
    for draft in drafts:
        canonical = event(draft, PLAIN)
        assert canonical.data.appointment_id == "example"
        if expected == "appointment.scheduled":
            assert draft.occurred_at == datetime(2013, 10, 10, tzinfo=SYDNEY)  # created
        else:
            assert draft.occurred_at == at("2013-12-10T11:05:00+00:00")  # meta.lastUpdated
        if expected == "appointment.cancelled":
            assert canonical.data.reason == "Patient unwell"


@pytest.mark.parametrize(
    "marker",
    [
        {"previousAppointment": {"reference": "Appointment/old"}},
        {"extension": [{"url": fhir.PREVIOUS_APPOINTMENT_URL, "valueReference": {}}]},
    ],
)
def test_appointment_rescheduled(marker: dict[str, Any]) -> None:
    doc = load("appointment-example.json") | marker
    draft = one(doc, PLAIN)
    assert draft.type.value == "appointment.rescheduled"
    assert event(draft, PLAIN).data.appointment_at == at("2013-12-10T09:00:00+00:00")


@pytest.mark.parametrize(
    "status", ["planned", "arrived", "triaged", "in-progress", "onleave", "cancelled"]
)
def test_encounter_not_finished_is_ignored(status: str) -> None:
    doc = load("variant-encounter-linked.json")
    doc["status"] = status
    assert adapt(doc) == []


def test_encounter_without_appointment_names_itself() -> None:
    doc = load("variant-encounter-linked.json")
    del doc["appointment"]
    assert one(doc).data == {"appointment_id": "Encounter/home"}


@pytest.mark.parametrize(
    ("code", "channel"),
    [
        ("SMSWRIT", "sms"),
        ("EMAILWRIT", "email"),
        ("PHONE", "phone"),
        ("VIDEOCONF", "phone"),
        ("ONLINEWRIT", "portal"),
        ("MAILWRIT", "letter"),
        ("FAXWRIT", "letter"),
        ("HANDWRIT", "letter"),
        ("TYPEWRIT", "letter"),
    ],
)
def test_outreach_channel(code: str, channel: str) -> None:
    doc = load("variant-communication-outreach.json")
    doc["medium"] = [{"coding": [{"code": code}]}]  # no system: taken as ParticipationMode
    assert event(one(doc)).data.channel == channel


def test_channel_as_text() -> None:
    doc = load("variant-communication-outreach.json")
    doc["medium"] = [{"text": " Portal "}]
    assert one(doc).data == {"channel": "portal"}


def test_reply_in_a_mode_without_a_channel_has_no_channel() -> None:
    doc = load("variant-communication-reply.json")
    doc["medium"][0]["coding"][0]["code"] = "FACE"
    assert one(doc).data == {}
    del doc["medium"]
    assert event(one(doc)).data.channel is None


def test_reply_without_sender_is_a_response_to_the_outreach() -> None:
    doc = load("variant-communication-reply.json")
    del doc["sender"]
    assert one(doc).type.value == "patient.responded"


@pytest.mark.parametrize(
    "status", ["preparation", "in-progress", "not-done", "on-hold", "stopped", "unknown"]
)
def test_communication_not_completed_is_ignored(status: str) -> None:
    doc = load("variant-communication-outreach.json")
    doc["status"] = status
    assert adapt(doc) == []


def communication_request(status: str) -> dict[str, Any]:
    return {
        "resourceType": "CommunicationRequest",
        "id": "cr-1",
        "meta": {"lastUpdated": "2024-05-02T09:00:00+00:00"},
        "basedOn": [{"reference": "ServiceRequest/myringotomy"}],
        "status": status,
        "medium": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
                        "code": "PHONE",
                    }
                ]
            }
        ],
        "subject": {"reference": "Patient/example"},
        "recipient": [{"reference": "Patient/example"}],
        "authoredOn": "2024-05-01T09:00:00+00:00",
    }


def test_communication_request_completed_is_an_outreach() -> None:
    draft = one(communication_request("completed"))
    assert draft.type.value == "patient.outreach"
    assert draft.occurred_at == at("2024-05-02T09:00:00+00:00")
    assert event(draft).data.channel == "phone"


@pytest.mark.parametrize("status", ["draft", "active", "on-hold", "revoked", "entered-in-error"])
def test_communication_request_not_completed_is_ignored(status: str) -> None:
    assert adapt(communication_request(status)) == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [("final", 1), ("amended", 1), ("corrected", 1), ("appended", 1), ("preliminary", 0)]
    + [("registered", 0), ("partial", 0), ("cancelled", 0), ("entered-in-error", 0)],
)
def test_diagnostic_report_status(status: str, expected: int) -> None:
    doc = load("variant-diagnosticreport-final.json")
    doc["status"] = status
    assert len(adapt(doc)) == expected


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("routine", "routine"), ("urgent", "urgent"), ("asap", "urgent"), ("stat", "stat")]
    + [("STAT", "stat"), (None, "routine")],
)
def test_servicerequest_priority(priority: str | None, expected: str) -> None:
    doc = load("servicerequest-example-myringotomy.json")
    doc["priority"] = priority
    assert event(one(doc, PLAIN), PLAIN).data.priority == expected


def test_servicerequest_revoked_is_cancelled_at_last_update() -> None:
    doc = load("servicerequest-example-myringotomy.json")
    doc.update(status="revoked", meta={"lastUpdated": "2014-02-20T10:00:00+11:00"})
    draft = one(doc, PLAIN)
    assert draft.type.value == "referral.cancelled"
    assert draft.occurred_at == at("2014-02-20T10:00:00+11:00")
    assert draft.data == {}


@pytest.mark.parametrize("status", ["draft", "on-hold", "completed", "entered-in-error", "unknown"])
def test_servicerequest_other_states_are_ignored(status: str) -> None:
    doc = load("servicerequest-example-myringotomy.json")
    doc["status"] = status
    assert adapt(doc, PLAIN) == []


def test_requester_that_is_a_patient_is_no_provider() -> None:
    doc = load("servicerequest-example-myringotomy.json")
    doc["requester"] = {"reference": "Patient/77662"}
    assert "referring_provider_id" not in one(doc, PLAIN).data


def test_specialty_prefers_the_coding_display_then_text() -> None:
    doc = load("servicerequest-example-myringotomy.json")
    doc["performerType"] = {"text": "Ear, Nose & Throat"}
    assert one(doc, PLAIN).data["specialty"] == "ear_nose_throat"
    doc["performerType"] = {"coding": [{"code": "ENT-01"}]}
    assert one(doc, PLAIN).data["specialty"] == "ent_01"
    del doc["performerType"]
    assert (
        one(doc, PLAIN).data["specialty"]
        == "myringotomy_and_insertion_of_tympanic_ventilation_tube"
    )


def test_communication_named_by_a_task_in_the_bundle() -> None:
    outreach = load("variant-communication-outreach.json")
    outreach["basedOn"] = [{"reference": "Task/task-bser-referral-task"}]
    bundle = load("bser-referral-message-bundle.json")
    bundle["entry"].append({"resource": outreach})
    drafts = adapt(bundle)
    assert drafts[-1].type.value == "patient.outreach"
    assert drafts[-1].identifiers[0] == Identifier("", "88888888")


# -- bundles and orgs ---------------------------------------------------------------------


def test_invalid_mapped_entry_rejects_the_whole_bundle() -> None:
    bundle = load("bser-referral-message-bundle.json")
    bundle["entry"][3]["resource"]["status"] = "paused"
    assert rejection(bundle).code is ErrorCode.UNMAPPED_CODE
    bundle = load("bser-referral-message-bundle.json")
    bundle["entry"][3]["resource"]["modifierExtension"] = [{"url": "http://x/not-done"}]
    assert rejection(bundle).code is ErrorCode.UNSUPPORTED_MESSAGE


def test_entries_about_no_referral_are_context_in_a_bundle() -> None:
    bundle = load("bser-referral-message-bundle.json")
    bundle["entry"].append({"resource": load("encounter-example-home.json")})
    lab = load("servicerequest-example-myringotomy.json")
    lab["category"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "108252007"}]}]
    bundle["entry"].append({"resource": lab})
    assert len(adapt(bundle)) == 2


def test_bundle_whose_entries_all_name_no_referral() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": load("encounter-example-home.json")}],
    }
    assert rejection(bundle).code is ErrorCode.MISSING_REFERRAL_ID


def test_bundle_of_ignored_entries_is_empty() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": load("task-example3.json")}, {"request": {"method": "DELETE"}}],
    }
    assert adapt(bundle) == []


def test_nested_bundles_are_unpacked() -> None:
    inner = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": load("appointment-example.json")}],
    }
    outer = {"resourceType": "Bundle", "type": "message", "entry": [{"resource": inner}]}
    assert [d.type.value for d in adapt(outer, PLAIN)] == ["appointment.scheduled"]


def test_org_rules() -> None:
    doc = load("appointment-example.json")
    tag = {"system": fhir.ORG_TAG_SYSTEM, "code": "lakeside"}
    assert one(doc, PLAIN).org_id is None  # resolve() then uses identifiers or default_org
    doc["meta"] = {"source": "https://fhir.northwind.example/sched"}
    assert one(doc).org_id == "northwind"
    doc["meta"]["tag"] = [tag]
    assert one(doc).org_id == "lakeside"  # a tag beats meta.source
    bundle = {
        "resourceType": "Bundle",
        "meta": {"tag": [tag]},
        "entry": [{"resource": load("appointment-example.json")}],
    }
    assert one(bundle).org_id == "lakeside"
    # The bare date is midnight in the tagged org's zone.
    assert one(bundle).occurred_at == datetime(2013, 10, 10, tzinfo=ZoneInfo("America/Los_Angeles"))


def test_unresolved_alias_waits() -> None:
    doc = load("variant-task-bser-scheduled.json")
    doc["focus"] = {"reference": "ServiceRequest/sr-9"}
    placed = CONFIG.resolve(one(doc))
    assert not isinstance(placed, Resolved)
    assert placed.aliases == (Identifier("urn:oid:2.16.840.1.113883.19.2", "F-9001"),)


# -- rejections ---------------------------------------------------------------------------


def messy() -> dict[str, Any]:
    return load("variant-servicerequest-messy.json")


def edit(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for name, value in changes.items():
        if value is ...:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


REJECTIONS: list[tuple[str, Any, ErrorCode]] = [
    ("too large", {"resourceType": "Task", "x": "a" * fhir.MAX_FHIR_BYTES}, ErrorCode.TOO_LARGE),
    ("not utf-8", b'{"resourceType": "Task\xff"}', ErrorCode.INVALID_ENCODING),
    ("lone surrogate", b'{"resourceType": "Task", "id": "\\ud800"}', ErrorCode.INVALID_ENCODING),
    ("not json", b'{"resourceType": ', ErrorCode.INVALID_JSON),
    ("nested too deep", b"[" * 100_000, ErrorCode.INVALID_JSON),
    ("array", b"[]", ErrorCode.NOT_AN_OBJECT),
    ("number", b"42", ErrorCode.NOT_AN_OBJECT),
    ("no resourceType", {"id": "x"}, ErrorCode.INVALID_FHIR),
    ("resourceType not a string", {"resourceType": 7}, ErrorCode.INVALID_FHIR),
    ("patient alone", {"resourceType": "Patient", "id": "p"}, ErrorCode.UNSUPPORTED_MESSAGE),
    ("no status", edit(messy(), status=...), ErrorCode.INVALID_FHIR),
    ("status not a string", edit(messy(), status=["active"]), ErrorCode.INVALID_FHIR),
    ("unknown status", edit(messy(), status="paused"), ErrorCode.UNMAPPED_CODE),
    ("unknown priority", edit(messy(), priority="whenever"), ErrorCode.UNMAPPED_CODE),
    ("meta not an object", edit(messy(), meta="x"), ErrorCode.INVALID_FHIR),
    ("identifier not objects", edit(messy(), identifier=["R-1"]), ErrorCode.INVALID_FHIR),
    ("identifier value a number", edit(messy(), identifier=[{"value": 7}]), ErrorCode.INVALID_FHIR),
    (
        "identifier too long",
        edit(messy(), identifier=[{"value": "r" * 129}]),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "control character id",
        edit(messy(), identifier=[{"value": "R\u00011"}]),
        ErrorCode.INVALID_FHIR,
    ),
    ("naive time", edit(messy(), authoredOn="2024-05-01T09:30:00"), ErrorCode.NAIVE_TIMESTAMP),
    ("year-month", edit(messy(), authoredOn="2024-05"), ErrorCode.INVALID_FHIR),
    ("not a date", edit(messy(), authoredOn="yesterday"), ErrorCode.INVALID_FHIR),
    ("month 13", edit(messy(), authoredOn="2024-13-01"), ErrorCode.INVALID_FHIR),
    ("time not a string", edit(messy(), authoredOn=20240501), ErrorCode.INVALID_FHIR),
    ("before 1900", edit(messy(), authoredOn="1850-01-01"), ErrorCode.TIMESTAMP_OUT_OF_RANGE),
    (
        "year 1",
        edit(messy(), authoredOn="0001-01-01T00:00:00+10:00"),
        ErrorCode.TIMESTAMP_OUT_OF_RANGE,
    ),
    ("year 9999", edit(messy(), authoredOn="9999-12-31"), ErrorCode.TIMESTAMP_OUT_OF_RANGE),
    (
        "after 2262",
        edit(messy(), authoredOn="2300-01-01T00:00:00Z"),
        ErrorCode.TIMESTAMP_OUT_OF_RANGE,
    ),
    (
        "modifier extension",
        edit(messy(), modifierExtension=[{"url": "http://x/negated", "valueBoolean": True}]),
        ErrorCode.UNSUPPORTED_MESSAGE,
    ),
    ("offset 24h", edit(messy(), authoredOn="2024-05-01T09:30:00+24:00"), ErrorCode.INVALID_FHIR),
    ("no time at all", edit(messy(), authoredOn=..., meta=...), ErrorCode.INVALID_FHIR),
    ("no specialty", edit(messy(), performerType=..., code=...), ErrorCode.INVALID_FHIR),
    (
        "in-network not bool",
        edit(messy(), extension=[{"url": fhir.IN_NETWORK_URL, "valueBoolean": "no"}]),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "bad org tag",
        edit(messy(), meta={"tag": [{"system": fhir.ORG_TAG_SYSTEM, "code": "a/b"}]}),
        ErrorCode.INVALID_FHIR,
    ),
    ("no referral", edit(messy(), identifier=..., id=...), ErrorCode.MISSING_REFERRAL_ID),
    (
        "not a referral",
        edit(messy(), category=[{"text": "Laboratory"}]),
        ErrorCode.UNSUPPORTED_MESSAGE,
    ),
    (
        "booked without start",
        edit(load("appointment-example.json"), start=...),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "appointment without id",
        edit(load("appointment-example.json"), id=...),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "unknown appointment status",
        edit(load("appointment-example.json"), status="tentative"),
        ErrorCode.UNMAPPED_CODE,
    ),
    ("unknown task status", bser_task(None, "paused"), ErrorCode.UNMAPPED_CODE),
    ("unknown BSeR code", bser_task("9.9"), ErrorCode.UNMAPPED_CODE),
    (
        "scheduled Task without appointment",
        edit(bser_task("5.1.1"), output=...),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "encounter without appointment or id",
        edit(load("variant-encounter-linked.json"), appointment=..., id=...),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "outreach without medium",
        edit(load("variant-communication-outreach.json"), medium=...),
        ErrorCode.INVALID_FHIR,
    ),
    (
        "outreach face to face",
        edit(load("variant-communication-outreach.json"), medium=[{"coding": [{"code": "FACE"}]}]),
        ErrorCode.UNMAPPED_CODE,
    ),
    (
        "unknown medium",
        edit(
            load("variant-communication-reply.json"),
            medium=[{"coding": [{"system": "http://x", "code": "pigeon"}]}],
        ),
        ErrorCode.UNMAPPED_CODE,
    ),
    (
        "communication names no referral",
        edit(load("variant-communication-reply.json"), basedOn=...),
        ErrorCode.MISSING_REFERRAL_ID,
    ),
    (
        "entry without resourceType",
        {"resourceType": "Bundle", "entry": [{"resource": {"id": "1"}}]},
        ErrorCode.INVALID_FHIR,
    ),
    ("entry not an object", {"resourceType": "Bundle", "entry": ["x"]}, ErrorCode.INVALID_FHIR),
    (
        "empty bundle",
        {"resourceType": "Bundle", "type": "collection"},
        ErrorCode.UNSUPPORTED_MESSAGE,
    ),
]


def nest(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = load("appointment-example.json")
    for _ in range(depth):
        doc = {"resourceType": "Bundle", "entry": [{"resource": doc}]}
    return doc


REJECTIONS.append(("bundles too deep", nest(fhir.MAX_BUNDLE_DEPTH + 2), ErrorCode.INVALID_FHIR))


@pytest.mark.parametrize(("why", "doc", "code"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections(why: str, doc: Any, code: ErrorCode) -> None:
    err = rejection(doc)
    assert err.code is code, err
    assert err.detail


def test_no_org_anywhere_is_unknown_org() -> None:
    draft = one(load("appointment-example.json"), SourceConfig.default())
    with pytest.raises(EventRejected) as info:
        SourceConfig.default().resolve(draft)
    assert info.value.code is ErrorCode.UNKNOWN_ORG


def test_error_names_the_field() -> None:
    bundle = load("bser-referral-message-bundle.json")
    bundle["entry"][1]["resource"]["authoredOn"] = "2020-02-14T10:00:00"
    err = rejection(bundle)
    assert err.field == "Bundle.entry[1].resource.authoredOn"


# -- deterministic event ids --------------------------------------------------------------


def event_ids(doc: Any, config: SourceConfig = PLAIN) -> list[str]:
    return [event(d, config).event_id for d in adapt(doc, config)]


def test_event_ids_are_deterministic() -> None:
    bundle = load("bser-referral-message-bundle.json")
    first = event_ids(bundle, CONFIG)
    assert first == event_ids(json.loads(json.dumps(bundle, indent=4)), CONFIG)
    assert len(set(first)) == 2
    appointment = load("appointment-example.json")
    booked = event_ids(appointment)
    appointment.update(status="noshow", meta={"lastUpdated": "2013-12-10T11:05:00Z"})
    assert event_ids(appointment) != booked
    task = bser_task(None, "accepted")
    accepted = event_ids(task, CONFIG)
    task["status"] = "in-progress"  # also referral.accepted, at the same time
    assert event_ids(task, CONFIG) != accepted


# -- dead-letter redaction ----------------------------------------------------------------


def test_redact_bser_bundle() -> None:
    raw = (FIXTURES / "bser-referral-message-bundle.json").read_bytes()
    out, changed = fhir.redact(raw, KEY)
    assert changed
    text = out.decode()
    for secret in ("Everywoman", "1032702", "eve.everywoman", "Peachtree", "1974-11-24"):
        assert secret not in text
    doc = json.loads(out)
    pseudo = pseudonymize(KEY, "", "patient-us-core-patient-eve-everywoman")
    assert doc["entry"][2]["resource"] == {"resourceType": "Patient", "id": pseudo}
    assert doc["entry"][2]["fullUrl"] == f"http://example.org/fhir/Patient/{pseudo}"
    sr = doc["entry"][1]["resource"]
    assert sr["subject"] == {"reference": f"Patient/{pseudo}"}
    assert sr["identifier"][0]["value"] == "88888888"  # referral ids stay: they are the point
    assert doc["entry"][3]["resource"]["for"] == {"reference": f"Patient/{pseudo}"}


def test_redact_references_identifiers_and_free_text() -> None:
    out, changed = fhir.redact((FIXTURES / "variant-servicerequest-messy.json").read_bytes(), KEY)
    assert changed
    doc = json.loads(out)
    assert doc["subject"] == {
        "identifier": {
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": pseudonymize(KEY, "", "MRN-884412"),
        }
    }
    raw = (FIXTURES / "servicerequest-example-myringotomy.json").read_bytes()
    text = fhir.redact(raw, KEY)[0].decode()
    assert "Beverly" not in text and "77662" not in text
    assert "Practitioner/77272" in text


def test_redact_urn_references_and_conditional_creates() -> None:
    out, changed = fhir.redact((FIXTURES / "variant-transaction-bundle.json").read_bytes(), KEY)
    text = out.decode()
    assert changed
    assert "MRN-5" not in text and "Chalmers" not in text and "61ebe359" not in text
    doc = json.loads(out)
    patient_url = doc["entry"][0]["fullUrl"]
    assert doc["entry"][1]["resource"]["subject"]["reference"] == patient_url


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"{", b"[1, 2]", b'{"resourceType": "Basic"}'])
def test_redact_leaves_what_it_cannot_read_or_holds_nothing(raw: bytes) -> None:
    assert fhir.redact(raw, KEY) == (raw, False)


# -- round trip through the encoder -------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=128)
VISIBLE = TEXT.filter(lambda s: s.strip() != "")
ORG = st.text(
    st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/"),
    min_size=1,
    max_size=64,
)
SLUG = st.from_regex(r"[a-z0-9]{1,12}(_[a-z0-9]{1,12}){0,4}", fullmatch=True)
REASON = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=1024)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2262, 4, 9)))
    minutes = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    fraction = draw(st.sampled_from(["", ".5", ".123456", ".000001", ".1234567"]))
    if minutes == 0 and draw(st.booleans()):
        offset = "Z"
    else:
        sign = "-" if minutes < 0 else "+"
        offset = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def canonical_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "referral.created",
                "referral.routed",
                "referral.accepted",
                "referral.declined",
                "referral.cancelled",
                "patient.outreach",
                "patient.responded",
                "appointment.scheduled",
                "appointment.rescheduled",
                "appointment.cancelled",
                "appointment.no_show",
                "appointment.completed",
                "report.received",
            ]
        )
    )
    channel = st.sampled_from(["sms", "email", "phone", "portal", "letter"])
    data: dict[str, Any] = {}
    if kind == "referral.created":
        data = {
            "priority": draw(st.sampled_from(["routine", "urgent", "stat"])),
            "specialty": draw(SLUG),
            "referring_provider_id": draw(optional(VISIBLE)),
            "referred_to_provider_id": draw(optional(VISIBLE)),
            "in_network": draw(optional(st.booleans())),
            "reason": draw(optional(REASON)),
        }
    elif kind == "referral.routed":
        data = {
            "referred_to_provider_id": draw(optional(VISIBLE)),
            "in_network": draw(optional(st.booleans())),
        }
    elif kind in ("referral.declined", "referral.cancelled"):
        data = {"reason": draw(optional(REASON))}
    elif kind == "patient.outreach":
        data = {"channel": draw(channel)}
    elif kind == "patient.responded":
        data = {"channel": draw(optional(channel))}
    elif kind.startswith("appointment."):
        data = {"appointment_id": draw(VISIBLE)}
        if kind in ("appointment.scheduled", "appointment.rescheduled"):
            data["appointment_at"] = draw(timestamps())
        if kind in ("appointment.scheduled", "appointment.rescheduled", "appointment.completed"):
            data["in_network"] = draw(optional(st.booleans()))
        if kind == "appointment.cancelled":
            data["reason"] = draw(optional(REASON))
    doc: dict[str, Any] = {
        "event_id": draw(TEXT),
        "referral_id": draw(VISIBLE),
        "org_id": draw(ORG),
        "type": kind,
        "occurred_at": draw(timestamps()),
        "source": draw(st.sampled_from(["ehr", "scheduling", "comms", "referral_platform"])),
        "data": {k: v for k, v in data.items() if v is not None},
    }
    if draw(st.booleans()):
        doc["patient_id"] = draw(VISIBLE)
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical_events())
def test_round_trip_through_fhir(doc: dict[str, Any]) -> None:
    expected = parse_event(dumps(doc), RECEIVED)
    raw = encode(doc, doc["org_id"])
    assert raw is not None
    (draft,) = fhir.adapt(raw, SourceConfig.default())
    got = event(draft, SourceConfig.default())
    assert (got.referral_id, got.org_id, got.type) == (
        doc["referral_id"],
        doc["org_id"],
        doc["type"],
    )
    assert got.occurred_at == expected.occurred_at
    assert got.data.model_dump() == expected.data.model_dump()
    assert got.patient_id == doc.get("patient_id")
    # Encoding the same event twice gives the same event id.
    assert (
        event(fhir.adapt(raw, SourceConfig.default())[0], SourceConfig.default()).event_id
        == got.event_id
    )


@pytest.mark.parametrize("kind", ["patient.feedback", "care.out_of_network"])
def test_types_fhir_does_not_express(kind: str) -> None:
    assert encode({"event_id": "e", "referral_id": "r", "type": kind, "data": {}}, "o") is None


def test_encoded_referral_id_is_in_its_own_system() -> None:
    doc = {
        "event_id": "e-1",
        "referral_id": "R-1",
        "org_id": "northwind",
        "type": "referral.accepted",
        "occurred_at": "2025-03-04T15:20:00-05:00",
        "source": "referral_platform",
    }
    raw = encode(doc, "northwind")
    assert raw is not None
    assert one(raw).identifiers == (Identifier(REFERRAL_SYSTEM, "R-1"),)


# -- fuzzing: adapt returns valid drafts or rejects; redact never raises -------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_TREES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CODES = sorted(
    {
        *fhir.SERVICE_REQUEST_STATUS, *fhir.TASK_STATUS, *fhir.APPOINTMENT_STATUS,
        *fhir.ENCOUNTER_STATUS, *fhir.COMMUNICATION_SENT, *fhir.REPORT_STATUS,
        *fhir.DOCUMENT_STATUS, *fhir.PRIORITY, *fhir.PARTICIPATION_MODE,
        "PLAC", "FILL", "MR", "3457005", "sms", "bogus",
    }
)  # fmt: skip
SHORT = st.text(max_size=8)
NAME = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8)
CODE = st.sampled_from(CODES) | SHORT


_ONE_IN_TEN = st.sampled_from([True] + [False] * 9)


@st.composite
def mostly(draw: st.DrawFn, strategy: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """`strategy` nine times in ten, `odd` otherwise."""
    return draw(odd) if draw(_ONE_IN_TEN) else draw(strategy)


ODD_TIMES = [
    "2014-02-14",
    "2024-05",
    "2024-05-01T10:00:00",
    "0001-01-01T00:00:00+10:00",
    "9999-12-31",
]
TIME = mostly(timestamps(), st.sampled_from(ODD_TIMES))
CONCEPT = st.fixed_dictionaries(
    {},
    optional={
        "text": SHORT,
        "coding": st.lists(
            st.fixed_dictionaries(
                {},
                optional={"system": st.sampled_from(["", "urn:x"]), "code": CODE, "display": SHORT},
            ),
            max_size=2,
        ),
    },
)
IDENTIFIER = st.fixed_dictionaries(
    {"value": mostly(NAME, SHORT | JSON_SCALARS)},
    optional={
        "system": st.sampled_from(["", "urn:x", "urn:oid:2.16.840.1.113883.19.2"]),
        "type": CONCEPT,
    },
)
REF = st.fixed_dictionaries(
    {},
    optional={
        "reference": st.sampled_from(
            ["ServiceRequest/1", "Task/t", "#c1", "Patient/p", "Appointment/a", "urn:uuid:1"]
        )
        | SHORT,
        "type": st.sampled_from(["ServiceRequest", "Patient", "Appointment"]),
        "identifier": IDENTIFIER,
        "display": SHORT,
    },
)
NOISE = JSON_TREES


def noisy(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly well-formed, sometimes any JSON."""
    return mostly(strategy, NOISE)


CONTAINED = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Appointment", "ServiceRequest", "Patient", "Practitioner"])},
    optional={
        "id": st.just("c1"),
        "status": CODE,
        "start": TIME,
        "identifier": st.lists(IDENTIFIER, max_size=2),
    },
)
CONTEXT = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Practitioner", "MessageHeader"])},
    optional={"id": NAME, "identifier": st.lists(IDENTIFIER, max_size=2)},
)
STATUSES: dict[str, dict[str, Any]] = {
    "ServiceRequest": fhir.SERVICE_REQUEST_STATUS,
    "Task": fhir.TASK_STATUS,
    "Appointment": fhir.APPOINTMENT_STATUS,
    "Encounter": fhir.ENCOUNTER_STATUS,
    "Communication": fhir.COMMUNICATION_SENT,
    "CommunicationRequest": fhir.COMMUNICATION_REQUEST_SENT,
    "DocumentReference": fhir.DOCUMENT_STATUS,
    "DiagnosticReport": fhir.REPORT_STATUS,
}
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": mostly(NAME, SHORT),
    "docStatus": CODE,
    "priority": CODE,
    "identifier": st.lists(IDENTIFIER, max_size=3),
    "basedOn": st.lists(REF, max_size=2),
    "focus": REF,
    "for": REF,
    "subject": REF,
    "sender": REF,
    "requester": REF,
    "owner": REF,
    "performer": st.lists(REF, max_size=2),
    "recipient": st.lists(REF, max_size=2),
    "inResponseTo": st.lists(REF, max_size=1),
    "appointment": st.lists(REF, max_size=1),
    "participant": st.lists(st.fixed_dictionaries({"actor": REF}), max_size=2),
    "authoredOn": TIME,
    "lastModified": TIME,
    "start": TIME,
    "created": TIME,
    "sent": TIME,
    "received": TIME,
    "date": TIME,
    "issued": TIME,
    "period": st.fixed_dictionaries({}, optional={"end": TIME}),
    "meta": st.fixed_dictionaries(
        {},
        optional={
            "lastUpdated": TIME,
            "source": st.sampled_from(["https://fhir.northwind.example/x"]) | SHORT,
            "tag": st.lists(
                st.fixed_dictionaries({"system": st.just(fhir.ORG_TAG_SYSTEM), "code": SHORT}),
                max_size=1,
            ),
        },
    ),
    "performerType": CONCEPT,
    "code": CONCEPT,
    "category": st.lists(CONCEPT, max_size=2),
    "statusReason": CONCEPT,
    "cancelationReason": CONCEPT,
    "medium": st.lists(CONCEPT, max_size=2),
    "businessStatus": st.builds(
        lambda code: {"coding": [{"system": fhir.BSER_BUSINESS_STATUS, "code": code}]},
        st.sampled_from(sorted(fhir.BSER_STATUS)) | SHORT,
    ),
    "context": st.fixed_dictionaries({}, optional={"related": st.lists(REF, max_size=2)}),
    "output": st.lists(st.fixed_dictionaries({"valueReference": REF}), max_size=2),
    "contained": st.lists(CONTAINED, max_size=2),
    "extension": st.lists(
        st.fixed_dictionaries(
            {"url": st.sampled_from([fhir.IN_NETWORK_URL, fhir.PREVIOUS_APPOINTMENT_URL])},
            optional={"valueBoolean": st.booleans() | JSON_SCALARS},
        ),
        max_size=2,
    ),
}
SR_REF = st.sampled_from(
    [
        {"reference": "ServiceRequest/1"},
        {"reference": "http://x/fhir/ServiceRequest/1"},
        {"reference": "urn:uuid:1"},
        {"type": "ServiceRequest", "identifier": {"system": "urn:x", "value": "R-1"}},
    ]
)
# Enough of each resource to be mapped most of the time; anything else may be added.
CORE: dict[str, st.SearchStrategy[Any]] = {
    "identifier": st.lists(IDENTIFIER, min_size=1, max_size=2),
    "basedOn": st.lists(SR_REF, min_size=1, max_size=2),
    "focus": SR_REF,
    "context": st.fixed_dictionaries({"related": st.lists(SR_REF, min_size=1, max_size=1)}),
    "meta": st.fixed_dictionaries({"lastUpdated": TIME}),
    "medium": st.lists(CONCEPT, min_size=1, max_size=1),
}


def status(kind: str) -> st.SearchStrategy[Any]:
    table = STATUSES[kind]
    live = sorted(code for code, value in table.items() if value)
    return mostly(st.sampled_from(live), st.sampled_from(sorted(table)))


EXTRA_FIELDS = sorted(name for name in FIELD_VALUES if name not in CORE)


@st.composite
def resources(draw: st.DrawFn) -> dict[str, Any]:
    """A mapped resource: its core fields, a few more, each now and then any JSON."""
    kind = draw(st.sampled_from(sorted(STATUSES)))
    doc: dict[str, Any] = {"resourceType": kind, "status": draw(noisy(status(kind)))}
    for name, value in CORE.items():
        doc[name] = draw(noisy(value))
    for name in draw(st.lists(st.sampled_from(EXTRA_FIELDS), max_size=8, unique=True)):
        doc[name] = draw(noisy(FIELD_VALUES[name]))
    return doc


RESOURCES = resources()
BUNDLES = st.builds(
    lambda entries, meta: {
        "resourceType": "Bundle",
        "type": "collection",
        "meta": meta,
        "entry": entries,
    },
    st.lists(
        st.fixed_dictionaries(
            {"resource": mostly(RESOURCES, CONTEXT)},
            optional={"fullUrl": st.sampled_from(["urn:uuid:1", "http://x/fhir/ServiceRequest/1"])},
        ),
        max_size=4,
    ),
    FIELD_VALUES["meta"],
)


def mutate(doc: Any, choices: list[tuple[int, Any]]) -> Any:
    """Apply (selector, value) edits at pseudo-random places in a copy of doc."""
    doc = copy.deepcopy(doc)
    for selector, value in choices:
        nodes: list[Any] = []
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                nodes.append(node)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        node = nodes[selector % len(nodes)]
        keys = list(node)
        if not keys:
            node["status"] = value
        elif selector % 3 == 0:
            del node[keys[selector % len(keys)]]
        else:
            node[keys[selector % len(keys)]] = value
    return doc


FIXTURE_DOCS = [load(p.name) for p in sorted(FIXTURES.glob("*.json"))]


def check_adapt(raw: bytes) -> None:
    try:
        drafts = fhir.adapt(raw, PLAIN)
    except EventRejected:
        return
    for draft in drafts:
        placed = PLAIN.resolve(draft)
        assert isinstance(placed, Resolved)
        to_event(fhir.KIND, placed.org_id, placed.referral_id, draft, RECEIVED)


FUZZ = settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
EDIT_VALUES = st.one_of(*FIELD_VALUES.values(), NOISE, st.sampled_from(CODES))


@FUZZ
@given(RESOURCES | BUNDLES)
def test_fuzz_plausible_resources(doc: dict[str, Any]) -> None:
    raw = dumps(doc)
    check_adapt(raw)
    out, _ = fhir.redact(raw, KEY)
    assert isinstance(out, bytes)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(FIXTURE_DOCS),
    st.lists(st.tuples(st.integers(0, 10**6), EDIT_VALUES), min_size=1, max_size=4),
)
def test_fuzz_mutated_fixtures(doc: dict[str, Any], edits: list[tuple[int, Any]]) -> None:
    raw = dumps(mutate(doc, edits))
    check_adapt(raw)
    out, _ = fhir.redact(raw, KEY)
    assert isinstance(out, bytes)


ANY_JSON = st.builds(
    lambda kind, rest: dumps({"resourceType": kind, **rest} if isinstance(rest, dict) else rest),
    st.sampled_from([*fhir.MAPPERS, "Bundle"]),
    NOISE,
)
TRUNCATED = (
    st.sampled_from(FIXTURE_DOCS)
    .map(dumps)
    .flatmap(lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut]))
)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | TRUNCATED | ANY_JSON)
def test_fuzz_random_bytes_and_json(raw: bytes) -> None:
    check_adapt(raw)
    out, changed = fhir.redact(raw, KEY)
    assert isinstance(out, bytes) and isinstance(changed, bool)


def test_offsets_are_kept_and_stored_in_utc() -> None:
    # The adapter hands on offsets as given; canonical events store them in UTC.
    draft = one(load("variant-task-bser-scheduled.json"))
    assert draft.occurred_at.utcoffset() == timedelta(hours=-4)
    assert event(draft).occurred_at.astimezone(UTC) == datetime(2024, 5, 3, 17, 59, 12, tzinfo=UTC)
    assert isinstance(draft.occurred_at.tzinfo, timezone)
