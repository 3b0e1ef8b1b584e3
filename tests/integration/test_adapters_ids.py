"""Raw sources in a real worker: one referral known by the EHR's placer id (FHIR) and the
scheduling system's filler id (HL7 v2) is one referral, even when the scheduling message
comes first; rejected raw messages land in the DLQ with their code and without the
patient's identifiers."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Deployment, Worker, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

PLACER = "urn:oid:2.16.840.1.113883.19.1"
SOURCES = f"""
orgs:
  nw:
    timezone: America/New_York
    hl7v2_senders: [NWH]
    referral_id_system: "{PLACER}"
    alias_systems: [SCHED]
"""


def hl7_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def siu(trigger: str, control: str, at: datetime, appointment_at: datetime) -> bytes:
    """A scheduling message naming the referral only by the filler's order number."""
    status = {"S12": "Booked", "S26": "Noshow"}[trigger]
    segments = [
        f"MSH|^~\\&|SCHED|NWH|REFTRACK|NWH|{hl7_time(at)}||SIU^{trigger}^SIU_S12|{control}|P|2.5.1",
        f"SCH||A-55^SCHED|||||||30|min|^^30^{hl7_time(appointment_at)}|||||||||||||{status}||F-77^SCHED",
        "PID|1||MRN-884412^^^NWH^MR||DOE^JANE||19700101|F",
        f"AIS|1|A|CARDIO^Cardiology consult^L|{hl7_time(appointment_at)}",
    ]
    return "\r".join(segments).encode() + b"\r"


def service_request(at: datetime) -> bytes:
    return json.dumps(
        {
            "resourceType": "ServiceRequest",
            "id": "ref-1",
            "meta": {"tag": [{"system": "https://reftrack.dev/fhir/org", "code": "nw"}]},
            "identifier": [{"system": PLACER, "value": "R-1"}],
            "status": "active",
            "intent": "order",
            "priority": "urgent",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "3457005",
                            "display": "Patient referral",
                        }
                    ]
                }
            ],
            "performerType": {"text": "Cardiology"},
            "subject": {"identifier": {"system": "urn:mrn", "value": "MRN-884412"}},
            "authoredOn": at.isoformat(),
        }
    ).encode()


def accepted_task(at: datetime) -> bytes:
    """The receiving side accepts: its Task names the placer's id and its own (filler)."""
    return json.dumps(
        {
            "resourceType": "Task",
            "id": "task-1",
            "meta": {"tag": [{"system": "https://reftrack.dev/fhir/org", "code": "nw"}]},
            "identifier": [{"system": "SCHED", "value": "F-77"}],
            "basedOn": [{"identifier": {"system": PLACER, "value": "R-1"}}],
            "status": "accepted",
            "intent": "order",
            "for": {"identifier": {"system": "urn:mrn", "value": "MRN-884412"}},
            "lastModified": at.isoformat(),
        }
    ).encode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_placer_and_filler_ids_meet_in_one_referral(deployment: Deployment, tmp_path: Path) -> None:
    sources = tmp_path / "sources.yaml"
    sources.write_text(SOURCES)
    deployment.extra_env["REFTRACK_SOURCES_FILE"] = str(sources)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    hl7_topic = f"{deployment.prefix}.raw.hl7v2.v1"
    fhir_topic = f"{deployment.prefix}.raw.fhir.v1"
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        # 1. the booking arrives first, named only by the filler's number: it waits
        produce(
            deployment.bootstrap,
            hl7_topic,
            [(None, siu("S12", "C-1", t0 + timedelta(hours=5), t0 + timedelta(days=2)))],
        )
        wait_for(
            lambda: metric(worker.get("/metrics")[1], "reftrack_adapter_parked_events_total") == 1,
            60,
            what="the booking parked",
        )
        assert worker.query("SELECT count() AS n FROM referral_status")[0]["n"] == 0
        # 2. the EHR's referral, then 3. the Task that carries both numbers
        produce(deployment.bootstrap, fhir_topic, [(None, service_request(t0))])
        produce(deployment.bootstrap, fhir_topic, [(None, accepted_task(t0 + timedelta(hours=1)))])
        # 4. a no-show named by the filler's number, now known
        produce(
            deployment.bootstrap,
            hl7_topic,
            [(None, siu("S26", "C-2", t0 + timedelta(days=2, hours=1), t0 + timedelta(days=2)))],
        )

        def referral() -> dict[str, Any] | None:
            rows = worker.query("SELECT * FROM referral_status")
            return rows[0] if len(rows) == 1 and rows[0]["no_shows"] == 1 else None

        row = wait_for(referral, 90, what="one referral with the no-show")
        assert (row["org_id"], row["referral_id"]) == ("nw", "R-1")
        assert row["priority"] == "urgent" and row["specialty"] == "cardiology"
        assert row["routed_at"] is not None  # accepted
        assert row["scheduled_at"] is not None  # the parked booking, released
        assert row["version"] == 4
        metrics = worker.get("/metrics")[1]
        # the booking waited and was released (the no-show may have waited too: its link
        # travels through another agent)
        parked = metric(metrics, "reftrack_adapter_parked_events_total")
        assert parked >= 1
        assert metric(metrics, "reftrack_adapter_released_events_total") == parked
        assert "MRN-884412" not in metrics
        assert not worker.query("SELECT * FROM referral_status WHERE referral_id = 'F-77'")
    finally:
        worker.stop()


def test_rejected_raw_messages_reach_the_dlq_without_patient_identifiers(
    deployment: Deployment,
) -> None:
    worker = Worker(deployment)
    adt_a08 = (
        b"MSH|^~\\&|REGADT|NWH|REFTRACK|NWH|20250311100000||ADT^A08^ADT_A01|C-9|P|2.5.1\r"
        b"PID|||MRN-884412^^^NWH^MR||DOE^JANE||19700101\r"
    )
    no_org = json.dumps(
        {
            "resourceType": "ServiceRequest",
            "identifier": [{"value": "R-9"}],
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/MRN-884412", "display": "Jane Doe"},
            "performerType": {"text": "cardiology"},
            "authoredOn": "2025-03-01T10:00:00Z",
        }
    ).encode()
    twilio_unknown = json.dumps(
        {
            "provider": "twilio",
            "received_at": "2025-03-01T10:00:00Z",
            "params": {"referral_id": "R-9", "org_id": "nw"},
            "body": {"MessageSid": "SM1", "MessageStatus": "exploded", "To": "+15558675310"},
        }
    ).encode()
    claim_no_referral = json.dumps(
        {
            "kind": "claim",
            "claim_id": "C-1",
            "org_id": "nw",
            "service_date": "2025-03-01",
            "in_network": False,
            "patient_id": "MRN-884412",
        }
    ).encode()
    try:
        worker.wait_ready()
        sent = {
            "hl7v2": adt_a08,
            "fhir": no_org,
            "comms": twilio_unknown,
            "claims": claim_no_referral,
        }
        for kind, raw in sent.items():
            produce(deployment.bootstrap, f"{deployment.prefix}.raw.{kind}.v1", [(None, raw)])
        worker.wait_accounted(len(sent))
        records = [
            json.loads(m.value)
            for m in read_topic(deployment.bootstrap, f"{deployment.prefix}.dlq.v1")
        ]
        codes = {r["source_topic"].split(".")[-2]: r["error_code"] for r in records}
        assert codes == {
            "hl7v2": "unsupported_message",
            "fhir": "unknown_org",
            "comms": "unmapped_code",
            "claims": "missing_referral_id",
        }
        for record in records:
            original = base64.b64decode(record["original_base64"])
            assert b"MRN-884412" not in original, record["source_topic"]
            assert b"DOE" not in original and b"Jane Doe" not in original
            assert b"+15558675310" not in original
            assert record["patient_id_pseudonymized"] is True
        assert "MRN-884412" not in worker.logs()
    finally:
        worker.stop()
