"""PHI audit (SPEC §9): simulated traffic goes through the whole pipeline, canonical
events and the raw upstream formats (FHIR, HL7 v2, messaging webhooks, claims) with the
same patients, valid and invalid; then every place data lands is searched for a raw
patient id: every ClickHouse table and view, every topic reftrack writes (Faust's
changelogs included), the worker's log at debug level, every HTTP endpoint it serves and
the files of its local state. None may hold one; pseudonyms must be there instead.

The DLQ keeps each rejected message inside `original_base64` with every `patient_id`
value pseudonymized (docs/events.md, "patient_id in DLQ records"): arrays, cut-off text
and invalid UTF-8 included. The audit decodes every `original_base64` and searches it
like everything else, without exceptions."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.errors import EventRejected
from schemas.events import parse_event
from streams.config import Topics
from streams.simulator import SimConfig, SimMessage, canonical_events, generate
from streams.upstream.mix import ENCODERS, render, sources_yaml
from tests.integration.harness import Deployment, Worker, produce, wait_for

pytestmark = pytest.mark.integration

CANON, MIXED = "canon", "mixed"  # the same referrals and patients, told two ways
RAW_KINDS = ("fhir", "hl7v2", "comms", "claims")
# Every patient id the simulator makes has this shape (checked below), so one pattern
# finds any of them, and any id-like token the pipeline should not write at all.
ID_PATTERN = re.compile(rb"MRN-\d+")
SIM_ID = re.compile(r"MRN-\d{6}")
# A third org whose referrals have a placer id (FHIR) and a filler id (HL7 v2 scheduling):
# a booking named only by the filler id is parked on the id-links topic and table until
# a Task links the two ids, so that path is audited too.
ALIASED, PLACER = "aliased", "urn:oid:2.16.840.1.113883.19.1"
ALIAS_SOURCES = f"""  {ALIASED}:
    hl7v2_senders: [ALH]
    referral_id_system: "{PLACER}"
    alias_systems: [SCHED]
"""
DASHBOARD_SQL = (  # what the live page (streams/static/index.html) asks /api/query
    "SELECT org_id, status, count() AS n FROM referral_status GROUP BY org_id, status",
    "SELECT countIf(length(flags) > 0) AS at_risk FROM referral_status",
    "SELECT org_id, arrayJoin(flags) AS flag, count() AS n FROM referral_status "
    "GROUP BY org_id, flag",
)


# -- the traffic -------------------------------------------------------------------------


@dataclass
class Traffic:
    canonical: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    raw: dict[str, list[bytes]] = field(default_factory=dict)  # adapter kind -> messages
    patient_ids: set[str] = field(default_factory=set)
    referrals: set[str] = field(default_factory=set)
    invalid: int = 0  # messages that must be dead-lettered
    formats: Counter[str] = field(default_factory=Counter)  # format -> messages with an id

    @property
    def total(self) -> int:
        return len(self.canonical) + sum(len(m) for m in self.raw.values())


def _mutations(name: str, raw: bytes) -> Iterator[bytes]:
    """Invalid copies of a rendered raw message that the adapter can still parse, so its
    own redaction (not the byte-exact fallback) makes the DLQ copy."""
    if name == "hl7v2":
        segments = raw.split(b"\r")
        for index, value in ((8, b"ORU^R01^ORU_R01"), (6, b"2025XX")):  # MSH-9, MSH-7
            msh = segments[0].split(b"|")
            msh[index] = value
            yield b"\r".join([b"|".join(msh), *segments[1:]])
        return
    doc = json.loads(raw)
    if name == "fhir":
        yield json.dumps({**doc, "resourceType": "Observation"}).encode()  # unsupported
        yield json.dumps({**doc, "status": "bogus-status"}).encode()  # unmapped code
    elif name == "claims":
        yield json.dumps({k: v for k, v in doc.items() if k != "referral_number"}).encode()
        yield json.dumps({**doc, "service_date": "yesterday"}).encode()
    elif "params" in doc:  # a Twilio callback
        yield json.dumps({**doc, "received_at": "yesterday"}).encode()
        params = {k: v for k, v in doc["params"].items() if k != "referral_id"}
        yield json.dumps({**doc, "params": params}).encode()
    else:  # a generic messaging webhook
        yield json.dumps({k: v for k, v in doc.items() if k != "referral_id"}).encode()
        yield json.dumps({**doc, "occurred_at": "yesterday"}).encode()


def _rejected(value: bytes, now: datetime) -> bool:
    try:
        parse_event(value, now)
    except EventRejected:
        return True
    return False


def build_traffic() -> Traffic:
    now = datetime.now(UTC)
    config = SimConfig(
        seed=41,
        orgs=(CANON,),
        referrals=300,
        start=now - timedelta(days=75),
        span=timedelta(days=60),
        invalid_rate=0.05,
    )
    messages: list[SimMessage] = generate(config, now=now - timedelta(days=15))
    # The simulator's "future" timestamps are future for its own `now` (15 days back):
    # those already past by the wall clock would be accepted, and the mixed copy (built
    # from the valid events only) would miss them. Leave them out.
    messages = [m for m in messages if m.valid != _rejected(m.value, now)]
    out = Traffic(canonical=[(m.key, m.value) for m in messages])
    out.invalid = sum(not m.valid for m in messages)
    docs = canonical_events(messages)
    out.referrals = {d["referral_id"] for d in docs}
    out.patient_ids = {d["patient_id"] for d in docs if d.get("patient_id")}

    # The MIXED copy: each event in a raw format that can express it, else canonical.
    mutated: Counter[str] = Counter()
    for doc in docs:
        copy = {**doc, "org_id": MIXED}
        rendered = render(copy)
        if rendered is None:
            out.canonical.append((None, json.dumps(copy).encode()))
            continue
        name, kind, raw = rendered
        out.raw.setdefault(kind, []).append(raw)
        if doc.get("patient_id") and doc["patient_id"].encode() in raw:
            out.formats[name] += 1
            if mutated[name] < 3:  # a few invalid ones per format, for the adapters' DLQ
                mutated[name] += 1
                for bad in _mutations(name, raw):
                    out.raw[kind].append(bad)
                    out.invalid += 1
    return out


def _hl7_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def aliased_booking(patient_id: str, at: datetime) -> bytes:
    """A scheduling message naming its referral only by the filler's order number."""
    when = _hl7_time(at + timedelta(days=2))
    segments = [
        f"MSH|^~\\&|SCHED|ALH|REFTRACK|ALH|{_hl7_time(at)}||SIU^S12^SIU_S12|AL-1|P|2.5.1",
        f"SCH||A-AL1^SCHED|||||||30|min|^^30^{when}|||||||||||||Booked||F-AL1^SCHED",
        f"PID|1||{patient_id}^^^ALH^MR||DOE^JANE||19700101|F",
        f"AIS|1|A|CARDIO^Cardiology consult^L|{when}",
    ]
    return "\r".join(segments).encode() + b"\r"


def aliased_referral(patient_id: str, at: datetime) -> list[bytes]:
    """The EHR's referral (placer id), then the Task that links the filler's id to it."""
    tag = {"tag": [{"system": "https://reftrack.dev/fhir/org", "code": ALIASED}]}
    subject = {"identifier": {"system": "urn:mrn", "value": patient_id}}
    referral = {
        "resourceType": "ServiceRequest",
        "id": "al-ref-1",
        "meta": tag,
        "identifier": [{"system": PLACER, "value": "R-AL1"}],
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "performerType": {"text": "Cardiology"},
        "subject": subject,
        "authoredOn": (at - timedelta(hours=2)).isoformat(),
    }
    task = {
        "resourceType": "Task",
        "id": "al-task-1",
        "meta": tag,
        "identifier": [{"system": "SCHED", "value": "F-AL1"}],
        "basedOn": [{"identifier": {"system": PLACER, "value": "R-AL1"}}],
        "status": "accepted",
        "intent": "order",
        "for": subject,
        "lastModified": (at - timedelta(hours=1)).isoformat(),
    }
    return [json.dumps(referral).encode(), json.dumps(task).encode()]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# -- reading what landed -----------------------------------------------------------------


async def _read_topics(bootstrap: str, topics: list[str], timeout: float) -> dict[str, list[Any]]:
    """Every message of each topic, from the beginning to the end offsets of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, list[Any]] = {t: [] for t in topics}
        deadline = time.monotonic() + timeout
        while not all([await consumer.position(tp) >= ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, "timed out reading the topics"
            for tp, batch in (await consumer.getmany(timeout_ms=300)).items():
                out[tp.topic].extend(batch)
        return out
    finally:
        await consumer.stop()


async def _list_topics(bootstrap: str) -> set[str]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


def _post_query(worker: Worker, sql: str) -> bytes:
    """The raw response body of the worker's read-only query API."""
    request = urllib.request.Request(
        worker.url + "/api/query",
        data=json.dumps({"sql": sql, "max_rows": 1_000_000}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
    assert not json.loads(body)["truncated"], sql
    return body


def _get(worker: Worker, path: str) -> bytes:
    with urllib.request.urlopen(worker.url + path, timeout=10) as response:
        body: bytes = response.read()
        assert response.status == 200, (path, body[:300])
    return body


# -- the audit ---------------------------------------------------------------------------


@dataclass
class Audit:
    ids: set[str]
    findings: list[str] = field(default_factory=list)
    places: Counter[str] = field(default_factory=Counter)  # place -> bytes searched

    def search(self, place: str, blob: bytes) -> bool:
        """Record every id-like token in `blob` as a finding; True when there was one."""
        self.places[place] += len(blob)
        hit = False
        for match in ID_PATTERN.finditer(blob):
            hit = True
            token = match.group().decode()
            known = token in self.ids
            context = blob[max(0, match.start() - 80) : match.end() + 80]
            what = "raw patient id" if known else "id-like token (not a known patient id)"
            self.findings.append(f"{place}: {what} {token!r} in ...{context!r}...")
        return hit

    def message(self) -> str:
        shown = "\n".join(f"  - {f}" for f in self.findings[:25])
        more = len(self.findings) - 25
        return f"{len(self.findings)} raw patient id(s) where none may be:\n{shown}" + (
            f"\n  ... and {more} more" if more > 0 else ""
        )


def audit_topic(audit: Audit, topic: str, records: list[Any]) -> None:
    for record in records:
        where = f"topic {topic} partition {record.partition} offset {record.offset}"
        audit.search(f"{where} key", record.key or b"")
        audit.search(f"{where} value", record.value or b"")
        for name, value in record.headers or ():
            audit.search(f"{where} header {name}", name.encode() + b"=" + (value or b""))
        if not topic.endswith(".dlq.v1"):
            continue
        # The DLQ keeps the original message base64-encoded: search it decoded.
        doc = json.loads(record.value)
        original = base64.b64decode(doc["original_base64"])
        where = f"{where} ({doc['error_code']}, from {doc['source_topic']}) original_base64"
        audit.search(where, original)


def test_no_raw_patient_id_anywhere_the_pipeline_writes(
    deployment: Deployment, tmp_path: Path
) -> None:
    started = time.monotonic()
    traffic = build_traffic()
    ids = traffic.patient_ids
    topics = Topics(deployment.prefix)

    # The search is meaningful: many ids, all of one shape, in every input format.
    assert len(ids) >= 200, len(ids)
    assert all(SIM_ID.fullmatch(i) for i in ids), sorted(ids)[:5]
    alias_patient = sorted(ids)[0]
    alias_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    booking = aliased_booking(alias_patient, alias_at)
    linking = aliased_referral(alias_patient, alias_at)
    inputs = [v for _, v in traffic.canonical] + [m for ms in traffic.raw.values() for m in ms]
    inputs += [booking, *linking]
    in_input = {m.group().decode() for v in inputs for m in ID_PATTERN.finditer(v)}
    assert in_input == ids  # every id is in the input, and no other id-like token is
    assert all(traffic.formats[name] >= 5 for name in ENCODERS), traffic.formats
    assert traffic.invalid >= 40, traffic.invalid

    sources = tmp_path / "sources.yaml"
    sources.write_text(sources_yaml([MIXED]) + ALIAS_SOURCES)
    deployment.extra_env.update(
        {"REFTRACK_SOURCES_FILE": str(sources), "REFTRACK_LOG_LEVEL": "debug"}
    )
    audit = Audit(ids)
    counts: dict[str, int] = {}
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        # the booking first, so it waits for its link
        produce(deployment.bootstrap, topics.raw["hl7v2"], [(None, booking)])
        wait_for(
            lambda: metric(worker.get("/metrics")[1], "reftrack_adapter_parked_events_total"),
            60,
            what="the aliased booking parked",
        )
        produce(deployment.bootstrap, topics.events, traffic.canonical)
        for kind, messages in traffic.raw.items():
            produce(deployment.bootstrap, topics.raw[kind], [(None, m) for m in messages])
        produce(deployment.bootstrap, topics.raw["fhir"], [(None, m) for m in linking])
        accounted = worker.wait_accounted(traffic.total + 3, timeout=120)
        assert accounted["dead_lettered"] == traffic.invalid, accounted

        def stored() -> bool:
            rows = worker.query(
                "SELECT org_id, count() AS n, sum(version) AS v FROM referral_status "
                "GROUP BY org_id"
            )
            by_org = {r["org_id"]: (r["n"], r["v"]) for r in rows}
            canon = by_org.get(CANON, (0, 0))
            return (
                canon[0] == len(traffic.referrals)
                and by_org.get(MIXED) == canon
                and by_org.get(ALIASED) == (1, 3)  # the parked booking released into it
            )

        wait_for(stored, 120, what="every org's referral_status rows at their final versions")

        def sinks_drained() -> bool:
            sinks = worker.pipeline()["sinks"]
            return all(s["rows_pending"] == 0 and not any(s["lag"].values()) for s in sinks)

        wait_for(sinks_drained, 60, what="every sink caught up and flushed")
        worker.wait_kpi_refreshed()

        # ClickHouse: every table and view of reftrack's database, every row and column.
        tables = worker.query(
            "SELECT name, engine FROM system.tables WHERE database = currentDatabase() "
            "ORDER BY name"
        )
        assert {"referral_state", "referral_status", "events", "alerts"} <= {
            t["name"] for t in tables
        }, tables
        for table in tables:
            body = _post_query(worker, f"SELECT * FROM `{table['name']}`")
            counts[f"clickhouse {table['name']}"] = len(json.loads(body)["rows"])
            audit.search(f"ClickHouse {table['engine']} {table['name']}", body)
        refs = worker.query(
            "SELECT count() AS n, countIf(patient_ref IS NOT NULL) AS with_ref, "
            "uniqExact(patient_ref) AS refs FROM referral_status"
        )[0]
        # pseudonyms did flow: nearly every referral names its patient (not orphans or
        # platform-only ones), one pseudonym per patient per org
        assert refs["with_ref"] >= 0.9 * refs["n"], refs
        assert refs["refs"] >= len(ids), refs

        # Every topic of this deployment except the inputs upstream systems write.
        on_broker = asyncio.run(_list_topics(deployment.bootstrap))
        ours = sorted(
            t for t in on_broker if t.startswith((f"{deployment.prefix}.", f"{deployment.app_id}-"))
        )
        inputs_topics = {topics.events, *topics.raw.values()}
        written = [t for t in ours if t not in inputs_topics]
        pipeline_topics = {topics.tracked, topics.status, topics.dlq, topics.alerts}
        assert pipeline_topics | {topics.rates, topics.idlinks} <= set(written), ours
        assert any("changelog" in t for t in written), ours
        read = asyncio.run(_read_topics(deployment.bootstrap, written, timeout=60))
        for topic, records in read.items():
            counts[f"topic {topic}"] = len(records)
            audit_topic(audit, topic, records)
        changelogs = [t for t in written if t.endswith("-changelog")]
        for topic in [*pipeline_topics, topics.rates, topics.idlinks, *changelogs]:
            assert read[topic], f"nothing on {topic}: the audit would pass vacuously"
        assert len(read[topics.dlq]) == traffic.invalid
        from_raw = [r for r in read[topics.dlq] if b".raw." in r.value]
        assert len(from_raw) >= 4 * len(RAW_KINDS), len(from_raw)

        # Every endpoint the worker serves (streams/web.py), the dashboard's API over the
        # whole period (and the timeline of some referrals), and its own queries.
        span = json.loads(_get(worker, "/api/filters"))
        window = f"from={span['date_min']}&to={span['date_max']}"
        paths = [
            "/",
            "/static/app.js",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/pipeline",
            "/api/filters",
            "/api/openapi.json",
            f"/api/kpis?{window}",
            f"/api/funnel?{window}",
            f"/api/stages?{window}",
            f"/api/rates?{window}",
            "/api/worklist?limit=2000",
            "/api/alerts?state=all&limit=1000",
        ]
        worklist = json.loads(_get(worker, "/api/worklist?limit=2000"))["rows"]
        assert worklist, "no at-risk referrals: the timeline audit would be empty"
        paths += [f"/api/referrals/{r['org_id']}/{r['referral_id']}" for r in worklist[:20]]
        for path in paths:
            body = _get(worker, path)
            key = f"http {path.split('?')[0]} bytes"
            counts[key] = counts.get(key, 0) + len(body)
            audit.search(f"GET {path}", body)
        assert b"patient_ref" not in _get(worker, paths[-1])
        assert b"reftrack_events_processed" in _get(worker, "/metrics")
        for sql in DASHBOARD_SQL:
            audit.search(f"POST /api/query {sql!r}", _post_query(worker, sql))
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()

    # The whole log, start-up to shutdown, at debug level; then the local state files.
    log = worker.log_path.read_bytes()
    assert log.count(b"\n") >= 10 and b'"level": "debug"' in log, log[-2000:]
    counts["log lines"] = log.count(b"\n")
    audit.search(f"worker log {worker.log_path.name}", log)
    files = [p for p in deployment.data_dir.rglob("*") if p.is_file() and p != worker.log_path]
    assert any("faust" in p.parts for p in files) and any("clickhouse" in p.parts for p in files)
    for state_file in files:
        audit.search(
            f"state file {state_file.relative_to(deployment.data_dir)}", state_file.read_bytes()
        )
    counts["state files"] = len(files)

    print(  # shown with -s: what the audit saw
        f"\nPHI audit of {len(ids)} patient ids, {traffic.total + 3} messages in, "
        f"{sum(audit.places.values()) / 1e6:.0f} MB searched, {time.monotonic() - started:.0f}s:\n"
        + "\n".join(f"  {k}: {v}" for k, v in sorted(counts.items()))
    )
    if audit.findings:
        pytest.fail(audit.message(), pytrace=False)
