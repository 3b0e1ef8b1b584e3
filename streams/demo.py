"""`reftrack demo`: the whole pipeline on one machine until Ctrl-C.

Starts the embedded broker, one worker (with its dashboard) and the simulator, prints
where to look, and stops all three on the way out. A share of the simulated events
(`--raw-share`, default 30 %) arrives the way upstream systems send it: FHIR resources,
HL7 v2 messages, messaging webhooks and claims on the raw topics, read by the adapters.
The embedded broker keeps data in memory only, so each demo starts from a clean
`<data_dir>/demo`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from streams import simulator
from streams.broker import EmbeddedBroker, free_port, port_open
from streams.config import Topics, load_settings
from streams.upstream.mix import sources_yaml

STATUS_SQL = (
    "SELECT org_id, status, count() AS referrals FROM referral_status "
    "GROUP BY org_id, status ORDER BY org_id, referrals DESC"
)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(json.loads(r.read()).get("ready"))
    except OSError:
        return False


def run_demo(rate: float, port: int | None, seed: int, raw_share: float = 0.3) -> int:
    settings = load_settings()
    data_dir = settings.data_dir.resolve() / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    broker_port = port or (9092 if not port_open("127.0.0.1", 9092) else free_port())
    web_port = settings.web_port
    if port_open("127.0.0.1", web_port):
        web_port = free_port()
    broker = EmbeddedBroker(broker_port, log_path=data_dir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    env = {
        **os.environ,
        "REFTRACK_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
        "REFTRACK_DATA_DIR": str(data_dir),
        "REFTRACK_WEB_PORT": str(web_port),
        "REFTRACK_SESSION_TIMEOUT": os.environ.get("REFTRACK_SESSION_TIMEOUT", "6"),
        "REFTRACK_LOG_FORMAT": "text",
    }
    if settings.sources_file is None:  # place the simulated HL7 v2 senders
        sources = data_dir / "sources.yaml"
        sources.write_text(sources_yaml(simulator.SimConfig().orgs))
        env["REFTRACK_SOURCES_FILE"] = str(sources)
    if settings.pseudonym_key is None:
        env["REFTRACK_PSEUDONYM_KEY"] = secrets.token_hex(32)  # demo only: thrown away at exit
    try:
        print(
            f"reftrack demo: starting the embedded broker on 127.0.0.1:{broker_port} ...",
            flush=True,
        )
        broker.start()
        log = open(data_dir / "worker.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        print(
            "reftrack demo: starting the worker (consumer group join takes a few seconds) ...",
            flush=True,
        )
        deadline = time.monotonic() + 120
        while not _ready(web_port):
            if worker.poll() is not None or time.monotonic() > deadline:
                print(
                    f"reftrack demo: the worker did not become ready; see {data_dir}/worker.log",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
        base = f"http://127.0.0.1:{web_port}"
        orgs = ", ".join(simulator.SimConfig().orgs)
        print(
            f"""
  reftrack is running.
    dashboard      {base}/
    pipeline JSON  {base}/api/pipeline
    metrics        {base}/metrics
    worker log     {data_dir}/worker.log

  Live numbers from ClickHouse (in another terminal, from this directory):
    REFTRACK_WEB_PORT={web_port} .venv/bin/reftrack query "{STATUS_SQL}"

  Simulating {rate:g} messages/s from {orgs}; {raw_share:.0%} of the events as
  FHIR / HL7 v2 / webhook / claims messages on the raw topics. Ctrl-C stops everything.
""",
            flush=True,
        )
        config = simulator.SimConfig(seed=seed)
        names = Topics(settings.topic_prefix)
        asyncio.run(
            simulator.run(
                config,
                broker.bootstrap,
                names.events,
                rate,
                None,
                raw_topics=names.raw,
                raw_share=raw_share,
            )
        )
    except KeyboardInterrupt:
        print("\nreftrack demo: stopping ...", flush=True)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()
    print("reftrack demo: stopped.")
    return 0
