"""FHIR R4 resources (`referrals.raw.fhir.v1`) into referral events.

A message is one resource or a Bundle of them. ServiceRequest, Task, Appointment,
Encounter, Communication, CommunicationRequest, DocumentReference and DiagnosticReport
are mapped (docs/integrations.md, FHIR R4 has the table). Other resources are context: a
Patient names the patient, a ServiceRequest in the same bundle names the referral of a
Task that points at it, a MessageHeader names the sender.

Resources are read as plain JSON, leniently, not through fhir.resources models: that
library ships R4B and R5, not R4; a strict model rejects messy messages that carry
everything this adapter needs; and building a model costs far more than reading the few
fields mapped here. Each field read is checked for the shape it must have.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, NamedTuple, NoReturn

from schemas.adapters.base import Draft, Identifier
from schemas.adapters.config import ORG_TAG_SYSTEM, SourceConfig
from schemas.adapters.jsonsource import decode_object
from schemas.errors import ErrorCode, EventRejected
from schemas.events import MAX_TIMESTAMP, MIN_TIMESTAMP, Channel, EventType, Priority, Source
from schemas.pseudonym import pseudonymize

KIND = "fhir"
MAX_FHIR_BYTES = 1024 * 1024  # bundles are larger than canonical events
MAX_BUNDLE_DEPTH = 4
MAX_REASON = 1024
MAX_ID = 128

IN_NETWORK_URL = "https://reftrack.dev/fhir/StructureDefinition/in-network"
PREVIOUS_APPOINTMENT_URL = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.previousAppointment"
)
BSER_BUSINESS_STATUS = "http://hl7.org/fhir/us/bser/CodeSystem/TaskBusinessStatusCS"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
PARTICIPATION_MODE_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
        "http://hl7.org/fhir/v3/ParticipationMode",
    }
)
# SNOMED CT concepts that say "a referral" without saying to what: never a specialty.
REFERRAL_CONCEPTS = frozenset({"3457005", "103696004", "306206005"})
# A ServiceRequest whose category or code says "referral" in no other way.
_REFERRAL_WORD = "referral"

Json = dict[str, Any]
E = EventType


def _ignoring(*codes: str) -> dict[str, Any]:
    """Codes known to carry no referral milestone: mapped to nothing, not rejected."""
    return dict.fromkeys(codes)


SERVICE_REQUEST_STATUS: dict[str, EventType | None] = {
    "active": E.REFERRAL_CREATED,
    "revoked": E.REFERRAL_CANCELLED,
    **_ignoring("draft", "on-hold", "completed", "entered-in-error", "unknown"),
}
TASK_STATUS: dict[str, EventType | None] = {
    "requested": E.REFERRAL_ROUTED,
    "received": E.REFERRAL_ROUTED,
    "accepted": E.REFERRAL_ACCEPTED,
    "ready": E.REFERRAL_ACCEPTED,
    "in-progress": E.REFERRAL_ACCEPTED,
    "rejected": E.REFERRAL_DECLINED,
    "cancelled": E.REFERRAL_CANCELLED,
    "completed": E.REPORT_RECEIVED,
    **_ignoring("draft", "on-hold", "failed", "entered-in-error"),
}
# Task states that say nothing, whatever the business status says.
TASK_SILENT = frozenset({"draft", "entered-in-error"})
# BSeR Task.businessStatus (TaskBusinessStatusCS); 5.2 is a request to cancel, not a fact.
BSER_STATUS: dict[str, EventType | None] = {
    "2.0": E.REFERRAL_ROUTED,
    "3.0": E.REFERRAL_ACCEPTED,
    "4.0": E.REFERRAL_DECLINED,
    "5.1.1": E.APPOINTMENT_SCHEDULED,
    "5.1.2": E.APPOINTMENT_NO_SHOW,
    "5.1.3": E.APPOINTMENT_CANCELLED,
    "5.1.4": E.APPOINTMENT_COMPLETED,
    "6.0": E.REFERRAL_CANCELLED,
    "7.0": E.REPORT_RECEIVED,
    **_ignoring("5.2"),
}
APPOINTMENT_STATUS: dict[str, EventType | None] = {
    "booked": E.APPOINTMENT_SCHEDULED,
    "fulfilled": E.APPOINTMENT_COMPLETED,
    "cancelled": E.APPOINTMENT_CANCELLED,
    "noshow": E.APPOINTMENT_NO_SHOW,
    **_ignoring("proposed", "pending", "arrived", "checked-in", "waitlist", "entered-in-error"),
}
ENCOUNTER_STATUS: dict[str, EventType | None] = {
    "finished": E.APPOINTMENT_COMPLETED,
    **_ignoring(
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "cancelled",
        "entered-in-error",
        "unknown",
    ),
}
# Communication(Request), DocumentReference, DiagnosticReport: which states are a fact.
COMMUNICATION_SENT = {
    "completed": True,
    **dict.fromkeys(
        (
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "entered-in-error",
            "unknown",
        ),
        False,
    ),
}
COMMUNICATION_REQUEST_SENT = {
    "completed": True,
    **dict.fromkeys(
        ("draft", "active", "on-hold", "revoked", "entered-in-error", "unknown"), False
    ),
}
DOCUMENT_STATUS = {"current": True, "superseded": False, "entered-in-error": False}
DOCUMENT_DOC_STATUS = {
    "final": True,
    "amended": True,
    "preliminary": False,
    "entered-in-error": False,
}
REPORT_STATUS = {
    **dict.fromkeys(("final", "amended", "corrected", "appended"), True),
    **dict.fromkeys(
        ("registered", "partial", "preliminary", "cancelled", "entered-in-error", "unknown"),
        False,
    ),
}
PRIORITY = {
    "routine": Priority.ROUTINE,
    "urgent": Priority.URGENT,
    "asap": Priority.URGENT,
    "stat": Priority.STAT,
}
# v3 ParticipationMode (R4 list) to channels; None: a known mode with no channel.
# SMSWRIT is not in the R4 list (it has no code for text messages) but senders use it.
PARTICIPATION_MODE: dict[str, Channel | None] = {
    "SMSWRIT": Channel.SMS,
    "EMAILWRIT": Channel.EMAIL,
    "PHONE": Channel.PHONE,
    "VIDEOCONF": Channel.PHONE,
    "ONLINEWRIT": Channel.PORTAL,
    "MAILWRIT": Channel.LETTER,
    "FAXWRIT": Channel.LETTER,
    "HANDWRIT": Channel.LETTER,
    "TYPEWRIT": Channel.LETTER,
    "ELECTRONIC": None,
    "PHYSICAL": None,
    "REMOTE": None,
    "VERBAL": None,
    "DICTATE": None,
    "FACE": None,
    "WRITTEN": None,
}
SOURCES = {
    "ServiceRequest": Source.EHR,
    "Task": Source.REFERRAL_PLATFORM,
    "Appointment": Source.SCHEDULING,
    "Encounter": Source.EHR,
    "Communication": Source.COMMS,
    "CommunicationRequest": Source.COMMS,
    "DocumentReference": Source.EHR,
    "DiagnosticReport": Source.EHR,
}
PATIENT_KINDS = frozenset({"Patient", "RelatedPerson"})
_CHANNELS = frozenset(c.value for c in Channel)

_LITERAL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([^/]+?)(?:/_history/[^/]*)?$")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?([Zz]|[+-]\d{2}:\d{2})?)?"
)
_PARTIAL_DATE = re.compile(r"\d{4}(?:-\d{2})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NOT_WORD = re.compile(r"[\W_]+")


# -- reading JSON -------------------------------------------------------------------------


def _fail(code: ErrorCode, path: str, message: str) -> NoReturn:
    raise EventRejected(code, f"{path}: {message}", path)


class _NotAboutAReferral(EventRejected):
    """A resource about no referral: an error alone, context inside a bundle."""


def _decode(raw: bytes) -> Json:
    """Bytes to a JSON object. A UTF-8 byte-order mark is tolerated (Windows senders
    write one); lone surrogate escapes are not, since they cannot be stored as UTF-8."""
    doc = decode_object(raw.removeprefix(codecs.BOM_UTF8), MAX_FHIR_BYTES)
    if _SURROGATE_ESCAPE.search(raw) and _has_surrogate(doc):
        raise EventRejected(ErrorCode.INVALID_ENCODING, "a string holds an unpaired surrogate")
    return doc


def _has_surrogate(doc: Any) -> bool:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _string(node: Json, name: str, path: str) -> str | None:
    """A string field; "" counts as absent (FHIR forbids empty strings)."""
    value = node.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        _fail(ErrorCode.INVALID_FHIR, f"{path}.{name}", "must be a string")
    return value


def _object(node: Json, name: str, path: str) -> Json | None:
    value = node.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        _fail(ErrorCode.INVALID_FHIR, f"{path}.{name}", "must be an object")
    return value


def _objects(node: Json, name: str, path: str) -> list[Json]:
    """An array of objects. A single object where FHIR wants an array is taken as a
    one-element array: a common slip that loses nothing."""
    value = node.get(name)
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        _fail(ErrorCode.INVALID_FHIR, f"{path}.{name}", "must be an array of objects")
    return value


def _code(node: Json, name: str, path: str, known: dict[str, Any]) -> str:
    """A required status code, matched case-insensitively."""
    value = _string(node, name, path)
    if value is None:
        _fail(ErrorCode.INVALID_FHIR, f"{path}.{name}", "is required")
    code = value.strip().lower()
    if code not in known:
        _fail(ErrorCode.UNMAPPED_CODE, f"{path}.{name}", f"{value[:40]!r} has no mapping")
    return code


def _id_value(value: str, path: str) -> str:
    """A value that becomes a canonical id: 1-128 characters, no control characters."""
    if len(value) > MAX_ID or _CONTROL.search(value):
        _fail(ErrorCode.INVALID_FHIR, path, "must be 1-128 characters without control ones")
    return value


# -- codes and concepts -------------------------------------------------------------------


def _codings(concept: Json, path: str) -> list[Json]:
    return _objects(concept, "coding", path)


def _label(concept: Json, path: str, display_first: bool) -> str | None:
    """A concept's words: the coding display or the text, whichever is preferred first,
    then the first code."""
    text = _string(concept, "text", path)
    codings = _codings(concept, path)
    display = next(
        (d for i, c in enumerate(codings) if (d := _string(c, "display", f"{path}.coding[{i}]"))),
        None,
    )
    code = next(
        (d for i, c in enumerate(codings) if (d := _string(c, "code", f"{path}.coding[{i}]"))),
        None,
    )
    first, second = (display, text) if display_first else (text, display)
    return first or second or code


def _has_code(concept: Json, path: str, codes: frozenset[str]) -> bool:
    return any(
        _string(c, "code", f"{path}.coding[{i}]") in codes
        for i, c in enumerate(_codings(concept, path))
    )


def _slug(text: str) -> str:
    """A specialty key like the simulator's: lower case, words joined by "_"."""
    return _NOT_WORD.sub("_", text.lower()).strip("_")[:MAX_ID].rstrip("_")


def _reason(concepts: list[Json], path: str) -> str | None:
    for i, concept in enumerate(concepts):
        label = _label(concept, f"{path}[{i}]", display_first=False)
        if label:
            return label[:MAX_REASON]
    return None


def _extension(node: Json, url: str, path: str) -> Json | None:
    for ext in _objects(node, "extension", path):
        if ext.get("url") == url:
            return ext
    return None


def _in_network(node: Json, path: str) -> bool | None:
    ext = _extension(node, IN_NETWORK_URL, path)
    if ext is None:
        return None
    value = ext.get("valueBoolean")
    if not isinstance(value, bool):
        _fail(ErrorCode.INVALID_FHIR, f"{path}.extension", "in-network needs valueBoolean")
    return value


# -- time ---------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _offset(text: str) -> tzinfo:
    if text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(text)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _time(value: Any, path: str, zone: tzinfo) -> datetime:
    """A FHIR dateTime or instant. A time needs an offset; a bare date is midnight in
    `zone` (the org's zone); a year or year-month is too coarse for an event."""
    if not isinstance(value, str):
        _fail(ErrorCode.INVALID_FHIR, path, "must be a dateTime string")
    match = _DATETIME.fullmatch(value)
    if match is None:
        if _PARTIAL_DATE.fullmatch(value):
            _fail(ErrorCode.INVALID_FHIR, path, f"{value!r} is too coarse for an event time")
        _fail(ErrorCode.INVALID_FHIR, path, f"{value[:40]!r} is not a FHIR dateTime")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if hour is not None and offset is None:
        _fail(ErrorCode.NAIVE_TIMESTAMP, path, f"{value!r} has a time but no UTC offset")
    try:
        if hour is None:
            result = datetime(int(year), int(month), int(day), tzinfo=zone)
        else:
            micros = int((fraction or "0")[:6].ljust(6, "0"))
            result = datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second or 0),
                micros,
                tzinfo=_offset(offset),
            )
    except ValueError:
        _fail(ErrorCode.INVALID_FHIR, path, f"{value[:40]!r} is not a valid date or time")
    if not (MIN_TIMESTAMP <= result < MAX_TIMESTAMP):
        _fail(ErrorCode.TIMESTAMP_OUT_OF_RANGE, path, f"{value!r} is outside 1900..2262")
    return result


def _first_time(path: str, zone: tzinfo, *candidates: tuple[str, Any]) -> datetime:
    """The first of the candidate (field, value) pairs that is present."""
    for name, value in candidates:
        if value is not None and value != "":
            return _time(value, f"{path}.{name}", zone)
    names = ", ".join(name for name, _ in candidates)
    _fail(ErrorCode.INVALID_FHIR, path, f"no event time: needs one of {names}")


# -- context: bundle, references ----------------------------------------------------------


@dataclass
class _Context:
    """What a message says beyond one resource: the bundle's entries (to resolve
    references), its org tag, its sender, its patients."""

    config: SourceConfig
    index: dict[str, Json] = field(default_factory=dict)
    org_tag: str | None = None
    source: str | None = None
    patients: list[Json] = field(default_factory=list)


class _Target(NamedTuple):
    kind: str | None  # the resource type: the found resource's, else the reference's
    id: str | None  # its logical id
    resource: Json | None  # the resource, when it is in the message
    contained: bool  # a `#id` reference to the container's contained resources


def _found(kind: str | None, rid: str | None, res: Json | None, contained: bool) -> _Target:
    if res is None:
        return _Target(kind, rid, None, contained)
    found_kind = res.get("resourceType")
    found_id = res.get("id")
    return _Target(
        found_kind if isinstance(found_kind, str) else None,
        found_id if isinstance(found_id, str) else rid,
        res,
        contained,
    )


def _target(ref: Json, path: str, container: Json, ctx: _Context) -> _Target:
    """What a Reference points at: `#id` (contained), a fullUrl or `[base/]Type/id` of
    the message's bundle, or a resource outside the message (type and id only)."""
    literal = _string(ref, "reference", path)
    kind = _string(ref, "type", path)
    if kind is not None:
        kind = kind.rsplit("/", 1)[-1]
    if literal is None:
        return _Target(kind, None, None, False)
    if literal.startswith("#"):
        local = literal[1:]
        contained = _objects(container, "contained", "contained")
        return _found(kind, local, next((c for c in contained if c.get("id") == local), None), True)
    found = ctx.index.get(literal)
    match = _LITERAL.search(literal)
    if match is not None:
        kind, rid = match.group(1), match.group(2)
        return _found(kind, rid, found or ctx.index.get(f"{kind}/{rid}"), False)
    return _found(kind, None, found, False)


def _identifier(node: Json, path: str) -> Identifier | None:
    value = _string(node, "value", path)
    if value is None or not value.strip():
        return None
    system = _string(node, "system", path) or ""
    return Identifier(system, _id_value(value, f"{path}.value"))


def _is_type(node: Json, path: str, code: str) -> bool:
    concept = _object(node, "type", path)
    return concept is not None and _has_code(concept, f"{path}.type", frozenset({code}))


def _own_identifiers(res: Json, path: str) -> list[Identifier]:
    """A resource's identifiers, the placer's (PLAC) first and the filler's (FILL) last."""
    placer: list[Identifier] = []
    other: list[Identifier] = []
    filler: list[Identifier] = []
    for i, node in enumerate(_objects(res, "identifier", path)):
        p = f"{path}.identifier[{i}]"
        ident = _identifier(node, p)
        if ident is None:
            continue
        if _is_type(node, p, "PLAC"):
            placer.append(ident)
        elif _is_type(node, p, "FILL"):
            filler.append(ident)
        else:
            other.append(ident)
    return placer + other + filler


def _request_identifiers(res: Json, path: str) -> list[Identifier]:
    """A ServiceRequest's identifiers, then its logical id in system "ServiceRequest" so
    that a bare `ServiceRequest/<id>` reference elsewhere can be linked to it."""
    ids = _own_identifiers(res, path)
    rid = _string(res, "id", path)
    if rid is not None:
        ids.append(Identifier("ServiceRequest", _id_value(rid, f"{path}.id")))
    return ids


def _referral_ids(
    refs: list[tuple[Json, str]], container: Json, ctx: _Context, follow_tasks: bool = True
) -> list[Identifier]:
    """The referral named by references to a ServiceRequest (or to a Task that names one):
    a resource in the message gives its identifiers, a logical reference identifier gives
    itself, a bare `ServiceRequest/<id>` gives Identifier("ServiceRequest", id)."""
    out: list[Identifier] = []
    for ref, path in refs:
        target = _target(ref, path, container, ctx)
        if target.resource is not None:
            kind = target.kind
            if kind == "ServiceRequest":
                out.extend(_request_identifiers(target.resource, path))
            elif kind == "Task" and follow_tasks:
                out.extend(_task_referral_ids(target.resource, path, ctx, follow_tasks=False))
            continue
        if target.kind not in (None, "ServiceRequest"):
            continue
        node = _object(ref, "identifier", path)
        ident = _identifier(node, f"{path}.identifier") if node is not None else None
        if ident is not None:
            out.append(ident)
        elif target.kind == "ServiceRequest" and target.id and not target.contained:
            out.append(Identifier("ServiceRequest", _id_value(target.id, f"{path}.reference")))
    return out


def _unique(ids: list[Identifier]) -> tuple[Identifier, ...]:
    return tuple(dict.fromkeys(ids))


def _refs(res: Json, path: str, *names: str) -> list[tuple[Json, str]]:
    out: list[tuple[Json, str]] = []
    for name in names:
        for i, ref in enumerate(_objects(res, name, path)):
            out.append((ref, f"{path}.{name}[{i}]"))
    return out


def _preferred_value(res: Json, path: str, preferred: str | None, type_code: str) -> str | None:
    """An identifier value of a resource in the message: the preferred system, then the
    preferred type, then the first."""
    idents = [
        (n, f"{path}.identifier[{i}]") for i, n in enumerate(_objects(res, "identifier", path))
    ]
    for node, p in idents:
        if preferred is not None and node.get("system") == preferred:
            ident = _identifier(node, p)
            if ident is not None:
                return ident.value
    for node, p in idents:
        if _is_type(node, p, type_code) and (ident := _identifier(node, p)) is not None:
            return ident.value
    for node, p in idents:
        if (ident := _identifier(node, p)) is not None:
            return ident.value
    return None


def _patient(ref: Json | None, path: str, container: Json, ctx: _Context) -> str | None:
    """The patient's id: the reference's identifier, the referenced Patient's MRN (or
    first identifier), else the id of a literal `Patient/<id>`; with no reference, the
    only Patient in the bundle. Pseudonymized downstream; never logged."""
    if ref is None:
        if len(ctx.patients) != 1:
            return None
        only = ctx.patients[0]
        value = _preferred_value(only, path, None, "MR") or _string(only, "id", path)
        return _id_value(value, path) if value else None
    target = _target(ref, path, container, ctx)
    found = target.resource
    kind = target.kind
    if kind not in (None, "Patient"):
        return None
    node = _object(ref, "identifier", path)
    if node is not None and (ident := _identifier(node, f"{path}.identifier")) is not None:
        return ident.value
    if found is not None and (value := _preferred_value(found, path, None, "MR")) is not None:
        return value
    if kind == "Patient" and target.id:
        return _id_value(target.id, f"{path}.reference")
    return None


def _provider(ref: Json | None, path: str, container: Json, ctx: _Context) -> str | None:
    """A provider id: the reference's identifier value, the referenced resource's NPI
    (or first identifier), else the literal reference in relative form (`Type/id`).
    A reference to a patient is no provider: its id must not leak into provider fields."""
    if ref is None:
        return None
    target = _target(ref, path, container, ctx)
    found = target.resource
    if target.kind in PATIENT_KINDS:
        return None
    node = _object(ref, "identifier", path)
    if node is not None and (ident := _identifier(node, f"{path}.identifier")) is not None:
        return ident.value
    if found is not None:
        value = _preferred_value(found, path, NPI_SYSTEM, "NPI")
        if value is not None:
            return value
    if target.kind and target.id and not target.contained:
        return _id_value(f"{target.kind}/{target.id}", f"{path}.reference")
    return None


def _points_at_patient(ref: Json, path: str, container: Json, ctx: _Context) -> bool:
    return _target(ref, path, container, ctx).kind in PATIENT_KINDS


# -- drafts -------------------------------------------------------------------------------


def _org(res: Json, meta: Json, path: str, ctx: _Context) -> str | None:
    """The org: a meta.tag in ORG_TAG_SYSTEM (the resource's, then the bundle's), else
    the sources file's org for meta.source (the resource's, then the message's)."""
    tag = _org_tag(meta, f"{path}.meta")
    if tag is not None:
        return tag
    if ctx.org_tag is not None:
        return ctx.org_tag
    source = _string(meta, "source", f"{path}.meta") or ctx.source
    return ctx.config.org_for_fhir_source(source)


def _org_tag(meta: Json, path: str) -> str | None:
    for i, tag in enumerate(_objects(meta, "tag", path)):
        if tag.get("system") == ORG_TAG_SYSTEM:
            code = _string(tag, "code", f"{path}.tag[{i}]")
            if code is None or len(code) > 64 or "/" in code or _CONTROL.search(code):
                _fail(
                    ErrorCode.INVALID_FHIR,
                    f"{path}.tag[{i}].code",
                    "the org must be 1-64 characters, no '/' or control characters",
                )
            return code
    return None


@dataclass
class _Resource:
    """One resource being mapped, with what every draft of it shares."""

    res: Json
    kind: str
    path: str
    full_url: str | None
    ctx: _Context
    meta: Json = field(init=False)
    org: str | None = field(init=False)
    zone: tzinfo = field(init=False)

    def __post_init__(self) -> None:
        if self.res.get("modifierExtension"):
            # It may change what the resource means ("did not happen"): not guessed at.
            _fail(
                ErrorCode.UNSUPPORTED_MESSAGE,
                f"{self.path}.modifierExtension",
                "a modifier extension the adapter does not know",
            )
        self.meta = _object(self.res, "meta", self.path) or {}
        self.org = _org(self.res, self.meta, self.path, self.ctx)
        self.zone = self.ctx.config.timezone_for(self.org)

    def string(self, name: str) -> str | None:
        return _string(self.res, name, self.path)

    def obj(self, name: str) -> Json | None:
        return _object(self.res, name, self.path)

    def last_updated(self) -> tuple[str, Any]:
        return ("meta.lastUpdated", self.meta.get("lastUpdated"))

    def when(self, *candidates: tuple[str, Any]) -> datetime:
        return _first_time(self.path, self.zone, *candidates)

    def anchor(self, identifiers: tuple[Identifier, ...], code: str) -> str:
        """Stable across re-deliveries: the resource's id, else its first identifier,
        else its fullUrl, else the referral; plus the code the event was mapped from."""
        rid = self.string("id")
        if rid is not None:
            base = f"{self.kind}/{rid}"
        elif own := _own_identifiers(self.res, self.path):
            base = f"{self.kind}?identifier={own[0].key}"
        elif self.full_url is not None:
            base = self.full_url
        else:
            base = f"{self.kind}?referral={identifiers[0].key}"
        return f"{base}#{code}"

    def draft(
        self,
        event_type: EventType,
        code: str,
        occurred_at: datetime,
        identifiers: list[Identifier],
        patient: str | None,
        data: Json | None = None,
    ) -> Draft:
        ids = _unique(identifiers)
        return Draft(
            type=event_type,
            occurred_at=occurred_at,
            source=SOURCES[self.kind],
            anchor=self.anchor(ids, code),
            identifiers=ids,
            data={k: v for k, v in (data or {}).items() if v is not None},
            patient_id=patient,
            org_id=self.org,
        )

    def require_referral(self, identifiers: list[Identifier]) -> None:
        """Checked before the fields, so that in a bundle an entry about no referral is
        context, whatever else is wrong with it."""
        if not identifiers:
            raise _NotAboutAReferral(
                ErrorCode.MISSING_REFERRAL_ID,
                f"{self.path}: names no referral (ServiceRequest)",
                self.path,
            )

    def self_ref(self) -> str:
        """The resource as an appointment id when no Appointment is named."""
        rid = self.string("id")
        if rid is not None:
            return _id_value(f"{self.kind}/{rid}", f"{self.path}.id")
        own = _own_identifiers(self.res, self.path)
        if own:
            return own[0].value
        _fail(ErrorCode.INVALID_FHIR, f"{self.path}.id", "names no appointment and has no id")


# -- ServiceRequest -----------------------------------------------------------------------


def _is_referral(r: _Resource) -> bool:
    """No category (the topic carries referrals), or a category or code that says so."""
    categories = _objects(r.res, "category", r.path)
    if not categories:
        return True
    code = r.obj("code")
    concepts = [(c, f"{r.path}.category[{i}]") for i, c in enumerate(categories)]
    if code is not None:
        concepts.append((code, f"{r.path}.code"))
    for concept, path in concepts:
        if _has_code(concept, path, REFERRAL_CONCEPTS):
            return True
        label = _label(concept, path, display_first=True)
        if label is not None and _REFERRAL_WORD in label.lower():
            return True
    return False


def _specialty(r: _Resource) -> str:
    """performerType, else code, else category: the first that is not a bare "referral"
    concept, as a slug of its coding display (or text, or code)."""
    candidates: list[tuple[Json, str]] = []
    performer_type = r.obj("performerType")
    if performer_type is not None:
        candidates.append((performer_type, f"{r.path}.performerType"))
    code = r.obj("code")
    if code is not None:
        candidates.append((code, f"{r.path}.code"))
    candidates += [
        (c, f"{r.path}.category[{i}]") for i, c in enumerate(_objects(r.res, "category", r.path))
    ]
    for concept, path in candidates:
        if _has_code(concept, path, REFERRAL_CONCEPTS):
            continue
        label = _label(concept, path, display_first=True)
        slug = _slug(label) if label else ""
        if slug:
            return slug
    _fail(
        ErrorCode.INVALID_FHIR,
        f"{r.path}.performerType",
        "no specialty in performerType, code or category",
    )


def _service_request(r: _Resource) -> list[Draft]:
    if not _is_referral(r):
        raise _NotAboutAReferral(
            ErrorCode.UNSUPPORTED_MESSAGE,
            f"{r.path}.category: this ServiceRequest is not a referral",
            f"{r.path}.category",
        )
    status = _code(r.res, "status", r.path, SERVICE_REQUEST_STATUS)
    event_type = SERVICE_REQUEST_STATUS[status]
    if event_type is None:
        return []
    ids = _request_identifiers(r.res, r.path)
    r.require_referral(ids)
    patient = _patient(r.obj("subject"), f"{r.path}.subject", r.res, r.ctx)
    if event_type is E.REFERRAL_CANCELLED:
        return [r.draft(event_type, status, r.when(r.last_updated()), ids, patient)]
    priority_code = r.string("priority")
    priority = PRIORITY.get((priority_code or "routine").strip().lower())
    if priority is None:
        _fail(ErrorCode.UNMAPPED_CODE, f"{r.path}.priority", f"{priority_code!r} has no mapping")
    performers = _objects(r.res, "performer", r.path)
    data = {
        "priority": priority.value,
        "specialty": _specialty(r),
        "referring_provider_id": _provider(r.obj("requester"), f"{r.path}.requester", r.res, r.ctx),
        "referred_to_provider_id": _provider(
            performers[0] if performers else None, f"{r.path}.performer[0]", r.res, r.ctx
        ),
        "in_network": _in_network(r.res, r.path),
        "reason": _reason(_objects(r.res, "reasonCode", r.path), f"{r.path}.reasonCode"),
    }
    occurred = r.when(("authoredOn", r.res.get("authoredOn")), r.last_updated())
    return [r.draft(event_type, status, occurred, ids, patient, data)]


# -- Task ---------------------------------------------------------------------------------


def _task_referral_ids(
    res: Json, path: str, ctx: _Context, follow_tasks: bool = True
) -> list[Identifier]:
    refs = _refs(res, path, "focus", "basedOn")
    return _referral_ids(refs, res, ctx, follow_tasks=follow_tasks)


def _business_status(r: _Resource) -> str | None:
    concept = r.obj("businessStatus")
    if concept is None:
        return None
    path = f"{r.path}.businessStatus"
    for i, coding in enumerate(_codings(concept, path)):
        if coding.get("system") == BSER_BUSINESS_STATUS:
            code = _string(coding, "code", f"{path}.coding[{i}]")
            if code not in BSER_STATUS:
                _fail(
                    ErrorCode.UNMAPPED_CODE, f"{path}.coding[{i}].code", f"{code!r} has no mapping"
                )
            return code
    return None


def _task_appointment(r: _Resource) -> _Appointment | None:
    """The Appointment a Task names in output (or input), if any."""
    for name in ("output", "input"):
        for i, item in enumerate(_objects(r.res, name, r.path)):
            path = f"{r.path}.{name}[{i}]"
            ref = _object(item, "valueReference", path)
            if ref is not None:
                found = _appointment_ref(ref, f"{path}.valueReference", r)
                if found is not None:
                    return found
    return None


def _task(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, TASK_STATUS)
    if status in TASK_SILENT:
        return []
    business = _business_status(r)
    event_type = BSER_STATUS[business] if business is not None else TASK_STATUS[status]
    if event_type is None:
        return []
    ids = _task_referral_ids(r.res, r.path, r.ctx)
    r.require_referral(ids)
    ids += _own_identifiers(r.res, r.path)
    code = status if business is None else f"{status}/{business}"
    patient = _patient(r.obj("for"), f"{r.path}.for", r.res, r.ctx)
    occurred = r.when(
        ("lastModified", r.res.get("lastModified")),
        r.last_updated(),
        ("authoredOn", r.res.get("authoredOn")),
    )
    reason_node = r.obj("statusReason")
    reason = (
        _label(reason_node, f"{r.path}.statusReason", display_first=False)
        if reason_node is not None
        else None
    )
    data: Json = {}
    if event_type is E.REFERRAL_ROUTED:
        data = {
            "referred_to_provider_id": _provider(r.obj("owner"), f"{r.path}.owner", r.res, r.ctx),
            "in_network": _in_network(r.res, r.path),
        }
    elif event_type in (E.REFERRAL_DECLINED, E.REFERRAL_CANCELLED):
        data = {"reason": reason[:MAX_REASON] if reason else None}
    elif event_type.value.startswith("appointment."):
        appointment = _task_appointment(r)
        if appointment is not None and _speaks_for(appointment, event_type):
            return []
        data = {"appointment_id": appointment.id if appointment else r.self_ref()}
        if event_type is E.APPOINTMENT_SCHEDULED:
            found = appointment.resource if appointment else None
            start = found.get("start") if found is not None else None
            if start is None:
                _fail(
                    ErrorCode.INVALID_FHIR,
                    f"{r.path}.output",
                    "a scheduled Task needs its Appointment, with start, in the message",
                )
            data["appointment_at"] = _time(start, f"{r.path}.output.start", r.zone)
        elif event_type is E.APPOINTMENT_CANCELLED:
            data["reason"] = reason[:MAX_REASON] if reason else None
        elif event_type is E.APPOINTMENT_COMPLETED:
            data["in_network"] = _in_network(r.res, r.path)
    return [r.draft(event_type, code, occurred, ids, patient, data)]


# -- Appointment and Encounter ------------------------------------------------------------


class _Appointment(NamedTuple):
    id: str
    resource: Json | None  # the Appointment, when it is in the message
    in_bundle: bool  # an entry of the bundle (not contained): mapped on its own


def _appointment_ref(ref: Json, path: str, r: _Resource) -> _Appointment | None:
    """What a reference to an Appointment names; None when it names something else."""
    target = _target(ref, path, r.res, r.ctx)
    found = target.resource
    if found is not None:
        if target.kind != "Appointment":
            return None
        return _Appointment(_appointment_id(found, path), found, not target.contained)
    if target.kind not in (None, "Appointment"):
        return None
    node = _object(ref, "identifier", path)
    ident = _identifier(node, f"{path}.identifier") if node is not None else None
    value = ident.value if ident is not None else target.id
    return _Appointment(_id_value(value, path), None, False) if value else None


def _speaks_for(appointment: _Appointment, event_type: EventType) -> bool:
    """Whether an Appointment entry of the same message states this event itself, so
    that a Task or Encounter about it would only count it twice."""
    if not appointment.in_bundle or appointment.resource is None:
        return False
    status = appointment.resource.get("status")
    return isinstance(status, str) and APPOINTMENT_STATUS.get(status.lower()) is event_type


def _appointment_id(res: Json, path: str) -> str:
    rid = _string(res, "id", path)
    if rid is not None:
        return _id_value(rid, f"{path}.id")
    own = _own_identifiers(res, path)
    if own:
        return own[0].value
    _fail(ErrorCode.INVALID_FHIR, f"{path}.id", "an Appointment needs an id or an identifier")


def _rescheduled(r: _Resource) -> bool:
    return (
        r.res.get("previousAppointment") is not None
        or _extension(r.res, PREVIOUS_APPOINTMENT_URL, r.path) is not None
    )


def _appointment_patient(r: _Resource) -> str | None:
    for i, participant in enumerate(_objects(r.res, "participant", r.path)):
        path = f"{r.path}.participant[{i}].actor"
        actor = _object(participant, "actor", f"{r.path}.participant[{i}]")
        if actor is not None and _points_at_patient(actor, path, r.res, r.ctx):
            return _patient(actor, path, r.res, r.ctx)
    return _patient(None, f"{r.path}.participant", r.res, r.ctx)


def _appointment(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, APPOINTMENT_STATUS)
    event_type = APPOINTMENT_STATUS[status]
    if event_type is None:
        return []
    ids = _referral_ids(_refs(r.res, r.path, "basedOn"), r.res, r.ctx)
    r.require_referral(ids)
    data: Json = {"appointment_id": _appointment_id(r.res, r.path)}
    created = ("created", r.res.get("created"))
    if event_type is E.APPOINTMENT_SCHEDULED:
        if _rescheduled(r):
            event_type = E.APPOINTMENT_RESCHEDULED
        start = r.res.get("start")
        if start is None:
            _fail(ErrorCode.INVALID_FHIR, f"{r.path}.start", "a booked Appointment needs start")
        data["appointment_at"] = _time(start, f"{r.path}.start", r.zone)
        data["in_network"] = _in_network(r.res, r.path)
        occurred = r.when(created, r.last_updated())
    else:
        occurred = r.when(r.last_updated(), created)
        if event_type is E.APPOINTMENT_CANCELLED:
            reasons = _objects(r.res, "cancelationReason", r.path) or _objects(
                r.res, "cancellationReason", r.path
            )
            data["reason"] = _reason(reasons, f"{r.path}.cancelationReason")
        elif event_type is E.APPOINTMENT_COMPLETED:
            data["in_network"] = _in_network(r.res, r.path)
    return [r.draft(event_type, status, occurred, ids, _appointment_patient(r), data)]


def _encounter(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, ENCOUNTER_STATUS)
    event_type = ENCOUNTER_STATUS[status]
    if event_type is None:
        return []
    ids = _referral_ids(_refs(r.res, r.path, "basedOn"), r.res, r.ctx)
    appointment: _Appointment | None = None
    for ref, path in _refs(r.res, r.path, "appointment")[:1]:
        appointment = _appointment_ref(ref, path, r)
    if appointment is not None and appointment.resource is not None:
        if _speaks_for(appointment, event_type):
            return []
        container = appointment.resource if appointment.in_bundle else r.res
        basis = _refs(appointment.resource, f"{r.path}.appointment[0]", "basedOn")
        ids += _referral_ids(basis, container, r.ctx)
    r.require_referral(ids)
    appointment_id = appointment.id if appointment is not None else r.self_ref()
    period = r.obj("period") or {}
    occurred = r.when(("period.end", period.get("end")), r.last_updated())
    data = {"appointment_id": appointment_id, "in_network": _in_network(r.res, r.path)}
    patient = _patient(r.obj("subject"), f"{r.path}.subject", r.res, r.ctx)
    return [r.draft(event_type, status, occurred, ids, patient, data)]


# -- Communication ------------------------------------------------------------------------


def _channel(r: _Resource, required: bool) -> Channel | None:
    """The channel from `medium`: a ParticipationMode code, or a channel name as text."""
    unknown: list[str] = []
    media = _objects(r.res, "medium", r.path)
    for i, concept in enumerate(media):
        path = f"{r.path}.medium[{i}]"
        for j, coding in enumerate(_codings(concept, path)):
            code = _string(coding, "code", f"{path}.coding[{j}]")
            system = _string(coding, "system", f"{path}.coding[{j}]")
            if code is None:
                continue
            if system is None or system in PARTICIPATION_MODE_SYSTEMS:
                key = code.upper()
                if key in PARTICIPATION_MODE:
                    channel = PARTICIPATION_MODE[key]
                    if channel is not None:
                        return channel
                    continue
            unknown.append(code)
        text = _string(concept, "text", path)
        if text is not None and text.strip().lower() in _CHANNELS:
            return Channel(text.strip().lower())
    if unknown:
        _fail(ErrorCode.UNMAPPED_CODE, f"{r.path}.medium", f"{unknown[0][:40]!r} has no mapping")
    if required and not media:
        _fail(ErrorCode.INVALID_FHIR, f"{r.path}.medium", "an outreach needs its medium")
    if required:
        _fail(ErrorCode.UNMAPPED_CODE, f"{r.path}.medium", "no medium maps to a channel")
    return None


def _communication_direction(r: _Resource) -> EventType | None:
    """From the patient (sender is a Patient or RelatedPerson, or no sender and a reply
    to something): responded. To the patient (a patient recipient, or none named):
    outreach. Between providers: nothing."""
    sender = r.obj("sender")
    if sender is not None and _points_at_patient(sender, f"{r.path}.sender", r.res, r.ctx):
        return E.PATIENT_RESPONDED
    if sender is None and _objects(r.res, "inResponseTo", r.path):
        return E.PATIENT_RESPONDED
    recipients = _refs(r.res, r.path, "recipient")
    if not recipients or any(_points_at_patient(ref, p, r.res, r.ctx) for ref, p in recipients):
        return E.PATIENT_OUTREACH
    return None


def _communication(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, COMMUNICATION_SENT)
    if not COMMUNICATION_SENT[status]:
        return []
    event_type = _communication_direction(r)
    if event_type is None:
        return []
    ids = _referral_ids(_refs(r.res, r.path, "basedOn", "about", "partOf"), r.res, r.ctx)
    r.require_referral(ids)
    outreach = event_type is E.PATIENT_OUTREACH
    channel = _channel(r, required=outreach)
    occurred = r.when(
        ("sent", r.res.get("sent")), ("received", r.res.get("received")), r.last_updated()
    )
    subject = r.obj("subject")
    if subject is None and not outreach:
        subject = r.obj("sender")
    patient = _patient(subject, f"{r.path}.subject", r.res, r.ctx)
    data = {"channel": channel.value if channel is not None else None}
    return [r.draft(event_type, status, occurred, ids, patient, data)]


def _communication_request(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, COMMUNICATION_REQUEST_SENT)
    if not COMMUNICATION_REQUEST_SENT[status]:
        return []
    recipients = _refs(r.res, r.path, "recipient")
    if recipients and not any(_points_at_patient(ref, p, r.res, r.ctx) for ref, p in recipients):
        return []
    ids = _referral_ids(_refs(r.res, r.path, "basedOn", "about"), r.res, r.ctx)
    r.require_referral(ids)
    channel = _channel(r, required=True)
    occurred = r.when(
        r.last_updated(),
        ("occurrenceDateTime", r.res.get("occurrenceDateTime")),
        ("authoredOn", r.res.get("authoredOn")),
    )
    patient = _patient(r.obj("subject"), f"{r.path}.subject", r.res, r.ctx)
    data = {"channel": channel.value if channel is not None else None}
    return [r.draft(E.PATIENT_OUTREACH, status, occurred, ids, patient, data)]


# -- reports ------------------------------------------------------------------------------


def _document_reference(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, DOCUMENT_STATUS)
    doc_status = r.string("docStatus")
    if doc_status is not None:
        doc_status = _code(r.res, "docStatus", r.path, DOCUMENT_DOC_STATUS)
    if not DOCUMENT_STATUS[status] or (doc_status and not DOCUMENT_DOC_STATUS[doc_status]):
        return []
    context = r.obj("context") or {}
    refs = _refs(context, f"{r.path}.context", "related") + _refs(r.res, r.path, "basedOn")
    ids = _referral_ids(refs, r.res, r.ctx)
    r.require_referral(ids)
    occurred = r.when(("date", r.res.get("date")), r.last_updated())
    patient = _patient(r.obj("subject"), f"{r.path}.subject", r.res, r.ctx)
    return [r.draft(E.REPORT_RECEIVED, status, occurred, ids, patient)]


def _diagnostic_report(r: _Resource) -> list[Draft]:
    status = _code(r.res, "status", r.path, REPORT_STATUS)
    if not REPORT_STATUS[status]:
        return []
    ids = _referral_ids(_refs(r.res, r.path, "basedOn"), r.res, r.ctx)
    r.require_referral(ids)
    occurred = r.when(("issued", r.res.get("issued")), r.last_updated())
    patient = _patient(r.obj("subject"), f"{r.path}.subject", r.res, r.ctx)
    return [r.draft(E.REPORT_RECEIVED, status, occurred, ids, patient)]


MAPPERS: dict[str, Callable[[_Resource], list[Draft]]] = {
    "ServiceRequest": _service_request,
    "Task": _task,
    "Appointment": _appointment,
    "Encounter": _encounter,
    "Communication": _communication,
    "CommunicationRequest": _communication_request,
    "DocumentReference": _document_reference,
    "DiagnosticReport": _diagnostic_report,
}


# -- messages -----------------------------------------------------------------------------


def _resource_type(res: Json, path: str) -> str:
    kind = res.get("resourceType")
    if not isinstance(kind, str) or not kind:
        _fail(ErrorCode.INVALID_FHIR, f"{path}.resourceType", "a string resourceType is required")
    return kind


def adapt(raw: bytes, config: SourceConfig) -> list[Draft]:
    """One message (a resource or a Bundle) to its drafts; [] when it states nothing
    that moves a referral (docs/integrations.md, FHIR R4, "ignored")."""
    doc = _decode(raw)
    kind = _resource_type(doc, "resource")
    ctx = _Context(config)
    if kind == "Bundle":
        return _bundle(doc, ctx)
    mapper = MAPPERS.get(kind)
    if mapper is None:
        _fail(ErrorCode.UNSUPPORTED_MESSAGE, "resourceType", f"{kind[:40]!r} is not mapped")
    return mapper(_Resource(doc, kind, kind, None, ctx))


def _bundle(doc: Json, ctx: _Context) -> list[Draft]:
    meta = _object(doc, "meta", "Bundle") or {}
    ctx.org_tag = _org_tag(meta, "Bundle.meta")
    ctx.source = _string(meta, "source", "Bundle.meta")
    entries: list[tuple[Json, str, str, str | None]] = []
    _collect(doc, "Bundle", ctx, entries, 0)
    drafts: list[Draft] = []
    mapped = 0
    missing: EventRejected | None = None
    for res, kind, path, full_url in entries:
        mapper = MAPPERS.get(kind)
        if mapper is None:
            continue
        try:
            drafts.extend(mapper(_Resource(res, kind, path, full_url, ctx)))
        except _NotAboutAReferral as exc:
            if exc.code is ErrorCode.MISSING_REFERRAL_ID and missing is None:
                missing = exc
            continue
        mapped += 1
    if mapped:
        return drafts
    if missing is not None:
        raise missing
    _fail(ErrorCode.UNSUPPORTED_MESSAGE, "Bundle.entry", "no entry of a mapped resource type")


def _collect(
    bundle: Json, path: str, ctx: _Context, out: list[tuple[Json, str, str, str | None]], depth: int
) -> None:
    """Every entry resource, nested bundles flattened, indexed by fullUrl and Type/id."""
    if depth > MAX_BUNDLE_DEPTH:
        _fail(ErrorCode.INVALID_FHIR, path, f"bundles nested more than {MAX_BUNDLE_DEPTH} deep")
    for i, entry in enumerate(_objects(bundle, "entry", path)):
        entry_path = f"{path}.entry[{i}]"
        res = _object(entry, "resource", entry_path)
        if res is None:
            continue
        res_path = f"{entry_path}.resource"
        kind = _resource_type(res, res_path)
        full_url = _string(entry, "fullUrl", entry_path)
        if full_url is not None:
            ctx.index[full_url] = res
            if (match := _LITERAL.search(full_url)) is not None:
                ctx.index.setdefault(f"{match.group(1)}/{match.group(2)}", res)
        rid = res.get("id")
        if isinstance(rid, str) and rid:
            ctx.index[f"{kind}/{rid}"] = res
        if kind == "Bundle":
            _collect(res, res_path, ctx, out, depth + 1)
            continue
        if kind == "Patient":
            ctx.patients.append(res)
        elif kind == "MessageHeader" and ctx.source is None:
            source = _object(res, "source", res_path) or {}
            ctx.source = _string(source, "endpoint", f"{res_path}.source")
        out.append((res, kind, res_path, full_url))


# -- dead-letter copies -------------------------------------------------------------------

# Reference fields that name a person: an identifier-only reference here is a patient's.
_PERSON_FIELDS = frozenset({"subject", "for", "patient", "sender", "recipient", "beneficiary"})
# Free text may name the patient; none of it is needed to see why a message was rejected.
_FREE_TEXT = ("note", "comment", "description", "patientInstruction", "contentString")


def redact(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """A copy of a rejected message safe for the dead-letter topic: each Patient cut to
    its pseudonymized id (a RelatedPerson to its id), each reference to a patient
    pseudonymized (id, identifier value); narratives, free text, reference displays,
    search links and conditional-create queries dropped. (raw, False) when it cannot be
    read or holds none of these."""
    try:
        doc = json.loads(raw.removeprefix(codecs.BOM_UTF8))
        changed = _Redactor(key, _patient_urls(doc)).run(doc)
        if not changed:
            return raw, False
        try:
            return json.dumps(doc, ensure_ascii=False).encode("utf-8"), True
        except UnicodeEncodeError:
            return json.dumps(doc).encode("ascii"), True
    except (ValueError, RecursionError):
        return raw, False


def _walk(doc: Any) -> list[tuple[Any, Any]]:
    """Every (parent key, dict) in the tree, without recursion."""
    out: list[tuple[Any, Any]] = []
    stack: list[tuple[Any, Any]] = [(None, doc)]
    while stack:
        name, node = stack.pop()
        if isinstance(node, dict):
            out.append((name, node))
            stack.extend(node.items())
        elif isinstance(node, list):
            stack.extend((name, item) for item in node)
    return out


def _patient_urls(doc: Any) -> set[str]:
    """fullUrls and `#id`s of the Patients in the message (a urn:uuid names no type)."""
    urls: set[str] = set()
    for _, node in _walk(doc):
        res = node.get("resource")
        full_url = node.get("fullUrl")
        if isinstance(res, dict) and res.get("resourceType") == "Patient" and full_url:
            urls.add(str(full_url))
        if node.get("resourceType") == "Patient" and isinstance(node.get("id"), str):
            urls.add("#" + node["id"])
    return urls


@dataclass
class _Redactor:
    key: bytes
    patient_urls: set[str]

    def pseudo(self, value: Any) -> str:
        return pseudonymize(self.key, "", str(value))

    def literal(self, value: str) -> str:
        """`[base/]Patient/<id>[/_history/n]`, or a urn or `#id` naming a Patient, with
        the id pseudonymized."""
        match = _LITERAL.search(value)
        if match is not None and match.group(1) == "Patient":
            return value[: match.start(2)] + self.pseudo(match.group(2)) + value[match.end(2) :]
        if value in self.patient_urls:
            head, sep, tail = value.rpartition("#" if value.startswith("#") else ":")
            return f"{head}{sep}{self.pseudo(tail)}"
        return value

    def is_patient_ref(self, name: Any, node: Json) -> bool:
        literal = node.get("reference")
        kind = node.get("type")
        if isinstance(literal, str):
            return literal in self.patient_urls or self.literal(literal) != literal
        if isinstance(kind, str):
            return kind.rsplit("/", 1)[-1] == "Patient"
        return name in _PERSON_FIELDS and ("identifier" in node or "display" in node)

    def run(self, doc: Any) -> bool:
        changed = False
        for name, node in _walk(doc):
            kind = node.get("resourceType")
            if isinstance(kind, str) and kind in PATIENT_KINDS:
                rid = node.get("id")
                node.clear()
                node["resourceType"] = kind
                if rid is not None:
                    node["id"] = self.pseudo(rid) if kind == "Patient" else rid
                changed = True
                continue
            if name == "text" and "div" in node:
                node.clear()
                node["status"] = "empty"
                changed = True
            for field_name in ("fullUrl", "url"):
                value = node.get(field_name)
                if isinstance(value, str) and (new := self.literal(value)) != value:
                    node[field_name] = new
                    changed = True
            if node.get("resourceType") == "Bundle" and node.pop("link", None) is not None:
                changed = True
            for name_ in ("ifNoneExist", *_FREE_TEXT):
                if node.pop(name_, None) is not None:
                    changed = True
            if ("reference" in node or "identifier" in node or "type" in node) and (
                self.is_patient_ref(name, node)
            ):
                self.redact_ref(node)
                changed = True
            if "display" in node and "code" not in node and "system" not in node:
                del node["display"]  # a reference's display ("Beverly's encounter")
                changed = True
        return changed

    def redact_ref(self, node: Json) -> None:
        if isinstance(node.get("reference"), str):
            node["reference"] = self.literal(node["reference"])
        ident = node.get("identifier")
        if isinstance(ident, dict) and ident.get("value") is not None:
            ident["value"] = self.pseudo(ident["value"])
