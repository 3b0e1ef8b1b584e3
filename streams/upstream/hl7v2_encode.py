"""Render a canonical event (SPEC §3) as the HL7 v2 message that says the same thing.

The round-trip property test (tests/unit/test_adapter_hl7v2.py) checks that the HL7 v2
adapter reads each message back as the event it came from; the end-to-end test sends
simulated events through the HL7 v2 topic with it. So it writes what a conformant
sender would, in the shapes docs/integrations.md, HL7 v2 describes:

| canonical type | message | where the event's fields go |
|---|---|---|
| referral.created | REF^I12 | RF1-2 priority, RF1-3.1 specialty, RF1-10.2 reason, PRD-7 (RP, RT) |
| referral.routed | REF^I13 | a PRD in role RT, PRD-7 the provider when known |
| referral.accepted / declined | RRI^I12 | RF1-1 A / R, RF1-10.2 reason |
| referral.cancelled | REF^I14 | RF1-10.2 reason |
| appointment.scheduled / rescheduled | SIU^S12 / S13 | SCH-2 id, SCH-11.4 start |
| appointment.cancelled | SIU^S15 | SCH-2 id, SCH-6.2 reason |
| appointment.no_show | SIU^S26 | SCH-2 id |
| appointment.completed | ADT^A03 | PV1-19 id, PV1-45 and EVN-2 the time, ZRT-2 the referral |

Every message: MSH-4 the facility, MSH-7 `occurred_at` with its offset and as many
fraction digits as its microseconds need, MSH-10 the event id, PID-3 the patient id,
the referral id as a placer EI with an empty namespace (RF1-6, SCH-26, ZRT-2), and
ZRT-1 `Y`/`N` for `in_network` where the type has it. Text is escaped (HL7 escapes for
the delimiters, `\\Xhh\\` for control characters); UTF-8, said in MSH-18.

The event's `source` and `event_id` are not carried as such: the adapter sets the
source by message (REF/RRI `referral_platform`, SIU `scheduling`, ADT `ehr`) and
derives the event id from the message (the same event encodes to the same bytes, so
to the same derived id).

Limits, as the adapter reads HL7 v2: a value is trimmed of whitespace where it ends a
segment; an empty value or `""` (the HL7 null) reads as absent. report.received,
patient.outreach, patient.responded, patient.feedback and care.out_of_network have no
message here: `encode` returns None for them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from schemas.events import MAX_TIMESTAMP, parse_event

_PRIORITY = {"stat": "S", "urgent": "A", "routine": "R"}
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def encode(event: dict[str, Any], facility: str) -> bytes | None:
    """One canonical event dict as an HL7 v2 message (ER7, `\\r` between segments), or
    None for a type HL7 v2 does not carry here. Raises EventRejected for an invalid event."""
    e = parse_event(json.dumps(event).encode("utf-8"), MAX_TIMESTAMP)
    data = e.data
    kind = e.type
    rid = _esc(e.referral_id)
    network = {1: "Y" if getattr(data, "in_network", True) else "N"}
    body: list[str]
    if kind == "referral.created":
        trigger = "REF^I12^REF_I12"
        rf1 = {2: _PRIORITY[data.priority.value], 3: _esc(data.specialty), 6: rid}
        body = [_segment("RF1", _with_reason(rf1, data.reason))]
        for role, provider in (
            ("RP", data.referring_provider_id),
            ("RT", data.referred_to_provider_id),
        ):
            if provider is not None:
                body.append(_segment("PRD", {1: role, 7: _esc(provider)}))
        body += [_pid(e.patient_id), _segment("ZRT", network)]
    elif kind == "referral.routed":
        trigger = "REF^I13^REF_I12"
        provider = data.referred_to_provider_id
        body = [
            _segment("RF1", {6: rid}),
            _segment("PRD", {1: "RT", 7: _esc(provider) if provider is not None else ""}),
            _pid(e.patient_id),
            _segment("ZRT", network),
        ]
    elif kind in ("referral.accepted", "referral.declined"):
        trigger = "RRI^I12^RRI_I12"
        status = "A" if kind == "referral.accepted" else "R"
        rf1 = {1: status, 6: rid}
        body = [_segment("RF1", _with_reason(rf1, getattr(data, "reason", None)))]
        body.append(_pid(e.patient_id))
    elif kind == "referral.cancelled":
        trigger = "REF^I14^REF_I12"
        body = [_segment("RF1", _with_reason({6: rid}, data.reason)), _pid(e.patient_id)]
    elif kind in ("appointment.scheduled", "appointment.rescheduled"):
        trigger = "SIU^S12^SIU_S12" if kind == "appointment.scheduled" else "SIU^S13^SIU_S12"
        sch = {2: _esc(data.appointment_id), 11: "^^^" + _ts(data.appointment_at), 26: rid}
        body = [_segment("SCH", sch), _pid(e.patient_id), "RGS|1", _segment("ZRT", network)]
    elif kind == "appointment.cancelled":
        trigger = "SIU^S15^SIU_S12"
        sch = {2: _esc(data.appointment_id), 26: rid}
        if data.reason:
            sch[6] = "^" + _esc(data.reason)
        body = [_segment("SCH", sch), _pid(e.patient_id), "RGS|1"]
    elif kind == "appointment.no_show":
        trigger = "SIU^S26^SIU_S12"
        sch = {2: _esc(data.appointment_id), 26: rid}
        body = [_segment("SCH", sch), _pid(e.patient_id), "RGS|1"]
    elif kind == "appointment.completed":
        trigger = "ADT^A03^ADT_A03"
        when = _ts(e.occurred_at)
        body = [
            _segment("EVN", {1: "A03", 2: when}),
            _pid(e.patient_id),
            _segment("PV1", {2: "O", 19: _esc(data.appointment_id), 45: when}),
            _segment("ZRT", {**network, 2: rid}),
        ]
    else:
        return None
    msh = {
        2: "^~\\&",
        3: "REFTRACK",
        4: _esc(facility),
        7: _ts(e.occurred_at),
        9: trigger,
        10: _esc(e.event_id),
        11: "P",
        12: "2.5.1",
        18: "UNICODE UTF-8",
    }
    header = "MSH|" + "|".join(msh.get(n, "") for n in range(2, 19))
    return ("\r".join([header, *body]) + "\r").encode("utf-8")


def _segment(name: str, fields: dict[int, str]) -> str:
    return name + "|" + "|".join(fields.get(n, "") for n in range(1, max(fields) + 1))


def _pid(patient_id: str | None) -> str:
    return _segment("PID", {1: "1", 3: _esc(patient_id)}) if patient_id else "PID|1"


def _with_reason(rf1: dict[int, str], reason: str | None) -> dict[int, str]:
    if reason:
        rf1[10] = "^" + _esc(reason)
    return rf1


def _esc(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\X{ord(ch):02X}\\")
        else:
            out.append(ch)
    return "".join(out)


def _ts(value: datetime) -> str:
    """HL7 DTM with the value's own offset; fraction digits only as many as needed."""
    text = (
        f"{value.year:04d}{value.month:02d}{value.day:02d}"
        f"{value.hour:02d}{value.minute:02d}{value.second:02d}"
    )
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
