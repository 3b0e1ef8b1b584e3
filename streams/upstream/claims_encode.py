"""Canonical care.out_of_network events rendered as claims-feed records, for round-trip
and end-to-end tests and the benchmark."""

from __future__ import annotations

import json
from typing import Any


def encode(event: dict[str, Any]) -> bytes | None:
    """The out-of-network claim that means `event`, or None for any other type."""
    if event.get("type") != "care.out_of_network":
        return None
    doc: dict[str, Any] = {
        "kind": "claim",
        "claim_id": "CLM-" + event["event_id"],
        "org_id": event["org_id"],
        "referral_number": event["referral_id"],
        "service_date": event["occurred_at"],
        "in_network": False,
        "status": "paid",
    }
    provider = (event.get("data") or {}).get("provider_id")
    if provider is not None:
        doc["rendering_provider_id"] = provider
    if event.get("patient_id"):
        doc["patient_id"] = event["patient_id"]
    return json.dumps(doc).encode()
