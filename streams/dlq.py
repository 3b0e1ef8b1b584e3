"""Dead-letter records (SPEC §2): what was rejected, why, and where it came from.

The original bytes are kept (base64) so nothing is lost, with one exception made for
SPEC §9: when the message is a JSON object with a `patient_id`, that value is replaced
by its pseudonym before the record is written, because no topic reftrack writes may
carry a raw patient id. Such records say `"patient_id_pseudonymized": true`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schemas.errors import ErrorCode
from schemas.pseudonym import pseudonymize


def redact_patient_id(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """Swap a top-level patient_id for its pseudonym; other bytes stay as they came."""
    if b"patient_id" not in raw:
        return raw, False
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return raw, False
    if not isinstance(doc, dict) or doc.get("patient_id") is None:
        return raw, False
    org_id = doc.get("org_id")
    org = org_id if isinstance(org_id, str) else ""
    doc["patient_id"] = pseudonymize(key, org, str(doc["patient_id"]))
    return json.dumps(doc, ensure_ascii=False).encode("utf-8"), True


def dead_letter(
    *,
    raw: bytes | None,
    code: ErrorCode,
    message: str,
    field: str | None,
    topic: str,
    partition: int,
    offset: int,
    pseudonym_key: bytes,
    now: datetime | None = None,
    redact: Callable[[bytes, bytes], tuple[bytes, bool]] | None = None,
) -> bytes:
    """The DLQ record for one rejected message, as JSON bytes.

    `redact` is the source format's own (schemas.adapters): an HL7 v2 or FHIR message
    carries patient identifiers elsewhere than a top-level `patient_id`.
    """
    body, redacted = (redact or redact_patient_id)(raw or b"", pseudonym_key)
    record: dict[str, Any] = {
        "error_code": code.value,
        "error_message": message,
        "field": field,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "original_base64": base64.b64encode(body).decode("ascii"),
        "original_was_null": raw is None,
        "patient_id_pseudonymized": redacted,
        "rejected_at": (now or datetime.now(UTC)).isoformat(timespec="microseconds"),
    }
    return json.dumps(record).encode("utf-8")
