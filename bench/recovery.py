"""Restart to ready, and resident memory per open referral (issue 7).

    python -m bench.recovery [--referrals 1000000] [--partitions 8] [--store memory rocksdb]
                             [--no-doc]

Writes N open referral records (real `ReferralState`s in the tracker's table format, each
to the partition its key hashes to) straight into the referral table's changelog on an
embedded broker, then starts a `reftrack worker` on that state, as after a crash or a
move to a new machine, and measures:

- restart to ready: process start until `/readyz` answers 200 (changelog recovered);
- the deadline index rebuild (the worker's own log line), which happens on the first tick,
  and the longest wait for `/healthz` meanwhile (polled every 0.5 s): how long the event
  loop, which ingest, the sinks and the web server share with the rebuild, stood still;
- resident memory (VmRSS) of the worker once ready and indexed, minus the same worker's
  RSS with an empty table, divided by N.

Prints the figures and rewrites the "Recovery and memory" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.alert_tick import build
from bench.report import say, write_section
from schemas.flags import DEFAULT_TARGETS, next_deadline
from streams.broker import EmbeddedBroker, free_port
from streams.tracker import partition_of
from tests.integration.harness import Deployment, Worker, wait_for

START_MARK = "<!-- recovery:start -->"
END_MARK = "<!-- recovery:end -->"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def write_changelog(bootstrap: str, topic: str, partitions: int, n: int) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()
    states = build(n)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await producer.start()
    started = time.perf_counter()
    try:
        now = min(s.last_event_at or 0 for s in states.values())
        pending = []
        for key, state in states.items():
            p = partition_of(key, partitions)
            record = {
                "state": state.to_dict(),
                "alerts": {},
                "deadline": next_deadline(state, now, DEFAULT_TARGETS),
                "p": p,
            }
            pending.append(
                await producer.send(
                    topic,
                    key=json.dumps(key).encode(),
                    value=json.dumps(record).encode(),
                    partition=p,
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def measure(deployment: Deployment, n: int, store: str, name: str = "") -> dict[str, float]:
    deployment.extra_env.update({"REFTRACK_STORE": store, "REFTRACK_ALERT_TICK_SECONDS": "0.5"})
    started = time.perf_counter()
    worker = Worker(deployment, name=name or f"recovery-{store}")
    try:
        worker.wait_ready(timeout=900)
        ready = time.perf_counter() - started

        slowest = 0.0  # the longest /healthz answer meanwhile: how long the loop stood still

        def indexed() -> list[float] | None:  # a list: 0.0 s is a valid answer
            nonlocal slowest
            asked = time.perf_counter()
            with contextlib.suppress(OSError):  # no answer within the client's 10 s
                worker.get("/healthz")
            slowest = max(slowest, time.perf_counter() - asked)
            found = re.search(
                r"deadline index rebuilt .*?\(([0-9.]+) s\)", worker.log_path.read_text()
            )
            return [float(found[1])] if found else None

        (rebuild,) = wait_for(indexed, 600, interval=0.5, what="the deadline index rebuild")
        time.sleep(2)
        rss = rss_bytes(worker.process.pid)
    finally:
        worker.stop(timeout=300)
    return {"ready": ready, "rebuild": rebuild, "rss": rss, "slowest": slowest}


def growth_lines(rows: list[Any]) -> list[str]:
    """Per store and start: how much RSS each referral added between the smallest and
    the largest count measured (what "bounded" is judged by: fixed costs cancel out)."""
    out = []
    for store in dict.fromkeys(row[0] for row in rows):
        for how in dict.fromkeys(row[2] for row in rows if row[0] == store):
            same = sorted((row[1], row[3]["rss"]) for row in rows if row[:3:2] == (store, how))
            if len(same) < 2 or same[-1][0] == same[0][0]:
                continue
            (n0, rss0), (n1, rss1) = same[0], same[-1]
            per = (rss1 - rss0) / (n1 - n0)
            out.append(
                f"- {store}, {how}: from {n0:,} to {n1:,} open referrals RSS grew "
                f"{(rss1 - rss0) / 2**20:,.0f} MiB, {per:,.0f} B per added referral."
            )
    return ["", *out] if out else []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery")
    parser.add_argument("--referrals", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--store", nargs="+", default=["memory", "rocksdb"])
    parser.add_argument("--no-doc", dest="doc", action="store_false")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="reftrack-recovery-"))
    rows = []
    with EmbeddedBroker(free_port(), log_path=tmp / "tansu.log") as broker:
        for store in args.store:
            empty = Deployment(bootstrap=broker.bootstrap, base_dir=tmp / f"empty-{store}")
            empty.partitions = args.partitions
            baseline = measure(empty, 0, store)
            say(
                f"{store}: empty worker ready in {baseline['ready']:.1f} s, "
                f"RSS {baseline['rss'] / 2**20:.0f} MiB"
            )
            for n in args.referrals:
                full = Deployment(bootstrap=broker.bootstrap, base_dir=tmp / f"full-{store}-{n}")
                full.partitions = args.partitions
                topic = f"{full.app_id}-referral-state-changelog"
                say(f"writing {n:,} referral records to {topic} ...")
                wrote = asyncio.run(write_changelog(broker.bootstrap, topic, args.partitions, n))
                say(f"  written in {wrote:.1f} s")
                # RocksDB is then restarted after a clean stop, on its own disk: it reads
                # only the changelog written after its last flushed offsets
                starts = ["new machine"] + (["restart, own disk"] if store == "rocksdb" else [])
                for how in starts:
                    name = f"recovery-{store}" + ("-restart" if how != "new machine" else "")
                    result = measure(full, n, store, name=name)
                    per = (result["rss"] - baseline["rss"]) / n
                    say(
                        f"{store}, {n:,}, {how}: ready in {result['ready']:.1f} s, index "
                        f"rebuilt in {result['rebuild']:.1f} s (longest /healthz answer "
                        f"meanwhile {result['slowest']:.2f} s), RSS "
                        f"{result['rss'] / 2**20:.0f} MiB, {per:,.0f} bytes per open referral"
                    )
                    rows.append((store, n, how, result, baseline, per))

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START_MARK,
        "## Recovery and memory",
        "",
        "<!-- Generated by `python -m bench.recovery` (part of `make bench`); edits between "
        "the markers are overwritten. -->",
        "",
        f"Targets (issue 7): restart to ready with 1 M referrals ≤ 60 s; ≤ 2 KB resident per "
        f"open referral with the memory store; bounded resident memory with RocksDB. "
        f"Measured {date}: open referral records in the changelog, {args.partitions} "
        "partitions, embedded "
        f"broker, load average {os.getloadavg()[0]:.1f}. RocksDB starts from an empty "
        "local directory (a new machine), so both stores read the whole changelog; then the "
        "same RocksDB worker is stopped cleanly and restarted on its own disk, where it "
        "reads only what the changelog holds beyond its flushed offsets.",
        "",
        "| store | open referrals | start | start to ready | index rebuild | longest /healthz "
        "answer during it | RSS | RSS empty | per open referral |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {store} | {n:,} | {how} | {r['ready']:.1f} s"
            f"{(' ✓' if r['ready'] <= 60 else ' ✗') if n >= 1_000_000 else ''} | "
            f"{r['rebuild']:.1f} s | {r['slowest']:.2f} s | {r['rss'] / 2**20:,.0f} MiB | "
            f"{b['rss'] / 2**20:,.0f} MiB | {per:,.0f} B"
            f"{(' ✓' if per <= 2048 else ' ✗') if store == 'memory' else ''} |"
            for store, n, how, r, b, per in rows
        ],
        *growth_lines(rows),
        END_MARK,
    ]
    section = "\n".join(lines)
    say("")
    say(section)
    if args.doc:
        write_section("recovery", section)


if __name__ == "__main__":
    main()
