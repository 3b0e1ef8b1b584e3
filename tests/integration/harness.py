"""Real processes for integration tests: the embedded broker, `reftrack worker`
subprocesses, a Kafka producer/reader. Every process a test starts, it stops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sinks.kpi_refresh import KPI_VIEWS
from streams.broker import free_port
from streams.kafka_compat import install_end_offsets_probe

install_end_offsets_probe()

ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Any,
    timeout: float,
    interval: float = 0.25,
    what: str = "condition",
    explain: Any = None,
) -> Any:
    """Poll `predicate` until it is truthy. On a timeout the error says what was last
    seen and, with `explain` (e.g. `Worker.diagnosis`), what the worker was doing."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = ""
    if explain is not None:
        try:
            detail = "\n" + str(explain())
        except Exception as exc:  # the diagnosis must not hide the timeout
            detail = f"\n(no diagnosis: {exc!r})"
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){detail}"
    )


@dataclass
class Deployment:
    """One isolated reftrack installation on the shared broker: own prefix, group, dirs."""

    bootstrap: str
    base_dir: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.prefix = f"t{tag}"
        self.app_id = f"reftrack-{tag}"
        self.data_dir = self.base_dir / tag
        self.web_port = free_port()

    @property
    def events_topic(self) -> str:
        return f"{self.prefix}.events.v1"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFTRACK_")}
        env.update(
            {
                "REFTRACK_KAFKA_BOOTSTRAP": self.bootstrap,
                "REFTRACK_DATA_DIR": str(self.data_dir),
                "REFTRACK_TOPIC_PREFIX": self.prefix,
                "REFTRACK_APP_ID": self.app_id,
                "REFTRACK_PSEUDONYM_KEY": "integration-test-key",
                "REFTRACK_WEB_PORT": str(self.web_port),
                "REFTRACK_PARTITIONS": str(self.partitions),
                "REFTRACK_SESSION_TIMEOUT": "6",
                "REFTRACK_SINK_FLUSH_SECONDS": "0.5",
                "REFTRACK_KPI_REFRESH_SECONDS": "1",
                # stalls (streams/stall.py) logged within a test's waits, for its diagnosis
                "REFTRACK_STALL_SECONDS": "30",
                "REFTRACK_LOG_FORMAT": "json",
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def query_json(self, sql: str) -> list[dict[str, Any]]:
        result = self.cli("query", "--format", "json", sql)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode(errors="replace")


class Worker:
    """A `reftrack worker` subprocess."""

    running: ClassVar[set[Worker]] = set()  # started, not yet stopped or killed

    def __init__(
        self, deployment: Deployment, name: str = "worker", own_state: bool = False
    ) -> None:
        """`own_state`: a worker of its own machine, as one of several in the group: its
        own data dir (Faust tables, embedded ClickHouse) under `<data dir>/<name>` and its
        own web port. A restart with the same name finds the same state."""
        self.deployment = deployment
        self.name = name
        deployment.data_dir.mkdir(parents=True, exist_ok=True)
        env = deployment.env()
        self.web_port = deployment.web_port
        if own_state:
            self.web_port = free_port()
            env["REFTRACK_DATA_DIR"] = str(deployment.data_dir / name)
            env["REFTRACK_WEB_PORT"] = str(self.web_port)
        self.log_path = deployment.data_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        Worker.running.add(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, _json_or_text(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_text(exc.read())

    def pipeline(self) -> dict[str, Any]:
        return self.get("/api/pipeline")[1]

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                return self.get("/readyz")[0] == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False

        wait_for(ready, timeout, what="worker readiness")

    def wait_accounted(self, produced: int, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            counts = self.pipeline()["counts"]
            return counts if counts["accounted"] >= produced else None

        return wait_for(done, timeout, what=f"{produced} messages accounted")

    def query(self, sql: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            self.url + "/api/query",
            data=json.dumps({"sql": sql, "max_rows": 1_000_000}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
        assert not body["truncated"], f"query result truncated: {sql}"
        return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]

    def wait_kpi_refreshed(self, timeout: float = 60) -> None:
        """Wait for a refresh of every precomputed KPI view that started after now, so the
        views hold what the tables hold at this moment (the harness refreshes every 1 s)."""
        since = self.query("SELECT toString(now()) AS t")[0]["t"]
        views = ", ".join(f"'{view}'" for view in KPI_VIEWS)
        sql = (
            "SELECT count() AS n FROM system.view_refreshes WHERE database = currentDatabase() "
            f"AND view IN ({views}) AND last_success_time > toDateTime('{since}')"
        )
        wait_for(
            lambda: self.query(sql)[0]["n"] == len(KPI_VIEWS),
            timeout,
            interval=0.5,
            what="a refresh of the KPI views",
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def diagnosis(self) -> str:
        """What a failed wait should show: the worker's counts, sinks and log tail."""
        try:
            state: Any = self.pipeline()
        except Exception as exc:
            state = f"/api/pipeline failed: {exc!r}"
        alive = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        log = self.log_path.read_text(errors="replace")
        lines = log.splitlines()
        stalls = [line for line in lines if "have not moved for" in line][-4:]
        notable = [line for line in lines if _notable(line) and line not in stalls][-30:]
        return (
            f"worker {self.name} {alive}; /api/pipeline: {json.dumps(state)[:3000]}\n"
            + "".join(f"stall: {line[:4000]}\n" for line in stalls)
            + "".join(f"notable: {line[:600]}\n" for line in notable)
            + f"log tail:\n{log[-3000:]}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"worker did not stop within {timeout}s") from None
        Worker.running.discard(self)
        self._log.close()
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        Worker.running.discard(self)
        self._log.close()


def kill_leftover_workers() -> list[str]:
    """Kill every worker a test started and did not stop (a test that failed before
    its own cleanup); the log paths of those killed."""
    killed = []
    for worker in list(Worker.running):
        worker.kill()
        killed.append(str(worker.log_path))
    return killed


async def _produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> list[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
        return [await f for f in futures]
    finally:
        await producer.stop()


def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> list[Any]:
    """Send and wait for the broker's acknowledgements; returns record metadata."""
    return asyncio.run(_produce(bootstrap, topic, list(messages)))


async def _read_all(bootstrap: str, topic: str, timeout: float) -> list[Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            batches = await consumer.getmany(timeout_ms=300)
            for messages in batches.values():
                out.extend(messages)
        return out
    finally:
        await consumer.stop()


def read_topic(bootstrap: str, topic: str, timeout: float = 30) -> list[Any]:
    """Every message on a topic right now (no consumer group)."""
    return asyncio.run(_read_all(bootstrap, topic, timeout))


async def read_committed(
    bootstrap: str, group: str, topics: list[str]
) -> dict[tuple[str, int], int]:
    """The group's committed offsets for these topics, asked of its coordinator by a
    member that never joins (absent: nothing committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for topic in topics:
            await consumer._client.force_metadata_update()
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                offset = await consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    out[(topic, p)] = offset
        return out
    finally:
        await consumer.stop()


def committed_offsets(bootstrap: str, group: str, *topics: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets for these topics (absent: nothing committed)."""
    return asyncio.run(read_committed(bootstrap, group, list(topics)))


def _notable(line: str) -> bool:
    """A worker log line a failed wait should quote wherever it is in the log: warnings
    and errors, and the consumer's repairs (messages read again)."""
    return (
        '"level": "warning"' in line
        or '"level": "error"' in line
        or '"level": "critical"' in line
        or "reading again" in line
        or "no committed offset" in line
    ) and "Heartbeat failed" not in line
