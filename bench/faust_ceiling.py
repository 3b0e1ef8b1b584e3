"""The framework ceiling (issue 7): a bare Faust agent that only JSON-decodes each message.

    python -m bench.faust_ceiling BOOTSTRAP TOPIC EXPECTED

Run as its own process by bench/pipeline.py against the same broker and topic as the
full pipeline. Prints one JSON line: {"messages": N, "seconds": S} measured from the
first message the agent sees to the EXPECTED-th, then stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid

import faust

from streams.kafka_compat import install_end_offsets_probe


def main() -> None:
    bootstrap, topic_name, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    install_end_offsets_probe()
    app = faust.App(
        f"bench-ceiling-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="faust-ceiling-"),
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic)
    async def decode(stream: faust.StreamT) -> None:
        async for value in stream:
            if seen["n"] == 0:
                seen["first"] = time.perf_counter()
            with contextlib.suppress(ValueError):
                json.loads(value)
            seen["n"] += 1
            if seen["n"] == expected:
                elapsed = time.perf_counter() - seen["first"]
                print(json.dumps({"messages": expected, "seconds": elapsed}), flush=True)
                os._exit(0)  # the figure is out; skip Faust's slow group leave

    faust.Worker(
        app, loglevel="warning", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
