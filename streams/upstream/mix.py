"""One canonical event rendered in one of the raw formats that can express it: the mix
of upstream systems the simulator (and the end-to-end test) sends."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from streams.upstream import claims_encode, comms_encode, fhir_encode, hl7v2_encode

Encoder = Callable[[dict[str, Any]], bytes | None]

# name -> (adapter kind, i.e. raw topic; encoder). HL7 v2 messages name their org as the
# sending facility (MSH-4): the sources file must list each org id under hl7v2_senders.
ENCODERS: dict[str, tuple[str, Encoder]] = {
    "fhir": ("fhir", lambda e: fhir_encode.encode(e, e["org_id"])),
    "hl7v2": ("hl7v2", lambda e: hl7v2_encode.encode(e, e["org_id"])),
    "webhook": ("comms", lambda e: comms_encode.encode(e)),
    "twilio": ("comms", lambda e: comms_encode.encode(e, twilio=True)),
    "claims": ("claims", claims_encode.encode),
}


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def render(event: dict[str, Any]) -> tuple[str, str, bytes] | None:
    """(format name, adapter kind, raw bytes) for `event`, chosen among the formats that
    can express it by a hash of its event id (so a duplicate renders the same), or None
    when no raw format can (e.g. patient.feedback)."""
    options = []
    for name, (kind, encode) in ENCODERS.items():
        raw = encode(event)
        if raw is not None:
            options.append((name, kind, raw))
    if not options:
        return None
    return options[stable_hash(str(event.get("event_id"))) % len(options)]


def sources_yaml(orgs: list[str] | tuple[str, ...]) -> str:
    """A sources file that places the rendered HL7 v2 messages of `orgs`."""
    lines = ["orgs:"]
    for org in orgs:
        lines += [f"  {org}:", f"    hl7v2_senders: [{org}]"]
    return "\n".join(lines) + "\n"
