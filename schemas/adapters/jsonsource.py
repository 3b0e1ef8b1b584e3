"""Reading the JSON webhooks and feeds (messaging, claims): decoding, fields, timestamps,
and dead-letter copies without personal data. Shared so both reject the same way."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time
from typing import Any

from schemas.adapters.config import SourceConfig
from schemas.errors import ErrorCode, EventRejected
from schemas.pseudonym import pseudonymize

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[Zz]|[+-]\d{2}:\d{2})?$"
)
MAX_DEPTH = 32


def decode_object(raw: bytes, limit: int) -> dict[str, Any]:
    """Bytes to a JSON object, or the DLQ code that says why not."""
    if len(raw) > limit:
        raise EventRejected(ErrorCode.TOO_LARGE, f"message is {len(raw)} bytes; limit {limit}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(ErrorCode.INVALID_ENCODING, f"not UTF-8 at byte {exc.start}") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise EventRejected(ErrorCode.INVALID_JSON, "nested too deeply") from None
    except ValueError as exc:
        raise EventRejected(ErrorCode.INVALID_JSON, str(exc)[:200]) from None
    if not isinstance(doc, dict):
        raise EventRejected(ErrorCode.NOT_AN_OBJECT, f"JSON {type(doc).__name__}, not an object")
    return doc


def optional_string(doc: dict[str, Any], name: str, path: str | None = None) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 128:
        raise EventRejected(
            ErrorCode.INVALID_FIELD, f"{path or name}: a string of 1-128 characters", path or name
        )
    return value


def required_string(doc: dict[str, Any], name: str, path: str | None = None) -> str:
    value = optional_string(doc, name, path)
    if value is None:
        raise EventRejected(ErrorCode.MISSING_FIELD, f"{path or name} is required", path or name)
    return value


def timestamp(
    doc: dict[str, Any], name: str, config: SourceConfig, org: str | None, dates: bool = False
) -> datetime:
    """An RFC 3339 timestamp with offset; with `dates`, a bare date is midnight in the
    org's zone (claims carry service dates, not times)."""
    value = doc.get(name)
    if value is None:
        raise EventRejected(ErrorCode.MISSING_FIELD, f"{name} is required", name)
    if not isinstance(value, str):
        raise EventRejected(ErrorCode.INVALID_FIELD, f"{name}: a timestamp string", name)
    try:
        if dates and _DATE.match(value):
            day = date.fromisoformat(value)
            return datetime.combine(day, time(), tzinfo=config.timezone_for(org))
        if not _RFC3339.match(value):
            raise ValueError
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise EventRejected(
            ErrorCode.INVALID_FIELD, f"{name}: {value[:40]!r} is not RFC 3339", name
        ) from None
    if parsed.tzinfo is None:
        raise EventRejected(ErrorCode.NAIVE_TIMESTAMP, f"{name} has no UTC offset", name)
    return parsed


def redact_json(raw: bytes, key: bytes, personal: frozenset[str]) -> tuple[bytes, bool]:
    """A copy with every `patient_id` pseudonymized and `personal` scalar fields emptied,
    at any depth. Unparseable input comes back as it was (there is nothing to find in it)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return raw, False
    changed = False

    def walk(node: Any, depth: int) -> Any:
        nonlocal changed
        if depth > MAX_DEPTH:
            changed = True
            return None
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k == "patient_id" and v is not None:
                    changed = True
                    out[k] = pseudonymize(key, "", str(v))
                elif k in personal and isinstance(v, (str, int, float)) and v != "":
                    changed = True
                    out[k] = ""
                else:
                    out[k] = walk(v, depth + 1)
            return out
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    clean = walk(doc, 0)
    if not changed:
        return raw, False
    return json.dumps(clean, ensure_ascii=False).encode("utf-8"), True
