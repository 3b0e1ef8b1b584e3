"""HL7 v2 messages (`referrals.raw.hl7v2.v1`, ER7 text) into referral events.

docs/integrations.md, HL7 v2 is the operator's guide: every message, segment and field
read, what is ignored, and why a message is rejected. In short:

- REF^I12 new referral, I13 routed to a provider, I14 cancelled; RRI (the referred-to
  side's answer) accepted, declined or expired by RF1-1;
- SIU^S12 booked, S13/S14 moved, S15/S16/S17 cancelled, S26 no-show;
- ADT^A03 (end of visit) completed, when a ZRT segment ties the visit to a referral.

The message is split here rather than with python-hl7: we read about a dozen fields,
and python-hl7 builds the whole tree first (about 450 µs to parse a typical SIU, where
this whole adapter takes about 30 µs on one core). Only the segments a message type
needs are split into fields, and a value is unescaped only when it is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any

from schemas.adapters.base import Draft, Identifier
from schemas.adapters.config import SourceConfig
from schemas.errors import ErrorCode, EventRejected
from schemas.events import MAX_TIMESTAMP, MIN_TIMESTAMP, EventType, Priority, Source
from schemas.pseudonym import pseudonymize

KIND = "hl7v2"
MAX_HL7_BYTES = 1024 * 1024
MAX_REASON = 1024

# Bytes around a message that are framing or padding, never content: MLLP start (0x0B)
# and end (0x1C 0x0D), line ends, blanks, NULs left by fixed-size buffers.
_FRAMING = b" \t\r\n\x0b\x1c\x00"
_BOM = b"\xef\xbb\xbf"
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# MSH-18 names of single-byte character sets (HL7 table 0211): 8859/1 .. 8859/16 (also
# written ISO-8859-1 and the like), and ISO IR100, which is 8859/1.
_ISO_8859 = re.compile(r"(?:ISO[-_ ]?)?8859[-_/]?(\d{1,2})\Z")
# HL7 DTM: YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]. Up to 6 fraction digits are read
# (the standard allows 4) so that microseconds survive.
_DTM = re.compile(
    r"(\d{4})(\d\d)?(\d\d)?(\d\d)?(\d\d)?(\d\d)?(?:\.(\d{1,6}))?(?:([+-])(\d\d)(\d\d))?\Z"
)

# RF1-2, HL7 table 0280 (S, A, R), plus the words some senders write instead.
PRIORITIES = {
    "S": Priority.STAT,
    "STAT": Priority.STAT,
    "A": Priority.URGENT,
    "ASAP": Priority.URGENT,
    "URGENT": Priority.URGENT,
    "R": Priority.ROUTINE,
    "ROUTINE": Priority.ROUTINE,
    "": Priority.ROUTINE,
}
REF_EVENTS = {
    "I12": EventType.REFERRAL_CREATED,
    "I13": EventType.REFERRAL_ROUTED,
    "I14": EventType.REFERRAL_CANCELLED,
}
# RF1-1 of an RRI, HL7 table 0283. P (pending) and an empty status say nothing new.
RRI_STATUSES: dict[str, EventType | None] = {
    "A": EventType.REFERRAL_ACCEPTED,
    "R": EventType.REFERRAL_DECLINED,
    "E": EventType.REFERRAL_CANCELLED,
    "P": None,
    "": None,
}
SIU_EVENTS: dict[str, EventType | None] = {
    "S12": EventType.APPOINTMENT_SCHEDULED,
    "S13": EventType.APPOINTMENT_RESCHEDULED,
    "S14": EventType.APPOINTMENT_RESCHEDULED,
    "S15": EventType.APPOINTMENT_CANCELLED,
    "S16": EventType.APPOINTMENT_CANCELLED,
    "S17": EventType.APPOINTMENT_CANCELLED,
    "S26": EventType.APPOINTMENT_NO_SHOW,
    # Services and resources added to, changed in or taken from an appointment.
    **{f"S{n}": None for n in range(18, 26)},
}
# SCH-25 of an S14 (table 0278): only a booked appointment was moved; the other states
# come with their own trigger (S15, S26, ADT^A03), so an S14 repeating them is ignored.
S14_BOOKED = frozenset({"", "BOOKED", "OVERBOOK"})
S14_OTHER = frozenset(
    {"PENDING", "WAITLIST", "STARTED", "COMPLETE", "CANCELLED", "DC", "DELETED", "BLOCKED",
     "NOSHOW"}
)  # fmt: skip
IN_NETWORK = {"Y": True, "N": False, "": None}

# Where the event time is, by preference: EVN-6 (event occurred), EVN-2 (recorded),
# MSH-7 (message created). And the start of an appointment: SCH-11 (TQ) component 4,
# TQ1-7 (v2.6 and later), then the service and resource segments.
MESSAGE_TIMES = (("EVN", 6, 1), ("EVN", 2, 1), ("MSH", 7, 1))
APPOINTMENT_STARTS = (
    ("SCH", 11, 4),
    ("TQ1", 7, 1),
    ("AIS", 4, 1),
    ("AIG", 8, 1),
    ("AIL", 6, 1),
    ("AIP", 6, 1),
)

# Dead-letter copies: per segment, the fields whose first component of every repetition
# is an identifier (pseudonymized) and the fields that are personal data (emptied).
PERSONAL_FIELDS: dict[str, tuple[frozenset[int], frozenset[int]]] = {
    "PID": (frozenset({2, 3, 4, 18, 19, 20, 21}), frozenset({5, 6, 7, 9, 11, 13, 14, 23, 29})),
    "PD1": (frozenset({10}), frozenset()),
    "NK1": (frozenset({33, 37}), frozenset({2, 4, 5, 6, 16, 30, 31, 32})),
    "GT1": (frozenset({2, 12, 19}), frozenset({3, 4, 5, 6, 7, 8, 16, 17, 18})),
    "IN1": (frozenset({36, 49}), frozenset({16, 18, 19})),
    "MRG": (frozenset({1, 2, 3, 4, 5, 6}), frozenset({7})),
}


@dataclass(frozen=True, slots=True)
class _Delimiters:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


class _Message:
    """One split message: its segment lines by name, split into fields on first use."""

    __slots__ = ("codec", "d", "_lines", "_split")

    def __init__(self, d: _Delimiters, codec: str, lines: dict[str, list[str]]) -> None:
        self.d = d
        self.codec = codec
        self._lines = lines
        self._split: dict[str, list[list[str]]] = {}

    def all(self, name: str) -> list[list[str]]:
        """Every segment `name`, as field lists indexed like the standard (PID-3 is [3])."""
        found = self._split.get(name)
        if found is None:
            sep = self.d.field
            found = [line.split(sep) for line in self._lines.get(name, ())]
            if name == "MSH":  # MSH-1 is the field separator itself
                found = [["MSH", sep, *fields[1:]] for fields in found]
            self._split[name] = found
        return found

    def first(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[0] if found else None

    def value(self, fields: list[str] | None, n: int, comp: int = 1, sub: int = 1) -> str:
        """Field n, component `comp`, subcomponent `sub` of the first repetition,
        unescaped; "" when absent or the HL7 null `""`."""
        if fields is None or n >= len(fields):
            return ""
        text = fields[n]
        if not text:
            return ""
        d = self.d
        if d.repetition in text:
            text = text.split(d.repetition, 1)[0]
        if comp > 1 or d.component in text:
            parts = text.split(d.component)
            text = parts[comp - 1] if comp <= len(parts) else ""
        if sub > 1 or d.subcomponent in text:
            parts = text.split(d.subcomponent)
            text = parts[sub - 1] if sub <= len(parts) else ""
        if text == '""':
            return ""
        return self.unescape(text) if d.escape in text else text

    def unescape(self, text: str) -> str:
        """HL7 escapes: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ give the delimiters back, \\Xhh..\\ the
        bytes (in the message's charset), \\.br\\ a line break; \\H\\ and \\N\\
        (highlighting) are dropped. Anything else is kept as written."""
        d = self.d
        plain = {
            "F": d.field,
            "S": d.component,
            "T": d.subcomponent,
            "R": d.repetition,
            "E": d.escape,
            "H": "",
            "N": "",
            ".br": "\n",
        }
        out: list[str] = []
        i = 0
        while i < len(text):
            start = text.find(d.escape, i)
            if start < 0:
                out.append(text[i:])
                break
            end = text.find(d.escape, start + 1)
            if end < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            code = text[start + 1 : end]
            if code in plain:
                out.append(plain[code])
            elif code[:1] == "X" and len(code) > 1:
                out.append(self._hex(code[1:]) or text[start : end + 1])
            else:
                out.append(text[start : end + 1])
            i = end + 1
        return "".join(out)

    def _hex(self, digits: str) -> str:
        try:
            return bytes.fromhex(digits).decode(self.codec)
        except ValueError:  # odd length, not hex, or not text in the charset
            return ""


def _read(raw: bytes) -> _Message:
    """Framing off, delimiters and charset from MSH, text split into segments."""
    if len(raw) > MAX_HL7_BYTES:
        raise EventRejected(
            ErrorCode.TOO_LARGE, f"message is {len(raw)} bytes; the limit is {MAX_HL7_BYTES}"
        )
    body = raw.strip(_FRAMING)
    if body.startswith(_BOM):
        body = body[len(_BOM) :].lstrip(_FRAMING)
    if not body.startswith(b"MSH"):
        raise EventRejected(ErrorCode.INVALID_HL7, "the message does not start with an MSH segment")
    if len(body) < 8:
        raise EventRejected(ErrorCode.INVALID_HL7, "MSH is cut short", "MSH-2")
    sep = chr(body[3])
    if not ("!" <= sep <= "~") or sep.isalnum():
        raise EventRejected(ErrorCode.INVALID_HL7, "MSH-1 is not a field separator", "MSH-1")
    header = body.split(b"\r", 1)[0].split(b"\n", 1)[0].split(sep.encode("ascii"))
    encoding = header[1].decode("latin-1")
    d = _delimiters(sep, encoding)
    if d is None:
        raise EventRejected(
            ErrorCode.INVALID_HL7,
            f"MSH-2 encoding characters {encoding[:8]!r} are not 4 distinct delimiters",
            "MSH-2",
        )
    charset = header[17].decode("latin-1") if len(header) > 17 else ""
    codec = _codec(charset.split(d.repetition, 1)[0])
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        named = f"MSH-18 {charset[:20]!r}" if charset else "no MSH-18"
        raise EventRejected(
            ErrorCode.INVALID_ENCODING, f"not {codec} ({named}) at byte {exc.start}", "MSH-18"
        ) from None
    lines: dict[str, list[str]] = {}
    for number, line in enumerate(text.replace("\r\n", "\r").replace("\n", "\r").split("\r")):
        line = line.strip()
        if not line:
            continue
        name = line[:3]
        if (name not in _NAMES and not _new_name(name)) or (len(line) > 3 and line[3] != sep):
            raise EventRejected(
                ErrorCode.INVALID_HL7,
                f"line {number + 1} is not a segment (a 3-character name, then {sep!r})",
            )
        if name == "MSH" and lines:
            raise EventRejected(
                ErrorCode.INVALID_HL7, "more than one MSH: send one message per Kafka message"
            )
        lines.setdefault(name, []).append(line)
    return _Message(d, codec, lines)


@lru_cache(maxsize=256)
def _delimiters(sep: str, encoding: str) -> _Delimiters | None:
    """MSH-1 and MSH-2 as delimiters: printable ASCII, no letters or digits, all
    different; MSH-2 has 4 (or, from v2.7, 5 with the unused truncation character)."""
    chars = sep + encoding
    if (
        len(encoding) not in (4, 5)
        or len(set(chars)) != len(chars)
        or not chars.isascii()
        or any(c.isalnum() or c.isspace() or not c.isprintable() for c in chars)
    ):
        return None
    return _Delimiters(sep, *encoding[:4])


_NAMES: set[str] = set()


def _new_name(name: str) -> bool:
    """Whether `name` is a segment name; the valid ones are remembered (at most 36³)."""
    if _SEGMENT_NAME.match(name) is None:
        return False
    _NAMES.add(name)
    return True


@lru_cache(maxsize=256)
def _codec(charset: str) -> str:
    """MSH-18 to a Python codec: a single-byte ISO 8859 part when named, else UTF-8
    (which ASCII, the default, is a part of)."""
    name = charset.strip().upper()
    if name == "ISO IR100":
        return "iso8859-1"
    match = _ISO_8859.match(name)
    if match and 1 <= int(match[1]) <= 16 and match[1] != "12":
        return f"iso8859-{int(match[1])}"
    return "utf-8"


# -- values ------------------------------------------------------------------------


def _identifier(value: str, where: str, private: bool = False) -> str:
    """An id as the canonical event takes it (1-128 characters, no control characters)."""
    if len(value) > 128 or _CONTROL.search(value):
        shown = "the value" if private else repr(value[:40])
        raise EventRejected(
            ErrorCode.INVALID_FIELD,
            f"{where}: {shown} is not an id of 1-128 characters without control characters",
            where,
        )
    return value


def _time(text: str, where: str, zone: tzinfo) -> datetime:
    """An HL7 DTM. Without an offset it is the sender's local time: `zone`, fold 0 (the
    first of a repeated hour; a time in the skipped hour reads with the offset before
    the change). Missing parts are the start of the period (a date is midnight)."""
    match = _DTM.match(text)
    if match is None or (match[7] and not match[6]):
        raise EventRejected(
            ErrorCode.INVALID_FIELD,
            f"{where}: {text[:40]!r} is not an HL7 time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])",
            where,
        )
    try:
        if match[8]:
            hours, minutes = int(match[9]), int(match[10])
            if hours > 23 or minutes > 59:
                raise ValueError
            offset = timedelta(hours=hours, minutes=minutes)
            zone = _fixed(offset if match[8] == "+" else -offset)
        value = datetime(
            int(match[1]),
            int(match[2] or 1),
            int(match[3] or 1),
            int(match[4] or 0),
            int(match[5] or 0),
            int(match[6] or 0),
            int((match[7] or "0").ljust(6, "0")),
            tzinfo=zone,
        )
    except ValueError:
        raise EventRejected(
            ErrorCode.INVALID_FIELD, f"{where}: {text[:40]!r} is not a valid date or time", where
        ) from None
    if not match[8]:  # keep the offset the zone gave, not the zone: one instant, one value
        value = value.replace(tzinfo=_fixed(value.utcoffset() or timedelta(0)))
    if not 1900 < value.year < 2262 and not MIN_TIMESTAMP <= value < MAX_TIMESTAMP:
        raise EventRejected(
            ErrorCode.TIMESTAMP_OUT_OF_RANGE,
            f"{where}: {text[:40]!r} is outside 1900-01-01 .. 2262-04-11",
            where,
        )
    return value


@lru_cache(maxsize=4096)
def _fixed(offset: timedelta) -> timezone:
    """One tzinfo per offset (few distinct ones; making them is most of a time's cost)."""
    return timezone(offset)


# -- what a message says -----------------------------------------------------------


@dataclass
class _Fact:
    """What one message says, before times are read (their zone depends on the org)."""

    type: EventType
    source: Source
    identifiers: list[Identifier]
    data: dict[str, Any] = field(default_factory=dict)
    times: tuple[tuple[str, int, int], ...] = ()  # where the event time is, by preference
    appointment_at: tuple[str, str] | None = None  # (HL7 time, where it was)


def _unsupported(message_type: str, trigger: str) -> EventRejected:
    return EventRejected(
        ErrorCode.UNSUPPORTED_MESSAGE,
        f"{message_type}^{trigger} has no mapping (docs/integrations.md, HL7 v2)",
        "MSH-9",
    )


def _ei(msg: _Message, fields: list[str] | None, n: int, where: str) -> Identifier | None:
    """An EI field as an identifier: system EI.2 (namespace), else EI.3 (universal id)."""
    value = msg.value(fields, n)
    if not value:
        return None
    system = msg.value(fields, n, 2) or msg.value(fields, n, 3)
    return Identifier(system, _identifier(value, where))


def _identifiers(
    msg: _Message, *places: tuple[str, int], optional: bool = False
) -> list[Identifier]:
    """The referral's identifiers, in the order given (placer first), then ZRT-2/ZRT-3.
    Having none is a rejection, unless `optional` (for messages that are mostly about
    no referral)."""
    found: list[Identifier] = []
    for segment, n in (*places, ("ZRT", 2), ("ZRT", 3)):
        identifier = _ei(msg, msg.first(segment), n, f"{segment}-{n}")
        if identifier is not None and identifier not in found:
            found.append(identifier)
    if not found and not optional:
        named = ", ".join(f"{segment}-{n}" for segment, n in (*places, ("ZRT", 2), ("ZRT", 3)))
        raise EventRejected(
            ErrorCode.MISSING_REFERRAL_ID, f"no referral identifier: {named} are all empty"
        )
    return found


def _text(msg: _Message, fields: list[str] | None, n: int) -> str:
    """A CE field as words: its text (component 2), else its code."""
    return msg.value(fields, n, 2) or msg.value(fields, n)


def _add_reason(msg: _Message, data: dict[str, Any], fields: list[str] | None, n: int) -> None:
    reason = _text(msg, fields, n)
    if reason:
        data["reason"] = reason[:MAX_REASON]


def _add_network(msg: _Message, data: dict[str, Any]) -> None:
    flag = msg.value(msg.first("ZRT"), 1).upper()
    if flag not in IN_NETWORK:
        raise EventRejected(ErrorCode.UNMAPPED_CODE, f"ZRT-1 {flag[:20]!r} is not Y or N", "ZRT-1")
    if IN_NETWORK[flag] is not None:
        data["in_network"] = IN_NETWORK[flag]


def _provider(msg: _Message, role: str) -> tuple[bool, str | None]:
    """The first PRD with role `role` (PRD-1): whether there is one, and its id (PRD-7,
    else the name in PRD-2 as "FAMILY, GIVEN")."""
    for prd in msg.all("PRD"):
        if msg.value(prd, 1).upper() != role:
            continue
        ident = msg.value(prd, 7)
        if not ident:
            family, given = msg.value(prd, 2), msg.value(prd, 2, 2)
            ident = ", ".join(part for part in (family, given) if part)
        return True, _identifier(ident, "PRD-7") if ident else None
    return False, None


def _first_value(msg: _Message, places: tuple[tuple[str, int, int], ...]) -> tuple[str, str] | None:
    """The first non-empty (segment, field, component) of `places`, and its name."""
    for segment, n, comp in places:
        value = msg.value(msg.first(segment), n, comp)
        if value:
            return value, f"{segment}-{n}" + (f".{comp}" if comp > 1 else "")
    return None


def _ref(msg: _Message, trigger: str) -> _Fact | None:
    """REF: the referring side. I12 new, I13 modified (routed when it names a referred-to
    provider), I14 cancelled, I15 a status query (ignored)."""
    if trigger not in ("I12", "I13", "I14", "I15"):
        raise _unsupported("REF", trigger)
    if trigger == "I15":
        return None
    routed_to = _provider(msg, "RT") if trigger != "I14" else (False, None)
    if trigger == "I13" and not routed_to[0]:
        return None
    rf1 = msg.first("RF1")
    fact = _Fact(
        REF_EVENTS[trigger],
        Source.REFERRAL_PLATFORM,
        _identifiers(msg, ("RF1", 6), ("RF1", 11)),
        times=MESSAGE_TIMES,
    )
    data = fact.data
    if trigger == "I12":
        code = msg.value(rf1, 2).upper()
        if code not in PRIORITIES:
            raise EventRejected(
                ErrorCode.UNMAPPED_CODE, f"RF1-2 priority {code[:20]!r} is not S, A or R", "RF1-2"
            )
        specialty = msg.value(rf1, 3) or msg.value(rf1, 3, 2)
        if not specialty:
            raise EventRejected(
                ErrorCode.MISSING_DATA_FIELD,
                "RF1-3 (referral type: the specialty) is empty",
                "RF1-3",
            )
        data["priority"] = PRIORITIES[code]
        data["specialty"] = _identifier(specialty, "RF1-3")
        for provider, name in (
            (_provider(msg, "RP")[1], "referring_provider_id"),
            (routed_to[1], "referred_to_provider_id"),
        ):
            if provider is not None:
                data[name] = provider
        _add_network(msg, data)
        _add_reason(msg, data, rf1, 10)
    elif trigger == "I13":
        if routed_to[1] is not None:
            data["referred_to_provider_id"] = routed_to[1]
        _add_network(msg, data)
    else:
        _add_reason(msg, data, rf1, 10)
    return fact


def _rri(msg: _Message, trigger: str) -> _Fact | None:
    """RRI: the referred-to side's answer, by RF1-1 status. I14 (the answer to a cancel)
    is ignored: the REF^I14 already said it."""
    if trigger not in ("I12", "I13", "I14", "I15"):
        raise _unsupported("RRI", trigger)
    if trigger == "I14":
        return None
    rf1 = msg.first("RF1")
    status = msg.value(rf1, 1).upper()
    if status not in RRI_STATUSES:
        raise EventRejected(
            ErrorCode.UNMAPPED_CODE, f"RF1-1 status {status[:20]!r} is not A, R, E or P", "RF1-1"
        )
    event_type = RRI_STATUSES[status]
    if event_type is None:
        return None
    fact = _Fact(
        event_type,
        Source.REFERRAL_PLATFORM,
        _identifiers(msg, ("RF1", 6), ("RF1", 11)),
        times=MESSAGE_TIMES,
    )
    if event_type is not EventType.REFERRAL_ACCEPTED:
        _add_reason(msg, fact.data, rf1, 10)
    return fact


def _siu(msg: _Message, trigger: str) -> _Fact | None:
    """SIU: the scheduling system's appointment notices."""
    if trigger not in SIU_EVENTS:
        raise _unsupported("SIU", trigger)
    event_type = SIU_EVENTS[trigger]
    if event_type is None:
        return None
    sch = msg.first("SCH")
    if sch is None:
        raise EventRejected(ErrorCode.INVALID_HL7, f"SIU^{trigger} without an SCH segment", "SCH")
    if trigger == "S14":
        status = msg.value(sch, 25).upper()
        if status in S14_OTHER:
            return None
        if status not in S14_BOOKED:
            raise EventRejected(
                ErrorCode.UNMAPPED_CODE,
                f"SCH-25 filler status {status[:20]!r} is not in HL7 table 0278",
                "SCH-25",
            )
    fact = _Fact(
        event_type,
        Source.SCHEDULING,
        _identifiers(msg, ("SCH", 26), ("SCH", 27)),
        times=MESSAGE_TIMES,
    )
    appointment = msg.value(sch, 2) or msg.value(sch, 1)
    if not appointment:
        raise EventRejected(
            ErrorCode.MISSING_DATA_FIELD,
            "SCH-2 and SCH-1 (filler and placer appointment id) are both empty",
            "SCH-2",
        )
    fact.data["appointment_id"] = _identifier(appointment, "SCH-2")
    if event_type in (EventType.APPOINTMENT_SCHEDULED, EventType.APPOINTMENT_RESCHEDULED):
        fact.appointment_at = _first_value(msg, APPOINTMENT_STARTS)
        if fact.appointment_at is None:
            raise EventRejected(
                ErrorCode.MISSING_DATA_FIELD,
                "no start time: SCH-11.4, TQ1-7, AIS-4, AIG-8, AIL-6 and AIP-6 are empty",
                "SCH-11",
            )
        _add_network(msg, fact.data)
    elif event_type is EventType.APPOINTMENT_CANCELLED:
        _add_reason(msg, fact.data, sch, 6)
    return fact


def _adt(msg: _Message, trigger: str) -> _Fact | None:
    """ADT: A03 (discharge, end of visit) completes the appointment when ZRT ties the
    visit to a referral; A04 (registration) says nothing a later A03 does not."""
    if trigger == "A04":
        return None
    if trigger != "A03":
        raise _unsupported("ADT", trigger)
    identifiers = _identifiers(msg, optional=True)
    if not identifiers:
        return None
    pv1 = msg.first("PV1")
    times = (("PV1", 45, 1), *MESSAGE_TIMES)
    fact = _Fact(EventType.APPOINTMENT_COMPLETED, Source.EHR, identifiers, times=times)
    visit = msg.value(pv1, 19)
    if not visit:
        raise EventRejected(
            ErrorCode.MISSING_DATA_FIELD,
            "PV1-19 (visit number: the appointment) is empty",
            "PV1-19",
        )
    fact.data["appointment_id"] = _identifier(visit, "PV1-19")
    _add_network(msg, fact.data)
    return fact


_MAPPERS = {"REF": _ref, "RRI": _rri, "SIU": _siu, "ADT": _adt}


def adapt(raw: bytes, config: SourceConfig) -> list[Draft]:
    """One HL7 v2 message to zero or one draft; raises EventRejected and nothing else."""
    msg = _read(raw)
    msh = msg.first("MSH")
    message_type = msg.value(msh, 9).upper()
    trigger = (msg.value(msh, 9, 2) or msg.value(msg.first("EVN"), 1)).upper()
    if not message_type or not trigger:
        raise EventRejected(
            ErrorCode.INVALID_HL7, "MSH-9 names no message type and trigger", "MSH-9"
        )
    mapper = _MAPPERS.get(message_type)
    if mapper is None:
        raise _unsupported(message_type, trigger)
    fact = mapper(msg, trigger)
    if fact is None:
        return []
    application, facility = msg.value(msh, 3), msg.value(msh, 4)
    org = config.org_for_hl7_sender(application, facility)
    identifiers = tuple(fact.identifiers)
    zone = config.timezone_for(
        org or config.org_for_identifiers(identifiers) or config.file.default_org
    )
    when = _first_value(msg, fact.times)
    if when is None:
        raise EventRejected(ErrorCode.INVALID_HL7, "MSH-7 (date/time of message) is empty", "MSH-7")
    if fact.appointment_at is not None:
        fact.data["appointment_at"] = _time(*fact.appointment_at, zone)
    patient = msg.value(msg.first("PID"), 3)
    return [
        Draft(
            type=fact.type,
            occurred_at=_time(*when, zone),
            source=fact.source,
            anchor=f"{message_type}^{trigger}|{application}^{facility}|{msg.value(msh, 10)}",
            identifiers=identifiers,
            data=fact.data,
            patient_id=_identifier(patient, "PID-3", private=True) if patient else None,
            org_id=org,
        )
    ]


# -- dead-letter copies ------------------------------------------------------------

_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


def redact(raw: bytes, key: bytes) -> tuple[bytes, bool]:
    """A copy of a (rejected) message without the patient's personal data: in the
    segments of PERSONAL_FIELDS, identifiers pseudonymized (emptied without a key) and
    names, birth date, addresses and phone numbers emptied. Works on any bytes: the
    segments are split here, without the checks `adapt` makes; other bytes are kept."""
    try:
        codec, text = "utf-8", raw.decode("utf-8")
    except UnicodeDecodeError:
        codec, text = "latin-1", raw.decode("latin-1")  # reads, and gives back, any bytes
    d = _redaction_delimiters(text)
    parts = _LINE_BREAK.split(text)
    changed = False
    for i in range(0, len(parts), 2):
        line = parts[i]
        body = line.lstrip()  # as adapt reads lines: blanks, VT, FS and the like dropped
        rules = PERSONAL_FIELDS.get(body[:3])
        if rules is None or (len(body) > 3 and body[3] != d.field):
            continue
        fields = body.split(d.field)
        identifiers, personal = rules
        for n in range(1, len(fields)):
            value = fields[n]
            if not value:
                continue
            if n in personal:
                fields[n] = ""
            elif n in identifiers:
                fields[n] = d.repetition.join(
                    _pseudonymize_first(rep, d.component, key) for rep in value.split(d.repetition)
                )
        new = line[: len(line) - len(body)] + d.field.join(fields)
        if new != line:
            parts[i] = new
            changed = True
    if not changed:
        return raw, False
    return "".join(parts).encode(codec), True


def _redaction_delimiters(text: str) -> _Delimiters:
    """The message's delimiters when its MSH gives usable ones, else the standard's."""
    head = text.lstrip(" \t\r\n\x0b\x1c\x00\ufeff")
    if head.startswith("MSH") and len(head) >= 8:
        sep, encoding = head[3], head[4:8]
        chars = sep + encoding
        if (
            len(set(chars)) == 5
            and chars.isascii()
            and not any(c.isalnum() or c.isspace() or not c.isprintable() for c in chars)
        ):
            return _Delimiters(sep, *encoding)
    return _Delimiters("|", "^", "~", "\\", "&")


def _pseudonymize_first(repetition: str, component: str, key: bytes) -> str:
    parts = repetition.split(component)
    value = parts[0]
    if value and value != '""':
        parts[0] = pseudonymize(key, "", value) if key else ""
    return component.join(parts)
