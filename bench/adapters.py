"""Adapter throughput (issue 5): raw messages per second on one core, per source format,
beside the canonical path.

    python -m bench.adapters [--seconds 3] [--no-doc]

The corpus is the simulator's realistic mix of valid events, each rendered in every raw
format that can express it (the encoders of streams/upstream, the same the end-to-end test
uses), plus the standard's example fixtures. Each format is timed through
`streams.adapt.adapt_message`: read, place (org, referral id), validate as a canonical
event, pseudonymize: everything ingest does for a raw message except the Kafka sends.
The canonical path is `streams.ingest.ingest_one` on the canonical lines. One Python
process, one thread, so one core. Prints the table and rewrites the "Adapters" section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import say, write_section
from schemas.adapters.config import parse_sources
from streams.adapt import ADAPTERS, adapt_message
from streams.ingest import ingest_one
from streams.simulator import SimConfig, generate
from streams.upstream import claims_encode, comms_encode, fhir_encode, hl7v2_encode

ROOT = Path(__file__).resolve().parent.parent
KEY = b"bench-pseudonym-key-0123456789"
FACILITY = "BENCHFAC"
CONFIG = parse_sources(f"orgs:\n  northwind:\n    hl7v2_senders: [{FACILITY}]\n")


def corpus(referrals: int) -> tuple[list[bytes], dict[str, list[bytes]]]:
    now = datetime.now(UTC)
    config = SimConfig(
        seed=9,
        orgs=("northwind",),
        referrals=referrals,
        start=now - timedelta(days=60),
        span=timedelta(days=50),
        invalid_rate=0.0,
    )
    docs = [json.loads(m.value) for m in generate(config, now=now - timedelta(hours=1))]
    encoders: dict[str, Callable[[dict[str, Any]], bytes | None]] = {
        "fhir": lambda e: fhir_encode.encode(e, e["org_id"]),
        "hl7v2": lambda e: hl7v2_encode.encode(e, FACILITY),
        "comms (generic)": lambda e: comms_encode.encode(e),
        "comms (Twilio)": lambda e: comms_encode.encode(e, twilio=True),
        "claims": claims_encode.encode,
    }
    raw: dict[str, list[bytes]] = {}
    for name, encode in encoders.items():
        raw[name] = [m for m in (encode(d) for d in docs) if m is not None]
    canonical = [json.dumps(d).encode() for d in docs]
    return canonical, raw


def rate(run: Callable[[bytes], int], messages: list[bytes], seconds: float) -> tuple[float, float]:
    """Messages/s and events/s over whole passes of the corpus, for at least `seconds`."""
    done = events = 0
    started = time.perf_counter()
    while True:
        for message in messages:
            events += run(message)
        done += len(messages)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed, events / elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per format")
    parser.add_argument("--referrals", type=int, default=2000)
    parser.add_argument("--no-doc", dest="doc", action="store_false")
    args = parser.parse_args(argv)

    say(f"building the corpus ({args.referrals:,} simulated referrals) ...")
    canonical, raw = corpus(args.referrals)
    received = datetime.now(UTC)

    def canonical_one(message: bytes) -> int:
        ingest_one(message, received, KEY)
        return 1

    rows: list[tuple[str, int, float, float]] = []
    say("timing the canonical path ...")
    msgs, evs = rate(canonical_one, canonical, args.seconds)
    rows.append(("canonical (reference)", len(canonical), msgs, evs))
    say(f"  canonical: {msgs:,.0f} msg/s")
    for name, messages in raw.items():
        adapter = ADAPTERS[name.split(" ")[0]]

        def one(message: bytes, adapter: Any = adapter) -> int:
            out = adapt_message(adapter, message, received, CONFIG, KEY)
            return len(out.tracked) + len(out.parked)

        say(f"timing {name} ({len(messages):,} messages) ...")
        msgs, evs = rate(one, messages, args.seconds)
        rows.append((name, len(messages), msgs, evs))
        say(f"  {name}: {msgs:,.0f} msg/s, {evs:,.0f} events/s")

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    base = rows[0][2]
    table = [
        "| format | messages in corpus | messages/s | events/s | vs canonical |",
        "|---|---:|---:|---:|---:|",
        *[f"| {name} | {n:,} | {m:,.0f} | {e:,.0f} | {m / base:.2f}× |" for name, n, m, e in rows],
    ]
    for line in table:
        say(line)
    if not args.doc:
        return
    section = "\n".join(
        [
            "<!-- adapters:start -->",
            "## Adapters",
            "",
            "<!-- Generated by `python -m bench.adapters` (part of `make bench`); edits "
            "between the markers are overwritten. -->",
            "",
            f"Issue 5: raw messages per second through each source adapter on one core "
            f"(read, place, validate as a canonical event, pseudonymize; no Kafka), beside "
            f"the canonical ingest path on the same events. Corpus: {args.referrals:,} "
            f"simulated referrals, every event rendered in each format that can express it. "
            f"Measured {date}, load average {load:.1f}, one Python process.",
            "",
            *table,
            "",
            "<!-- adapters:end -->",
        ]
    )
    write_section("adapters", section)


if __name__ == "__main__":
    main()
