"""Dead-letter records (SPEC §2): what was rejected, why, and where it came from.

The original bytes are kept (base64) so nothing is lost, with one exception made for
SPEC §9: every `patient_id` value in the message (at any depth of the JSON) is
replaced by its pseudonym before the record is written, because no topic reftrack writes
may carry a raw patient id; in bytes that do not parse as JSON (cut off, invalid UTF-8,
trailing garbage), every `"patient_id": value` pair found is swapped the same way.
Such records say `"patient_id_pseudonymized": true`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faust.types import TopicT

from schemas.errors import ErrorCode
from schemas.pseudonym import pseudonymize
from streams.metrics import Metrics
from streams.publish import Outbox

log = logging.getLogger(__name__)


# `"patient_id": "..."` or `"patient_id": 123` in bytes that are not valid JSON (cut
# off, wrong encoding, trailing garbage); and `"org_id": "..."` for the pseudonym.
# A string value cut off by the end of the message counts too; so does a key whose
# opening quote a malformed string before it swallowed.
_PATIENT_FIELD = re.compile(
    rb'(patient_id"?\s*:\s*)(?!"p_[0-9a-f]{32}")("(?:[^"\\]|\\.)*(?:"|\\?$)|-?[0-9][0-9.eE+-]*)'
)
_ORG_FIELD = re.compile(rb'"org_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


def redact_patient_id(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """Swap every `patient_id` value for its pseudonym, at any depth of the JSON (an
    object, an array of objects, an event inside `data`); other bytes stay as they came.
    Bytes that do not parse get every `"patient_id": value` pair swapped in place."""
    if b"patient_id" not in raw:
        return raw, False
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _redact_unparsed(raw, key)
    if not _redact_parsed(doc, key, ""):
        return raw, False
    return json.dumps(doc, ensure_ascii=False).encode("utf-8"), True


def _redact_parsed(node: Any, key: bytes, org: str) -> bool:
    """Pseudonymize `patient_id` values in place, each with the nearest enclosing
    `org_id`; True when one was changed."""
    changed = False
    if isinstance(node, dict):
        org_id = node.get("org_id")
        org = org_id if isinstance(org_id, str) else org
        for name, value in node.items():
            if name == "patient_id" and value is not None:
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                node[name] = pseudonymize(key, org, text)
                changed = True
            elif isinstance(value, dict | list):
                changed |= _redact_parsed(value, key, org)
    elif isinstance(node, list):
        for item in node:
            changed |= _redact_parsed(item, key, org)
    return changed


def _redact_unparsed(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """Every `patient_id: value` pair, found from each occurrence of the name in the
    original bytes (so a broken string before one cannot hide it), value swapped."""
    org_match = _ORG_FIELD.search(raw)
    org = org_match[1].decode("utf-8", "replace") if org_match else ""
    spans: list[tuple[int, int]] = []
    at = raw.find(b"patient_id")
    while at != -1:
        match = _PATIENT_FIELD.match(raw, at)
        if match:
            begin, end = match.span(2)
            if spans and begin < spans[-1][1]:  # overlapping: one value
                before, after = spans.pop()
                begin, end = min(begin, before), max(end, after)
            spans.append((begin, end))
        at = raw.find(b"patient_id", at + 1)
    if not spans:
        return raw, False
    out, last = [], 0
    for begin, end in spans:
        value = raw[begin:end].removeprefix(b'"').removesuffix(b'"').decode("utf-8", "replace")
        out += [raw[last:begin], json.dumps(pseudonymize(key, org, value)).encode("ascii")]
        last = end
    out.append(raw[last:])
    return b"".join(out), True


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
    dlq: TopicT | str,
    metrics: Metrics,
    message: Any,
    code: ErrorCode,
    detail: str,
    field: str | None,
    pseudonym_key: bytes,
    *,
    outbox: Outbox | None = None,
    redact: Callable[[bytes, bytes], tuple[bytes, bool]] | None = None,
    raw: bytes | None = None,
) -> None:
    """Dead-letter one consumed Kafka message (or `raw` in its place), counted by code
    and logged without its content: the one way every agent rejects a message. With an
    `outbox` the record is published, and acknowledged, with the rest of the batch at
    the outbox's flush; without one it is sent on its own (`dlq` a Faust topic)."""
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
    if outbox is not None:
        await outbox.add(dlq, message.key, record)
    else:
        assert not isinstance(dlq, str), "a DLQ topic name needs an outbox"
        await dlq.send(key=message.key, value=record)
    log.info("rejected %s/%s@%s: %s", message.topic, message.partition, message.offset, code.value)
