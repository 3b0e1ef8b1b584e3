"""Throughput of the full pipeline beside the client and framework ceilings (issue 7).

    python -m bench.pipeline [--referrals 20000] [--partitions 8] [--no-doc]

On one embedded broker: simulated traffic (`streams.simulator`, the realistic mix with
duplicates, late and invalid messages) is produced to a fresh events topic first. Then,
reading that same backlog:

1. the client ceiling: one aiokafka consumer that JSON-decodes every message;
2. the framework ceiling: a bare Faust agent that only decodes (bench/faust_ceiling.py);
3. the pipeline: one `reftrack worker` process (validation, pseudonyms, dedup,
   per-referral state, stage durations, flags and alerts, rate windows, sinks into chDB),
   timed from its first consumed message until every message is accounted for and every
   sink has written everything to ClickHouse. The headline figure is a worker that is
   ready (its consumer groups joined, partitions assigned, tables recovered) when the
   backlog arrives on fresh topics, as each ceiling is timed from its first message,
   after its group has joined. The figure of a worker started with the backlog already
   waiting, whose clock starts while the tracker's group is still joining, is printed
   beside it, with the worker's time from start to ready.

Prints the figures and rewrites the "Pipeline throughput" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.report import say, write_section
from streams.broker import EmbeddedBroker, free_port
from streams.config import load_settings
from streams.kafka_compat import install_end_offsets_probe
from streams.produce import produce_file
from streams.simulator import SimConfig, generate, write_ndjson
from streams.topics import ensure_topics
from tests.integration.harness import Deployment, Worker, wait_for

START_MARK = "<!-- pipeline:start -->"
END_MARK = "<!-- pipeline:end -->"
TARGET = 12_000
TARGET_SHARE = 0.70  # of the framework ceiling (issue 7: 12,000 is 70 % of its 16-19k/s)


async def client_ceiling(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, first = 0, 0.0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for messages in batches.values():
                if messages and not first:
                    first = time.perf_counter()
                for message in messages:
                    with contextlib.suppress(ValueError):
                        json.loads(message.value)
                seen += len(messages)
        return time.perf_counter() - first
    finally:
        await consumer.stop()


def faust_ceiling(bootstrap: str, topic: str, expected: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "bench.faust_ceiling", bootstrap, topic, str(expected)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parent.parent,
    )
    for line in out.stdout.splitlines():
        if "{" in line:  # Faust may print terminal control codes before it
            return float(json.loads(line[line.index("{") :])["seconds"])
    raise RuntimeError(f"faust ceiling printed no figure:\n{out.stdout}\n{out.stderr[-3000:]}")


def sinks_drained(body: dict) -> bool:
    """Every sink of a worker (its /api/pipeline body) has written all it read, and read
    all there is."""
    return not any(s["rows_pending"] or any(s["lag"].values()) for s in body["sinks"])


def pipeline_run(deployment: Deployment, expected: int) -> tuple[float, dict[str, object]]:
    worker = Worker(deployment, name="bench-worker")
    try:

        def consuming() -> float | None:
            try:
                return time.perf_counter() if worker.pipeline()["counts"]["consumed"] else None
            except (OSError, TypeError, KeyError):  # the web endpoint is not up yet
                return None

        if os.environ.get("BENCH_PROFILE"):
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-d",
                    "40",
                    "-o",
                    os.environ["BENCH_PROFILE"],
                    "-f",
                    "raw",
                    "-p",
                    str(worker.process.pid),
                ],
            )
        first = wait_for(
            consuming,
            180,
            interval=0.05,
            what="the worker to start consuming",
        )

        processed_at: list[float] = []

        def landed() -> dict[str, object] | None:
            body = worker.pipeline()
            if body["counts"]["accounted"] < expected:
                return None
            if not processed_at:
                processed_at.append(time.perf_counter())
                say(f"  every message processed after {processed_at[0] - first:.1f} s")
            if not sinks_drained(body):
                return None
            return body

        body = wait_for(landed, 1800, interval=0.2, what="everything in ClickHouse")
        return time.perf_counter() - first, body["counts"]
    finally:
        worker.stop()


async def produce_at_rate(
    bootstrap: str, topic: str, rate: int, seconds: float, tag: str
) -> dict[str, float]:
    """Send `referral.created` events for fresh referrals at `rate` per second; return
    each referral's send time (Unix seconds)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        start = time.perf_counter()
        total = int(rate * seconds)
        occurred = datetime.now(UTC).isoformat()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            referral = f"F-{tag}-{i}"
            value = json.dumps(
                {
                    "event_id": f"{referral}-c",
                    "referral_id": referral,
                    "org_id": "fresh",
                    "type": "referral.created",
                    "occurred_at": occurred,
                    "source": "ehr",
                    "data": {"priority": "routine", "specialty": "cardiology"},
                }
            ).encode()
            sent[referral] = time.time()
            await producer.send(topic, value=value, key=referral.encode())
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def scaling_run(
    deployment: Deployment, traffic: Path, expected: int, workers: int
) -> tuple[float, list[int], float]:
    """`workers` worker processes in one group, each with its own state directory and
    embedded ClickHouse (as on separate machines), all ready before the backlog is
    produced, so no rebalance happens mid-run. Timed from the first message consumed by
    any worker until every message is accounted for and every sink of every worker has
    written everything. Returns (seconds, messages accounted per worker, seconds from
    starting the workers until they were all ready)."""
    started = time.perf_counter()
    group = [Worker(deployment, name=f"scale-{i}", own_state=True) for i in range(workers)]
    try:
        for worker in group:
            worker.wait_ready(timeout=180)
        # every worker owns partitions (the group has settled) before the backlog arrives
        settled: list[tuple[bool, float]] = []  # (all ready, when)

        def all_ready() -> bool:
            settled.append((all(w.pipeline()["ready"] for w in group), time.perf_counter()))
            return len(settled) >= 5 and all(ok for ok, _ in settled[-5:])

        wait_for(all_ready, 120, interval=0.5, what="every worker ready at once")
        ready_s = settled[-5][1] - started  # the four checks after it confirmed it
        asyncio.run(produce_file(traffic, deployment.bootstrap, deployment.events_topic))

        def consuming() -> float | None:
            counts = [w.pipeline()["counts"]["consumed"] for w in group]
            return time.perf_counter() if any(counts) else None

        first = wait_for(consuming, 180, interval=0.05, what="a worker to start consuming")

        def landed() -> list[int] | None:
            bodies = [w.pipeline() for w in group]
            accounted = [b["counts"]["accounted"] for b in bodies]
            if sum(accounted) < expected:
                return None
            if not all(sinks_drained(body) for body in bodies):
                return None
            return accounted

        shares = wait_for(landed, 1800, interval=0.2, what="everything in ClickHouse")
        return time.perf_counter() - first, shares, ready_s
    finally:
        for worker in group:
            worker.stop()


# Freshness target (issue 7): p99 at most this many seconds.
FRESH_P99 = 2.0
# The highest sustained rate is searched for downwards from 90 % of the backlog
# throughput, this factor a step, at most this many steps.
SEARCH_STEP, SEARCH_STEPS = 0.8, 4


def sustained_rates(start: int, floor: int) -> list[int]:
    """Rates to try, highest first, for the highest sustained one: from `start` down by
    SEARCH_STEP (rounded down to 50), above `floor` (a fixed rate measured anyway)."""
    rates, rate = [], start
    while rate > floor and len(rates) < SEARCH_STEPS:
        rates.append(rate)
        rate = int(rate * SEARCH_STEP) // 50 * 50
    return rates


def freshness(deployment: Deployment, rates: Sequence[int], seconds: float) -> list[tuple]:
    """Produced → visible in referral_status (the row's ClickHouse insert time), p50/p99,
    at each of `rates` in turn, on one worker."""
    worker = Worker(deployment, name="bench-fresh")
    results: list[tuple] = []
    try:
        worker.wait_ready()
        for rate in rates:
            tag = f"r{rate}"
            sent = asyncio.run(
                produce_at_rate(deployment.bootstrap, deployment.events_topic, rate, seconds, tag)
            )
            sql = (
                "SELECT referral_id, toUnixTimestamp64Micro(min(inserted_at)) AS at "
                f"FROM referral_state WHERE org_id = 'fresh' AND referral_id LIKE 'F-{tag}-%' "
                "GROUP BY referral_id"
            )
            expected = len(sent)

            def visible(sql: str = sql, expected: int = expected) -> list[dict] | None:
                found = worker.query(sql)
                return found if len(found) >= expected else None

            rows = wait_for(
                visible,
                600,
                interval=1,
                what=f"all {len(sent)} referrals at {rate}/s visible",
            )
            lags = sorted(row["at"] / 1e6 - sent[row["referral_id"]] for row in rows)
            p50 = lags[len(lags) // 2]
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            say(f"freshness at {rate}/s: p50 {p50:.2f} s, p99 {p99:.2f} s")
            results.append((rate, p50, p99))
    finally:
        worker.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline")
    parser.add_argument("--referrals", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seconds", type=float, default=20.0, help="per freshness rate")
    parser.add_argument(
        "--scaling", type=int, nargs="*", default=[1, 2], help="worker counts to compare"
    )
    parser.add_argument("--no-doc", dest="doc", action="store_false")
    args = parser.parse_args(argv)
    install_end_offsets_probe()
    tmp = Path(tempfile.mkdtemp(prefix="reftrack-bench-"))
    now = datetime.now(UTC)
    traffic = tmp / "traffic.ndjson"
    config = SimConfig(
        seed=11, referrals=args.referrals, start=now - timedelta(days=90), span=timedelta(days=75)
    )
    lines = write_ndjson(generate(config, now - timedelta(days=1)), traffic)
    say(f"{lines:,} messages for {args.referrals:,} referrals")

    with EmbeddedBroker(free_port(), log_path=tmp / "tansu.log") as broker:
        deployment = Deployment(bootstrap=broker.bootstrap, base_dir=tmp)
        deployment.partitions = args.partitions
        settings = load_settings(
            kafka_bootstrap=broker.bootstrap,
            topic_prefix=deployment.prefix,
            partitions=args.partitions,
            data_dir=str(tmp / "topics"),
        )
        asyncio.run(ensure_topics(settings))
        started = time.perf_counter()
        sent = asyncio.run(produce_file(traffic, broker.bootstrap, deployment.events_topic))
        say(f"produced {sent:,} in {time.perf_counter() - started:.1f} s")

        client_s = asyncio.run(client_ceiling(broker.bootstrap, deployment.events_topic, sent))
        say(f"client ceiling: {sent / client_s:,.0f} msgs/s")
        faust_s = faust_ceiling(broker.bootstrap, deployment.events_topic, sent)
        say(f"framework ceiling: {sent / faust_s:,.0f} msgs/s")
        cold_s, counts = pipeline_run(deployment, sent)
        say(
            f"pipeline, started with the backlog waiting: {sent / cold_s:,.0f} msgs/s "
            f"({cold_s:.1f} s); counts {counts}"
        )
        scaled: list[tuple[int, float, list[int]]] = []

        def fresh_topics(name: str) -> Deployment:
            """A deployment with topics of its own (and a worker state of its own)."""
            fresh = Deployment(bootstrap=broker.bootstrap, base_dir=tmp / name)
            fresh.partitions = args.partitions
            asyncio.run(
                ensure_topics(
                    load_settings(
                        kafka_bootstrap=broker.bootstrap,
                        topic_prefix=fresh.prefix,
                        partitions=args.partitions,
                        data_dir=str(tmp / "topics"),
                    )
                )
            )
            return fresh

        # the headline: a worker ready when the backlog arrives (as the ceilings are timed)
        pipe_s, shares, ready_s = scaling_run(fresh_topics("pipeline"), traffic, sent, 1)
        say(f"pipeline, ready first: {sent / pipe_s:,.0f} msgs/s ({pipe_s:.1f} s)")
        say(f"  worker start to ready: {ready_s:.1f} s")
        for workers in args.scaling:
            if workers == 1:  # the headline run is the one-worker row
                seconds = pipe_s
            else:
                scale_deployment = fresh_topics(f"s{workers}")
                seconds, shares, _ = scaling_run(scale_deployment, traffic, sent, workers)
                say(f"{workers} workers: {sent / seconds:,.0f} msgs/s ({seconds:.1f} s), {shares}")
            scaled.append((workers, sent / seconds, shares))
        # the highest sustained rate: searched for down from just under the backlog's rate
        # (new referrals, what freshness sends, cost more per event than the backlog's mix)
        start = max(50, int(sent / pipe_s * 0.9) // 50 * 50)
        fresh = freshness(fresh_topics("fresh"), sorted(set(args.rates)), args.seconds)
        # Each step of the search on a worker and topics of its own: a step the worker
        # cannot keep up with leaves up to a hundred thousand new referrals behind it, and
        # the next step, measured behind them, came out worse than a higher rate had.
        for step, rate in enumerate(sustained_rates(start, max(args.rates))):
            fresh += freshness(fresh_topics(f"search{step}"), [rate], args.seconds)
            if fresh[-1][2] <= FRESH_P99:
                break  # the highest sustained rate is found
        held = [rate for rate, _, p99 in fresh if p99 <= FRESH_P99]
        sustained = max(held) if held else None

    rates = {
        "client": sent / client_s,
        "faust": sent / faust_s,
        "pipeline": sent / pipe_s,
        "cold": sent / cold_s,
    }
    one = next((rate for workers, rate, _ in scaled if workers == 1), rates["pipeline"])
    met = rates["pipeline"] >= TARGET
    share = rates["pipeline"] / rates["faust"]
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            START_MARK,
            "## Pipeline throughput",
            "",
            "<!-- Generated by `python -m bench.pipeline` (part of `make bench`); edits "
            "between the markers are overwritten. -->",
            "",
            f"Target (issue 7): the full pipeline at ≥ {TARGET:,} events/s per worker "
            f"process, that is ≥ {TARGET_SHARE:.0%} of the framework ceiling. "
            + ("**Met**" if met else f"**Missed** in events/s ({rates['pipeline']:,.0f} events/s)")
            + "; as a share of the framework ceiling measured in the same run: "
            + ("**met**" if share >= TARGET_SHARE else "**missed**")
            + f" ({share:.0%} of {rates['faust']:,.0f}).",
            "",
            f"Measured {date}: {sent:,} simulated messages ({args.referrals:,} referrals, "
            f"the simulator's mix of duplicates, late and invalid messages), "
            f"{args.partitions} partitions, embedded broker, one process each, load "
            f"average {os.getloadavg()[0]:.1f}. Worker settings as in the integration "
            "tests (tests/integration/harness.py): sinks flush every 0.5 s (default 1 s), "
            "KPI views refresh every 1 s (default 30 s); the rest are the defaults.",
            "",
            "| reader | messages/s | pipeline as % of it |",
            "|---|---:|---:|",
            f"| aiokafka consumer, JSON decode (client ceiling) | {rates['client']:,.0f} | "
            f"{rates['pipeline'] / rates['client']:.0%} |",
            f"| bare Faust agent, JSON decode (framework ceiling) | {rates['faust']:,.0f} | "
            f"{rates['pipeline'] / rates['faust']:.0%} |",
            f"| reftrack worker, ready when the backlog arrives: first message consumed "
            f"to all in ClickHouse | {rates['pipeline']:,.0f} | — |",
            "",
            "The worker's clock, like each ceiling's, starts at its first message, once its "
            "consumer groups have joined and its tables are recovered; the backlog is "
            "produced on fresh topics after the worker is ready "
            f"({ready_s:.1f} s from its start). Started instead with the backlog already "
            "waiting, the worker's clock starts when ingest (a consumer group of its own) "
            "reads the first message, while the tracker's group is still joining: "
            f"{rates['cold']:,.0f} messages/s "
            f"({rates['cold'] / rates['faust']:.0%} of the framework ceiling), the "
            "figure this table headed until 2026-11-28.",
            "",
            "Scaling: the same traffic on fresh topics, read by N worker processes in one "
            "consumer group, each with its own state directory and embedded ClickHouse (as "
            "on separate machines, but here sharing this machine's cores with each other "
            "and the broker); all ready before the backlog is produced; first message "
            "consumed to everything in every worker's ClickHouse (one worker: the run "
            "above):",
            "",
            "| workers | messages/s | vs one worker | messages per worker |",
            "|---:|---:|---:|---|",
            *[
                f"| {workers} | {rate:,.0f} | {rate / one:.2f}× | "
                f"{', '.join(f'{n:,}' for n in shares)} |"
                for workers, rate, shares in scaled
            ],
            "",
            f"Freshness (target p99 ≤ 2 s at 2,000 events/s): new referrals produced at a "
            f"fixed rate for {args.seconds:.0f} s each, from the send to the row's insert "
            "time in ClickHouse (`referral_state.inserted_at`, the row behind "
            "`referral_status`), same machine clock. Every event is a new referral (one "
            "snapshot and one table record each), which costs more per event than the "
            "backlog's mix. The highest sustained rate is searched for downwards from 90 % "
            f"of the throughput above, each step {SEARCH_STEP:.0%} of the one before, at "
            f"most {SEARCH_STEPS} steps, each on a fresh worker and fresh topics (the fixed "
            "rates share one), until p99 stays within 2 s: "
            + (
                f"**{sustained:,} events/s**."
                if sustained is not None
                else "none of the rates tried kept p99 within 2 s."
            ),
            "",
            "| rate (events/s) | p50 s | p99 s | p99 ≤ 2 s |",
            "|---:|---:|---:|:---:|",
            *[
                f"| {rate:,} | {p50:.2f} | {p99:.2f} | {'yes' if p99 <= FRESH_P99 else '**no**'} |"
                for rate, p50, p99 in fresh
            ],
            END_MARK,
        ]
    )
    say("")
    say(section)
    if args.doc:
        write_section("pipeline", section)


if __name__ == "__main__":
    main()
