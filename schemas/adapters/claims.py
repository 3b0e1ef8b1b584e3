"""Claims and encounter feeds (`referrals.raw.claims.v1`): care the patient got outside
the network becomes `care.out_of_network` on the referral it was for.

The input shape (docs/integrations.md, Claims) is one JSON object per claim line or
encounter, as a payer or claims clearinghouse feed reduces it:

    {"kind": "claim" | "encounter", "claim_id", "org_id"?, "referral_number",
     "service_date" (date or RFC 3339), "in_network": bool, "rendering_provider_id"?,
     "specialty"?, "patient_id"?, "status"?: "paid" | "denied" | "submitted" | ...}

`referral_number` is the referral or prior-authorization number the claim was billed
under (X12 837 loop 2300 REF*9F "Referral Number", or REF*G1 "Prior Authorization"):
it is what ties the care to the referral. An in-network claim, and a denied or voided
one (the care may not have happened there), carry no referral fact: they are ignored.
"""

from __future__ import annotations

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
from schemas.events import EventType, Source

KIND = "claims"
MAX_CLAIM_BYTES = 64 * 1024
KINDS = ("claim", "encounter")
IGNORED_STATUSES = frozenset({"denied", "voided", "reversed", "rejected"})
PERSONAL_FIELDS = frozenset({"patient_name", "member_id", "subscriber_id", "birth_date"})


def adapt(raw: bytes, config: SourceConfig) -> list[Draft]:
    doc = decode_object(raw, MAX_CLAIM_BYTES)
    kind = required_string(doc, "kind")
    if kind not in KINDS:
        raise EventRejected(
            ErrorCode.UNSUPPORTED_MESSAGE, f"kind {kind[:40]!r} is not claim or encounter", "kind"
        )
    claim_id = required_string(doc, "claim_id")
    referral_number = optional_string(doc, "referral_number")
    if referral_number is None:
        raise EventRejected(
            ErrorCode.MISSING_REFERRAL_ID,
            "referral_number (X12 REF*9F or REF*G1) is what ties a claim to a referral",
            "referral_number",
        )
    in_network = _in_network(doc)
    org = optional_string(doc, "org_id")
    occurred_at = timestamp(doc, "service_date", config, org, dates=True)
    status = optional_string(doc, "status")
    if in_network or (status is not None and status.lower() in IGNORED_STATUSES):
        return []
    data: dict[str, Any] = {}
    provider = optional_string(doc, "rendering_provider_id")
    if provider is not None:
        data["provider_id"] = provider
    return [
        Draft(
            type=EventType.CARE_OUT_OF_NETWORK,
            occurred_at=occurred_at,
            source=Source.CLAIMS,
            anchor=f"{kind}/{claim_id}",
            identifiers=(Identifier("", referral_number),),
            data=data,
            patient_id=optional_string(doc, "patient_id"),
            org_id=org,
        )
    ]


def _in_network(doc: dict[str, Any]) -> bool:
    value = doc.get("in_network")
    if value is None:
        raise EventRejected(ErrorCode.MISSING_FIELD, "in_network is required", "in_network")
    if not isinstance(value, bool):
        raise EventRejected(ErrorCode.INVALID_FIELD, "in_network: true or false", "in_network")
    return value


def redact(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """A dead-letter copy without patient ids, member ids, names or birth dates."""
    return redact_json(raw, key, PERSONAL_FIELDS)
