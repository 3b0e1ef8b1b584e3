"""Raw sources end to end: the same referrals told once as canonical events and once as a
mix of raw FHIR, HL7 v2, messaging webhooks and claims must give the same
`referral_status`, stage durations and KPI rows. And a referral known by a placer id in
one system and a filler id in another is one referral, whichever message comes first."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streams.simulator import SimConfig, generate
from streams.upstream.mix import ENCODERS, render, sources_yaml
from tests.integration.harness import Deployment, Worker, produce, read_topic, wait_for

pytestmark = pytest.mark.integration

CANON, MIXED = "canon", "mixed"


def mixed_traffic(docs: list[dict[str, Any]]) -> tuple[dict[str, list[bytes]], dict[str, int]]:
    """Each event of the MIXED copy in one of the raw formats that can express it,
    canonical only when none can. Returns messages per topic kind and how many events
    went each way."""
    out: dict[str, list[bytes]] = {"canonical": []}
    used: dict[str, int] = {}
    for doc in docs:
        copy = {**doc, "org_id": MIXED}
        rendered = render(copy)
        if rendered is None:
            out["canonical"].append(json.dumps(copy).encode())
            used["canonical"] = used.get("canonical", 0) + 1
            continue
        name, kind, raw = rendered
        out.setdefault(kind, []).append(raw)
        used[name] = used.get(name, 0) + 1
    return out, used


def rows_by_referral(worker: Worker, org: str) -> dict[str, dict[str, Any]]:
    rows = worker.query(f"SELECT * FROM referral_status WHERE org_id = '{org}'")
    return {
        r["referral_id"]: {
            k: v for k, v in r.items() if k not in ("org_id", "patient_ref", "evaluated_at")
        }
        for r in rows
    }


def test_mixed_raw_sources_give_the_same_results_as_canonical_events(
    deployment: Deployment, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    config = SimConfig(
        seed=23,
        orgs=(CANON,),
        referrals=400,
        start=now - timedelta(days=75),
        span=timedelta(days=60),
        invalid_rate=0.0,
    )
    docs = [json.loads(m.value) for m in generate(config, now=now - timedelta(days=15))]
    raw, used = mixed_traffic(docs)
    # every raw format carries a real share of the traffic
    assert all(used.get(name, 0) >= 5 for name in ENCODERS), used

    sources = tmp_path / "sources.yaml"
    sources.write_text(sources_yaml([MIXED]))
    deployment.extra_env["REFTRACK_SOURCES_FILE"] = str(sources)
    names = {
        "canonical": f"{deployment.prefix}.events.v1",
        **{
            kind: f"{deployment.prefix}.raw.{kind}.v1"
            for kind in ("fhir", "hl7v2", "comms", "claims")
        },
    }
    worker = Worker(deployment)
    try:
        worker.wait_ready()
        produce(
            deployment.bootstrap, names["canonical"], [(None, json.dumps(d).encode()) for d in docs]
        )
        for kind, messages in raw.items():
            produce(deployment.bootstrap, names[kind], [(None, m) for m in messages])

        referrals = {d["referral_id"] for d in docs}

        def both_stored() -> bool:
            counts = worker.query(
                "SELECT org_id, count() AS n, sum(version) AS v "
                "FROM referral_status GROUP BY org_id"
            )
            by_org = {r["org_id"]: (r["n"], r["v"]) for r in counts}
            return by_org.get(CANON, (0, 0))[0] == len(referrals) and by_org.get(
                MIXED
            ) == by_org.get(CANON)

        wait_for(both_stored, 120, what="both orgs stored at the same versions")
        pipeline = worker.pipeline()
        assert pipeline["counts"]["dead_lettered"] == 0, read_topic(
            deployment.bootstrap, f"{deployment.prefix}.dlq.v1"
        )[:3]

        canon, mixed = rows_by_referral(worker, CANON), rows_by_referral(worker, MIXED)
        assert set(mixed) == set(canon) == referrals
        differing = [r for r in canon if canon[r] != mixed[r]]
        assert not differing, [
            (r, {k: (v, mixed[r][k]) for k, v in canon[r].items() if mixed[r][k] != v})
            for r in differing[:3]
        ]

        stages = (
            "SELECT * EXCEPT (org_id, inserted_at) FROM stage_durations FINAL "
            "WHERE org_id = '{}' ORDER BY ALL"
        )
        assert worker.query(stages.format(MIXED)) == worker.query(stages.format(CANON))

        worker.wait_kpi_refreshed()
        for view in ("kpi_summary", "kpi_daily", "stage_stats"):
            by_org = f"SELECT * EXCEPT (org_id) FROM {view} WHERE org_id = '{{}}' ORDER BY ALL"
            mixed_rows = worker.query(by_org.format(MIXED))
            assert mixed_rows, view
            canon_rows = worker.query(by_org.format(CANON))
            assert len(mixed_rows) == len(canon_rows), view
            for got, want in zip(mixed_rows, canon_rows, strict=True):
                # floats equal up to summation order (ClickHouse sums in parallel)
                assert got.keys() == want.keys(), view
                for column, value in want.items():
                    same = (
                        got[column] == pytest.approx(value, rel=1e-12)
                        if isinstance(value, float)
                        else got[column] == value
                    )
                    assert same, (view, column, got, want)
    finally:
        worker.stop()
