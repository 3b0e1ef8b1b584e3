"""Dead-letter records (SPEC §2): what was rejected, why, and where it came from.

The original bytes are kept (base64) so nothing is lost, with one exception made for
SPEC §9: when the message is a JSON object with a `patient_id`, that value is replaced
by its pseudonym before the record is written, because no topic reftrack writes may
carry a raw patient id. Such records say `"patient_id_pseudonymized": true`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faust.types import TopicT

from schemas.errors import ErrorCode
from schemas.pseudonym import pseudonymize
from streams.metrics import Metrics

log = logging.getLogger(__name__)


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


async def send_dead_letter(
    dlq: TopicT,
    metrics: Metrics,
    message: Any,
    code: ErrorCode,
    detail: str,
    field: str | None,
    pseudonym_key: bytes,
    redact: Callable[[bytes, bytes], tuple[bytes, bool]] | None = None,
    raw: bytes | None = None,
) -> None:
    """Dead-letter one consumed Kafka message (or `raw` in its place), counted by code
    and logged without its content: the one way every agent rejects a message."""
    metrics.dlq.labels(code.value).inc()
    record = dead_letter(
        raw=message.value if raw is None else raw,
        code=code,
        message=detail,
        field=field,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        pseudonym_key=pseudonym_key,
        redact=redact,
    )
    await dlq.send(key=message.key, value=record)
    log.info("rejected %s/%s@%s: %s", message.topic, message.partition, message.offset, code.value)
