"""The pipeline end to end on real components: embedded broker, a real worker process,
chDB. A known set of events goes in shuffled, duplicated, with null and wrong keys and
some invalid messages; the exact `referral_status` rows must come out, every message
must be accounted for, and no raw patient id may appear anywhere the pipeline writes."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from tests.integration.harness import Deployment, Worker, read_topic

pytestmark = pytest.mark.integration

PATIENTS = ["MRN-900001", "MRN-900002", "MRN-900003", "MRN-900004", "MRN-900005"]


def ev(
    eid: str,
    org: str,
    ref: str,
    type_: str,
    at: str,
    source: str = "ehr",
    patient: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": eid,
        "referral_id": ref,
        "org_id": org,
        "type": type_,
        "occurred_at": at,
        "source": source,
        "data": data,
    }
    if patient:
        doc["patient_id"] = patient
    return doc


VALID = [
    # acme/R-1: the whole journey, loop closed.
    ev(
        "a1",
        "acme",
        "R-1",
        "referral.created",
        "2025-01-06T09:00:00-05:00",
        patient=PATIENTS[0],
        priority="routine",
        specialty="cardiology",
    ),
    ev("a2", "acme", "R-1", "referral.accepted", "2025-01-07T09:00:00-05:00", "referral_platform"),
    ev("a3", "acme", "R-1", "patient.outreach", "2025-01-07T10:00:00Z", "comms", channel="sms"),
    ev("a4", "acme", "R-1", "patient.outreach", "2025-01-08T10:00:00Z", "comms", channel="phone"),
    ev("a5", "acme", "R-1", "patient.responded", "2025-01-08T15:00:00Z", "comms", channel="phone"),
    ev(
        "a6",
        "acme",
        "R-1",
        "appointment.scheduled",
        "2025-01-09T15:00:00Z",
        "scheduling",
        appointment_id="AP-1",
        appointment_at="2025-01-20T09:00:00-05:00",
    ),
    ev(
        "a7",
        "acme",
        "R-1",
        "appointment.completed",
        "2025-01-20T15:00:00Z",
        "scheduling",
        appointment_id="AP-1",
    ),
    ev("a8", "acme", "R-1", "report.received", "2025-01-22T15:00:00Z"),
    ev("a9", "acme", "R-1", "patient.feedback", "2025-01-23T08:30:00.250000Z", "comms", score=4),
    # acme/R-2: routed, then declined.
    ev(
        "b1",
        "acme",
        "R-2",
        "referral.created",
        "2025-02-01T10:00:00Z",
        patient=PATIENTS[1],
        priority="urgent",
        specialty="neurology",
    ),
    ev(
        "b2", "acme", "R-2", "referral.routed", "2025-02-01T12:00:00Z", referred_to_provider_id="D7"
    ),
    ev("b3", "acme", "R-2", "referral.declined", "2025-02-02T09:00:00Z", reason="capacity"),
    # acme/R-3: cancelled before being seen.
    ev(
        "c1",
        "acme",
        "R-3",
        "referral.created",
        "2025-02-03T08:00:00Z",
        priority="stat",
        specialty="oncology",
    ),
    ev("c2", "acme", "R-3", "referral.cancelled", "2025-02-03T09:00:00Z"),
    # acme/R-4: seen out of network: leaked.
    ev(
        "d1",
        "acme",
        "R-4",
        "referral.created",
        "2025-02-05T08:00:00+01:00",
        priority="routine",
        specialty="orthopedics",
    ),
    ev(
        "d2",
        "acme",
        "R-4",
        "appointment.scheduled",
        "2025-02-06T08:00:00Z",
        "scheduling",
        appointment_id="AP-4",
        appointment_at="2025-02-10T08:00:00Z",
    ),
    ev(
        "d3",
        "acme",
        "R-4",
        "appointment.completed",
        "2025-02-10T09:00:00Z",
        "scheduling",
        appointment_id="AP-4",
        in_network=False,
    ),
    # acme/R-5: scheduled, then a no-show nobody rebooked.
    ev(
        "e1",
        "acme",
        "R-5",
        "referral.created",
        "2025-03-01T10:00:00Z",
        patient=PATIENTS[2],
        priority="routine",
        specialty="dermatology",
    ),
    ev("e2", "acme", "R-5", "referral.routed", "2025-03-01T11:00:00Z"),
    ev(
        "e3",
        "acme",
        "R-5",
        "appointment.scheduled",
        "2025-03-02T10:00:00Z",
        "scheduling",
        appointment_id="AP-5",
        appointment_at="2025-03-05T10:00:00Z",
    ),
    ev(
        "e4",
        "acme",
        "R-5",
        "appointment.no_show",
        "2025-03-05T10:30:00Z",
        "scheduling",
        appointment_id="AP-5",
    ),
    # acme/R-6: events whose referral.created never came: orphan.
    ev("f1", "acme", "R-6", "referral.accepted", "2025-03-03T10:00:00Z", patient=PATIENTS[3]),
    ev("f2", "acme", "R-6", "patient.outreach", "2025-03-03T11:00:00Z", "comms", channel="letter"),
    # acme/R-7: just created, long ago: overdue on routing and scheduling.
    ev(
        "g1",
        "acme",
        "R-7",
        "referral.created",
        "2025-03-10T10:00:00Z",
        priority="routine",
        specialty="cardiology",
    ),
    # bayview/R-1: same referral id, another health system: another referral.
    ev(
        "h1",
        "bayview",
        "R-1",
        "referral.created",
        "2025-03-11T10:00:00-08:00",
        "manual",
        patient=PATIENTS[0],
        priority="stat",
        specialty="cardiology",
    ),
]

INVALID: list[tuple[bytes | None, str]] = [
    (
        json.dumps(
            ev(
                "x1",
                "acme",
                "R-9",
                "referral.created",
                "2025-03-01T10:00:00",
                patient=PATIENTS[4],
                priority="routine",
                specialty="x",
            )
        ).encode(),
        "naive_timestamp",
    ),
    (
        json.dumps(
            ev(
                "x2",
                "acme",
                "R-9",
                "referral.teleported",
                "2025-03-01T10:00:00Z",
                patient=PATIENTS[4],
            )
        ).encode(),
        "unknown_type",
    ),
    (b'{"event_id": "x3", "referral_id": ', "invalid_json"),
    (
        json.dumps(
            ev("x4", "acme", "R-9", "referral.created", "2025-03-01T10:00:00Z", specialty="x")
        ).encode(),
        "missing_data_field",
    ),
    (
        json.dumps(
            ev(
                "x5",
                "acme",
                "R-9",
                "referral.created",
                "2025-03-01T10:00:00Z",
                priority="routine",
                specialty="x",
                reason="y" * 70_000,
            )
        ).encode(),
        "too_large",
    ),
    (
        json.dumps(ev("x6", "acme", "R-9", "report.received", "2999-01-01T00:00:00Z")).encode(),
        "timestamp_out_of_range",
    ),
    (
        json.dumps(ev("x7", "acme", "R-9", "report.received", "2099-01-01T00:00:00Z")).encode(),
        "future_timestamp",
    ),
    (b"\xff\xfe\x00garbage", "invalid_encoding"),
    (None, "invalid_json"),
]

# A referral's row before anything has happened to it; each expected row below says only
# what differs from this.
NOTHING_YET: dict[str, Any] = dict(
    routed_at=None,
    contacted_at=None,
    scheduled_at=None,
    seen_at=None,
    closed_at=None,
    appointment_at=None,
    outreach_attempts=0,
    no_shows=0,
    leaked=False,
    flags=[],
)
OVERDUE = ["routing_overdue", "scheduling_overdue"]


def row(**fields: Any) -> dict[str, Any]:
    return {**NOTHING_YET, **fields}


EXPECTED = {
    ("acme", "R-1"): row(
        status="closed",
        priority="routine",
        specialty="cardiology",
        created_at="2025-01-06 14:00:00.000000",
        routed_at="2025-01-07 14:00:00.000000",
        contacted_at="2025-01-08 15:00:00.000000",
        scheduled_at="2025-01-09 15:00:00.000000",
        seen_at="2025-01-20 15:00:00.000000",
        closed_at="2025-01-22 15:00:00.000000",
        appointment_at="2025-01-20 14:00:00.000000",
        outreach_attempts=2,
        updated_at="2025-01-23 08:30:00.250000",
        version=9,
    ),
    ("acme", "R-2"): row(
        status="declined",
        priority="urgent",
        specialty="neurology",
        created_at="2025-02-01 10:00:00.000000",
        routed_at="2025-02-01 12:00:00.000000",
        updated_at="2025-02-02 09:00:00.000000",
        version=3,
    ),
    ("acme", "R-3"): row(
        status="cancelled",
        priority="stat",
        specialty="oncology",
        created_at="2025-02-03 08:00:00.000000",
        updated_at="2025-02-03 09:00:00.000000",
        version=2,
    ),
    ("acme", "R-4"): row(
        status="leaked",
        priority="routine",
        specialty="orthopedics",
        created_at="2025-02-05 07:00:00.000000",
        scheduled_at="2025-02-06 08:00:00.000000",
        seen_at="2025-02-10 09:00:00.000000",
        appointment_at="2025-02-10 08:00:00.000000",
        leaked=True,
        updated_at="2025-02-10 09:00:00.000000",
        version=3,
    ),
    ("acme", "R-5"): row(
        status="scheduled",
        priority="routine",
        specialty="dermatology",
        created_at="2025-03-01 10:00:00.000000",
        routed_at="2025-03-01 11:00:00.000000",
        scheduled_at="2025-03-02 10:00:00.000000",
        appointment_at="2025-03-05 10:00:00.000000",
        no_shows=1,
        flags=["no_show_not_rescheduled"],
        updated_at="2025-03-05 10:30:00.000000",
        version=4,
    ),
    ("acme", "R-6"): row(
        status="orphan",
        priority=None,
        specialty=None,
        created_at=None,
        routed_at="2025-03-03 10:00:00.000000",
        outreach_attempts=1,
        updated_at="2025-03-03 11:00:00.000000",
        version=2,
    ),
    ("acme", "R-7"): row(
        status="created",
        priority="routine",
        specialty="cardiology",
        created_at="2025-03-10 10:00:00.000000",
        flags=OVERDUE,
        updated_at="2025-03-10 10:00:00.000000",
        version=1,
    ),
    ("bayview", "R-1"): row(
        status="created",
        priority="stat",
        specialty="cardiology",
        created_at="2025-03-11 18:00:00.000000",
        flags=OVERDUE,
        updated_at="2025-03-11 18:00:00.000000",
        version=1,
    ),
}
TIME_COLUMNS = [
    "created_at",
    "routed_at",
    "contacted_at",
    "scheduled_at",
    "seen_at",
    "closed_at",
    "appointment_at",
    "updated_at",
]


def build_messages(seed: int = 11) -> tuple[list[tuple[bytes | None, bytes | None]], int]:
    """The valid events (shuffled, ~1/3 duplicated, keys null/wrong/right) and the invalid
    messages; returns the messages and how many are duplicates."""
    rng = random.Random(seed)
    messages: list[tuple[bytes | None, bytes | None]] = []
    duplicates = 0
    for i, doc in enumerate(VALID):
        value = json.dumps(doc).encode()
        right = doc["referral_id"].encode()
        key = [right, None, b"some-other-referral", f"k{i}".encode()][i % 4]
        messages.append((key, value))
        if rng.random() < 0.35:
            messages.append((rng.choice([right, None]), value))
            duplicates += 1
    for value, _ in INVALID:
        messages.append((b"null-value" if value is None else None, value))
    rng.shuffle(messages)
    return messages, duplicates


def select_status(w: Worker) -> dict[tuple[str, str], dict[str, Any]]:
    times = ", ".join(f"if(isNull({c}), NULL, toString({c})) AS {c}" for c in TIME_COLUMNS)
    rows = w.query(
        f"SELECT org_id, referral_id, status, priority, specialty, {times}, outreach_attempts, "
        "no_shows, leaked, flags, version FROM referral_status ORDER BY org_id, referral_id"
    )
    return {(r.pop("org_id"), r.pop("referral_id")): r for r in rows}


def test_known_events_give_exact_referral_status(deployment: Deployment) -> None:
    from tests.integration.harness import produce

    messages, duplicates = build_messages()
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(deployment.bootstrap, deployment.events_topic, messages)
        counts = worker.wait_accounted(len(messages))
        assert counts == {
            **counts,
            "consumed": len(messages),
            "processed": len(VALID),
            "duplicates": duplicates,
            "dead_lettered": len(INVALID),
            "accounted": len(messages),
        }

        def landed() -> dict[tuple[str, str], dict[str, Any]] | None:
            rows = select_status(worker)
            versions = {k: r["version"] for k, r in rows.items()}
            want = {k: v["version"] for k, v in EXPECTED.items()}
            return rows if versions == want else None

        from tests.integration.harness import wait_for

        rows = wait_for(landed, 60, what="all referral_status rows at their final version")
        for key, expected in EXPECTED.items():
            got = {k: rows[key][k] for k in expected}
            got["leaked"] = bool(got["leaked"])
            assert got == expected, key
        assert set(rows) == set(EXPECTED)

        # DLQ: one record per invalid message, with its code and where it came from.
        dlq = read_topic(deployment.bootstrap, f"{deployment.prefix}.dlq.v1")
        records = [json.loads(m.value) for m in dlq]
        assert sorted(r["error_code"] for r in records) == sorted(code for _, code in INVALID)
        for record in records:
            assert record["source_topic"] == deployment.events_topic
            assert record["source_offset"] >= 0
            assert record["error_message"]
        originals = {base64.b64decode(r["original_base64"]) for r in records}
        assert b"\xff\xfe\x00garbage" in originals  # kept byte-exact: nothing lost

        # PHI: no raw patient id on any topic the pipeline writes, in ClickHouse or logs.
        written = [f"{deployment.prefix}.{t}.v1" for t in ("status", "dlq", "tracked")]
        blobs = [m.value or b"" for t in written for m in read_topic(deployment.bootstrap, t)]
        refs = worker.query("SELECT groupArray(patient_ref) AS refs FROM referral_status")
        blobs.append(json.dumps(refs).encode())
        blobs.append(worker.logs().encode())
        for patient in PATIENTS:
            assert not any(patient.encode() in blob for blob in blobs), patient
        # ... and pseudonyms are there instead: one per (org, patient), so the same MRN at
        # acme and bayview gives two.
        assert len({r for r in refs[0]["refs"] if r}) == 5
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()
