"""Canonical outreach/response events rendered as messaging webhooks (generic shape, and
Twilio's callbacks for SMS), for round-trip and end-to-end tests and the benchmark."""

from __future__ import annotations

import json
from typing import Any


def encode(event: dict[str, Any], twilio: bool = False) -> bytes | None:
    """The webhook that means `event`, or None for types a webhook cannot express."""
    kind = event.get("type")
    channel = (event.get("data") or {}).get("channel")
    if kind not in ("patient.outreach", "patient.responded"):
        return None
    if twilio and channel == "sms":
        status = "sent" if kind == "patient.outreach" else "received"
        doc: dict[str, Any] = {
            "provider": "twilio",
            "received_at": event["occurred_at"],
            "params": {"org_id": event["org_id"], "referral_id": event["referral_id"]},
            "body": {
                "AccountSid": "AC0123456789abcdef",
                "MessageSid": "SM" + event["event_id"][-32:],
                "MessageStatus" if status == "sent" else "SmsStatus": status,
                "From": "+15017122661",
                "To": "+15558675310",
            },
        }
        if event.get("patient_id"):
            doc["params"]["patient_id"] = event["patient_id"]
        return json.dumps(doc).encode()
    doc = {
        "org_id": event["org_id"],
        "referral_id": event["referral_id"],
        "message_id": "m-" + event["event_id"],
        "status": "sent" if kind == "patient.outreach" else "replied",
        "occurred_at": event["occurred_at"],
    }
    if channel is not None:
        doc["channel"] = channel
    if event.get("patient_id"):
        doc["patient_id"] = event["patient_id"]
    return json.dumps(doc).encode()
