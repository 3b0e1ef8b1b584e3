"""Canonical events (SPEC §3) as the FHIR R4 resources an upstream system would send.

A test double for a FHIR source: `encode` renders one canonical event as the resource
the fhir adapter maps back to the same event (docs/integrations.md, FHIR R4). The referral
id is the value of an identifier in REFERRAL_SYSTEM, the first identifier the resource
gives, so with no sources-file entry it is the referral id; the org is the meta.tag.

Faithful for values FHIR can carry: the adapter turns a specialty into a slug
("Heart Clinic" -> "heart_clinic"), and FHIR strings cannot be empty or all
whitespace, so ids and reasons are expected to have visible content.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from schemas.adapters.config import ORG_TAG_SYSTEM
from schemas.adapters.fhir import IN_NETWORK_URL, PREVIOUS_APPOINTMENT_URL
from schemas.events import Timestamp

REFERRAL_SYSTEM = "https://reftrack.dev/fhir/referral-id"
APPOINTMENT_SYSTEM = "https://reftrack.dev/fhir/appointment-id"
PARTICIPATION_MODE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
CHANNEL_MODES = {
    "sms": "SMSWRIT",
    "email": "EMAILWRIT",
    "phone": "PHONE",
    "portal": "ONLINEWRIT",
    "letter": "MAILWRIT",
}
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TIMESTAMP: TypeAdapter[Any] = TypeAdapter(Timestamp)

Json = dict[str, Any]


def encode(event: Json, org_id: str) -> bytes | None:
    """The FHIR resource for one canonical event, or None for a type FHIR cannot
    express here (patient.feedback, care.out_of_network)."""
    build = _BUILDERS.get(event["type"])
    if build is None:
        return None
    resource = build(event, event.get("data") or {})
    if "id" not in resource and "identifier" not in resource:
        resource["id"] = hashlib.sha256(event["event_id"].encode()).hexdigest()[:32]
    resource.setdefault("meta", {})["tag"] = [{"system": ORG_TAG_SYSTEM, "code": org_id}]
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _instant(value: Any) -> str:
    """An RFC 3339 timestamp as a FHIR instant (the same moment and offset)."""
    return str(_TIMESTAMP.validate_python(value).isoformat())


def _referral(event: Json) -> Json:
    return {
        "type": "ServiceRequest",
        "identifier": {"system": REFERRAL_SYSTEM, "value": event["referral_id"]},
    }


def _patient(event: Json) -> Json | None:
    patient_id = event.get("patient_id")
    return None if patient_id is None else {"type": "Patient", "identifier": {"value": patient_id}}


def _provider(value: str | None) -> Json | None:
    return None if value is None else {"identifier": {"value": value}}


def _in_network(data: Json) -> list[Json]:
    value = data.get("in_network")
    return [] if value is None else [{"url": IN_NETWORK_URL, "valueBoolean": value}]


def _compact(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if v is not None and v != []}


def _service_request(event: Json, data: Json) -> Json:
    reason = data.get("reason")
    performer = _provider(data.get("referred_to_provider_id"))
    return _compact(
        {
            "resourceType": "ServiceRequest",
            "extension": _in_network(data),
            "identifier": [{"system": REFERRAL_SYSTEM, "value": event["referral_id"]}],
            "status": "active",
            "intent": "order",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "3457005",
                            "display": "Patient referral",
                        }
                    ]
                }
            ],
            "priority": data["priority"],
            "subject": _patient(event),
            "authoredOn": _instant(event["occurred_at"]),
            "requester": _provider(data.get("referring_provider_id")),
            "performerType": {"text": data["specialty"]},
            "performer": [performer] if performer else None,
            "reasonCode": [{"text": reason}] if reason else None,
        }
    )


def _task(status: str) -> Callable[[Json, Json], Json]:
    def build(event: Json, data: Json) -> Json:
        reason = data.get("reason")
        return _compact(
            {
                "resourceType": "Task",
                "extension": _in_network(data),
                "status": status,
                "statusReason": {"text": reason} if reason else None,
                "intent": "order",
                "focus": _referral(event),
                "for": _patient(event),
                "lastModified": _instant(event["occurred_at"]),
                "owner": _provider(data.get("referred_to_provider_id")),
            }
        )

    return build


def _communication(event: Json, data: Json) -> Json:
    channel = data.get("channel")
    patient = _patient(event) or {"type": "Patient"}
    outreach = event["type"] == "patient.outreach"
    return _compact(
        {
            "resourceType": "Communication",
            "basedOn": [_referral(event)],
            "status": "completed",
            "medium": (
                [{"coding": [{"system": PARTICIPATION_MODE, "code": CHANNEL_MODES[channel]}]}]
                if channel
                else None
            ),
            "subject": _patient(event),
            "sent": _instant(event["occurred_at"]),
            "recipient": [patient] if outreach else None,
            "sender": None if outreach else patient,
        }
    )


def _appointment(status: str) -> Callable[[Json, Json], Json]:
    def build(event: Json, data: Json) -> Json:
        appointment_id = data["appointment_id"]
        booked = status == "booked"
        reason = data.get("reason")
        extension = _in_network(data)
        if event["type"] == "appointment.rescheduled":
            extension.append(
                {"url": PREVIOUS_APPOINTMENT_URL, "valueReference": {"display": "earlier booking"}}
            )
        patient = _patient(event)
        resource: Json = {
            "resourceType": "Appointment",
            "meta": None if booked else {"lastUpdated": _instant(event["occurred_at"])},
            "extension": extension,
            "status": status,
            "cancelationReason": {"text": reason} if reason else None,
            "start": _instant(data["appointment_at"]) if booked else None,
            "created": _instant(event["occurred_at"]) if booked else None,
            "basedOn": [_referral(event)],
            "participant": [{"actor": patient, "status": "accepted"}] if patient else None,
        }
        if _FHIR_ID.fullmatch(appointment_id):
            resource["id"] = appointment_id
        else:
            resource["identifier"] = [{"system": APPOINTMENT_SYSTEM, "value": appointment_id}]
        return _compact(resource)

    return build


def _document_reference(event: Json, data: Json) -> Json:
    return _compact(
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "docStatus": "final",
            "subject": _patient(event),
            "date": _instant(event["occurred_at"]),
            "content": [{"attachment": {"contentType": "text/plain", "title": "Consult report"}}],
            "context": {"related": [_referral(event)]},
        }
    )


_BUILDERS: dict[str, Callable[[Json, Json], Json]] = {
    "referral.created": _service_request,
    "referral.routed": _task("requested"),
    "referral.accepted": _task("accepted"),
    "referral.declined": _task("rejected"),
    "referral.cancelled": _task("cancelled"),
    "patient.outreach": _communication,
    "patient.responded": _communication,
    "appointment.scheduled": _appointment("booked"),
    "appointment.rescheduled": _appointment("booked"),
    "appointment.cancelled": _appointment("cancelled"),
    "appointment.no_show": _appointment("noshow"),
    "appointment.completed": _appointment("fulfilled"),
    "report.received": _document_reference,
}
