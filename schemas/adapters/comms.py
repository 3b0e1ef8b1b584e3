"""Patient-messaging webhooks (`referrals.raw.comms.v1`) into outreach and reply events.

Two input shapes (docs/integrations.md, Messaging):

- the generic shape, for any tool that can send JSON:
  `{"org_id", "referral_id", "message_id", "status": sent|delivered|failed|replied,
    "channel": sms|email|phone|portal|letter, "occurred_at", "patient_id"?}`
- a Twilio status callback or inbound-message webhook, as a relay forwards it:
  `{"provider": "twilio", "received_at", "params": {"org_id"?, "referral_id"},
    "body": {the form fields Twilio posted: MessageSid, MessageStatus or SmsStatus,
    AccountSid, ...}}`. Twilio's callbacks carry no referral and no time: the relay
  puts the referral (from the StatusCallback URL's query string) in `params` and the
  time it received the callback in `received_at`.

`sent` is the outreach attempt and `replied` (Twilio: `received`) the patient's answer.
`delivered`, `failed` and Twilio's other statuses say nothing new about the referral:
they are ignored (no event), so a message sent, then delivered, counts one attempt.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.adapters.base import Draft, Identifier
from schemas.adapters.config import SourceConfig
from schemas.adapters.jsonsource import (
    decode_object,
    optional_string,
    redact_json,
    required_string,
    timestamp,
)
from schemas.errors import ErrorCode, EventRejected
from schemas.events import Channel, EventType, Source

KIND = "comms"
MAX_COMMS_BYTES = 64 * 1024

GENERIC_STATUSES = {
    "sent": EventType.PATIENT_OUTREACH,
    "replied": EventType.PATIENT_RESPONDED,
    "delivered": None,
    "failed": None,
}
TWILIO_STATUSES = {
    "sent": EventType.PATIENT_OUTREACH,
    "received": EventType.PATIENT_RESPONDED,
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "delivered": None,
    "undelivered": None,
    "failed": None,
    "read": None,
    "receiving": None,
    "canceled": None,
}
# Fields of the webhooks that identify a person (phone numbers, e-mail, message text):
# emptied in dead-letter copies.
PERSONAL_FIELDS = frozenset({"To", "From", "Body", "to", "from", "body", "address", "text"})


def adapt(raw: bytes, config: SourceConfig) -> list[Draft]:
    doc = decode_object(raw, MAX_COMMS_BYTES)
    if doc.get("provider") == "twilio":
        return _twilio(doc, config)
    if "provider" in doc:
        raise EventRejected(
            ErrorCode.UNSUPPORTED_MESSAGE,
            f"provider {json.dumps(doc['provider'])[:40]} has no mapping (twilio, or the "
            "generic shape without provider)",
            "provider",
        )
    return _generic(doc, config)


def _generic(doc: dict[str, Any], config: SourceConfig) -> list[Draft]:
    status = required_string(doc, "status")
    if status not in GENERIC_STATUSES:
        raise EventRejected(
            ErrorCode.UNMAPPED_CODE,
            f"status {status[:40]!r} is not one of {', '.join(GENERIC_STATUSES)}",
            "status",
        )
    event_type = GENERIC_STATUSES[status]
    referral_id = required_string(doc, "referral_id")
    message_id = required_string(doc, "message_id")
    org = optional_string(doc, "org_id")
    channel = optional_string(doc, "channel")
    if event_type is None:
        return []
    if event_type is EventType.PATIENT_OUTREACH and channel is None:
        raise EventRejected(
            ErrorCode.MISSING_DATA_FIELD, "a sent message needs its channel", "channel"
        )
    if channel is not None and channel not in Channel.__members__.values():
        raise EventRejected(
            ErrorCode.INVALID_DATA_FIELD,
            f"channel {channel[:40]!r} is not one of {', '.join(c.value for c in Channel)}",
            "channel",
        )
    data = {"channel": channel} if channel is not None else {}
    return [
        Draft(
            type=event_type,
            occurred_at=timestamp(doc, "occurred_at", config, org),
            source=Source.COMMS,
            anchor=f"message/{message_id}/{status}",
            identifiers=(Identifier("", referral_id),),
            data=data,
            patient_id=optional_string(doc, "patient_id"),
            org_id=org,
        )
    ]


def _twilio(doc: dict[str, Any], config: SourceConfig) -> list[Draft]:
    body = doc.get("body")
    params = doc.get("params")
    if not isinstance(body, dict):
        raise EventRejected(ErrorCode.MISSING_FIELD, "body: the posted form fields", "body")
    if not isinstance(params, dict):
        raise EventRejected(
            ErrorCode.MISSING_FIELD, "params: the referral from the callback URL", "params"
        )
    status = optional_string(body, "MessageStatus") or optional_string(body, "SmsStatus")
    if status is None:
        raise EventRejected(
            ErrorCode.MISSING_FIELD, "body.MessageStatus (or SmsStatus)", "body.MessageStatus"
        )
    if status not in TWILIO_STATUSES:
        raise EventRejected(
            ErrorCode.UNMAPPED_CODE, f"Twilio status {status[:40]!r} is unknown", "MessageStatus"
        )
    sid = optional_string(body, "MessageSid") or optional_string(body, "SmsSid")
    if sid is None:
        raise EventRejected(ErrorCode.MISSING_FIELD, "body.MessageSid", "body.MessageSid")
    referral_id = required_string(params, "referral_id", "params.referral_id")
    org = optional_string(params, "org_id", "params.org_id") or config.org_for_comms_account(
        optional_string(body, "AccountSid")
    )
    event_type = TWILIO_STATUSES[status]
    if event_type is None:
        return []
    return [
        Draft(
            type=event_type,
            occurred_at=timestamp(doc, "received_at", config, org),
            source=Source.COMMS,
            anchor=f"twilio/{sid}/{status}",
            identifiers=(Identifier("", referral_id),),
            data={"channel": "sms"},  # WhatsApp too: a text message for referral purposes
            patient_id=optional_string(params, "patient_id", "params.patient_id"),
            org_id=org,
        )
    ]


def redact(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """A dead-letter copy without patient ids, phone numbers, addresses or message text."""
    return redact_json(raw, key, PERSONAL_FIELDS)
