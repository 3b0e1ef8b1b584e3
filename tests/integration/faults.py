"""Fault injection for the fault tests (test_faults.py): real components, made to fail.

ClickHouse. chDB runs inside the worker process, so it cannot be stopped from outside.
`install()`, run in the worker at interpreter start (a `sitecustomize` that
`clickhouse_hook_env` puts on the worker's PYTHONPATH), wraps
`sinks.clickhouse.ClickHouse.insert` - the client boundary every sink write goes
through - with a check of a control directory:

* while `<dir>/clickhouse-down` exists, an insert raises
  `ClickHouseError("injected: connection refused")` before the engine sees it;
* while `<dir>/clickhouse-slow` exists, an insert first sleeps `SLOW_SECONDS`;
* while `<dir>/clickhouse-hold` exists, an insert of `status` rows runs, then touches
  `<dir>/inside-flush` (the row count) and waits for the file to go: the rows are
  stored, the sink's offsets not yet committed (the window a SIGKILL "during a flush"
  hits). The worker's one ClickHouse thread is held meanwhile: no queries answer.

The tracker. While `<dir>/tracker-hang` exists, `streams.tracker.Tracker._process` waits
before it works on a batch (holding the tracker's lock, as a batch in progress does):
the tracker hangs the way a publish that never returns would, and its partitions stop
moving (what the stall watch must report).

Lost messages. While `<dir>/tracker-drop` exists, each message of the tracked topic the
consumer fetches is thrown away once, before the tracker's lane gets it (the first time
per offset; a read again delivers it), the way Faust's consumer once lost fetched messages
around a rebalance; `<dir>/dropped` counts them. When those were the last messages of
their partitions, nothing comes after them to show the hole (Tracker.retry_lost).

This is fault injection in front of the real engine, not a mock: otherwise (and after a
slow wait) the real insert runs and the real embedded ClickHouse stores every row; reads
(`query`, `ping`) are untouched. Nothing in product code changes.

Broker. Tansu keeps its data in memory only, so it cannot be restarted without losing
every topic. `ProxiedTansu` starts a dedicated Tansu that advertises a TCP proxy's port,
so every client connection (bootstrap and the advertised one) goes through `TcpProxy`; an
outage (`TcpProxy.outage()`) closes every open connection and the listening socket
(connections are refused) until `TcpProxy.restore()` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONTROL_DIR_ENV = "REFTRACK_TEST_FAULTS_DIR"
DOWN = "clickhouse-down"
SLOW = "clickhouse-slow"
SLOW_SECONDS = 1.5
HOLD = "clickhouse-hold"
TRACKER_HANG = "tracker-hang"
TRACKER_DROP = "tracker-drop"
DROPPED = "dropped"
INSIDE = "inside-flush"

ROOT = Path(__file__).resolve().parents[2]


# -- ClickHouse at the client boundary (runs inside the worker process) -----------------


def install() -> None:
    """Wrap ClickHouse.insert with the control-file checks (no-op without the env var)."""
    control = os.environ.get(CONTROL_DIR_ENV)
    if not control:
        return
    from sinks.clickhouse import ClickHouse, ClickHouseError

    directory = Path(control)
    real_insert: Callable[..., None] = ClickHouse.insert

    def insert(self: Any, table: str, rows: list[Sequence[Any]], columns: Sequence[str]) -> None:
        if (directory / DOWN).exists():
            raise ClickHouseError("injected: connection refused")
        if (directory / SLOW).exists():
            time.sleep(SLOW_SECONDS)
        real_insert(self, table, rows, columns)
        if table == "referral_state" and (directory / HOLD).exists():
            # written whole, then renamed: the test must never read an empty file
            (directory / f"{INSIDE}.tmp").write_text(str(len(rows)))
            (directory / f"{INSIDE}.tmp").rename(directory / INSIDE)
            while (directory / HOLD).exists():
                time.sleep(0.05)

    ClickHouse.insert = insert  # type: ignore[method-assign]

    import asyncio

    from streams.tracker import Tracker

    real_process: Callable[..., Any] = Tracker._process

    async def process(self: Any, events: list[Any]) -> None:
        while (directory / TRACKER_HANG).exists():
            await asyncio.sleep(0.1)
        await real_process(self, events)

    Tracker._process = process  # type: ignore[method-assign]

    from streams import faust_compat

    real_to_lane: Callable[..., Any] = faust_compat._to_lane
    dropped: set[tuple[int, int]] = set()

    async def to_lane(consumer: Any, lane: Any, message: Any) -> bool:
        """Between the fetch and the tracker: taken as delivered, but thrown away."""
        where = (message.partition, message.offset)
        if where not in dropped and (directory / TRACKER_DROP).exists():
            dropped.add(where)
            (directory / f"{DROPPED}.tmp").write_text(str(len(dropped)))
            (directory / f"{DROPPED}.tmp").rename(directory / DROPPED)
            return True
        return await real_to_lane(consumer, lane, message)

    faust_compat._to_lane = to_lane  # type: ignore[assignment]


_SITECUSTOMIZE = """\
# Written by tests/integration/faults.py: fault injection for the fault tests.
import tests.integration.faults

tests.integration.faults.install()
"""


def clickhouse_hook_env(control_dir: Path, hook_dir: Path) -> dict[str, str]:
    """Environment for a worker whose ClickHouse inserts obey the files in `control_dir`:
    a `sitecustomize.py` in `hook_dir` (with the repository root, first on PYTHONPATH)."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    control_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = [str(hook_dir), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {"PYTHONPATH": os.pathsep.join(path), CONTROL_DIR_ENV: str(control_dir)}


# -- the broker behind a TCP proxy -------------------------------------------------------


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """Forward 127.0.0.1:`port` to `upstream`, with threads; `outage()` cuts every
    connection and refuses new ones until `restore()`."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.port = port
        self.upstream = upstream
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stop = threading.Event()
        self.accepted = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._stop.clear()
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()
        return self

    restore = start

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if self._stop.is_set():
                    _close(client)
                    _close(server)
                    return
                self.accepted += 1
                self._connections.update((client, server))
                for src, dst in ((client, server), (server, client)):
                    pump = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                    self._threads.append(pump)
                    pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for sock in (src, dst):
                    if sock in self._connections:
                        self._connections.discard(sock)
                        _close(sock)

    def outage(self) -> None:
        """Close the listening socket (new connections are refused) and every open
        connection, both sides."""
        self._stop.set()
        if self._accepting is not None:
            self._accepting.join(5)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = self._connections, set()
            threads, self._threads = self._threads, []
        for sock in connections:
            _close(sock)
        for thread in threads:
            thread.join(5)

    def stop(self) -> None:
        self.outage()


class ProxiedTansu:
    """A Tansu broker of its own (memory only) on a free port, advertising `proxy_port`,
    and the proxy forwarding that port to it. A context manager that stops both."""

    def __init__(self, log_path: Path) -> None:
        from streams.broker import free_port

        self.broker_port = free_port()
        self.proxy = TcpProxy(free_port(), ("127.0.0.1", self.broker_port))
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return self.proxy.bootstrap

    def start(self, timeout: float = 20.0) -> ProxiedTansu:
        from streams.broker import broker_binary, port_open

        listen = f"tcp://127.0.0.1:{self.broker_port}"
        advertised = f"tcp://127.0.0.1:{self.proxy.port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    listen,
                    "--advertised-listener-url",
                    advertised,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        try:
            deadline = time.monotonic() + timeout
            while not port_open("127.0.0.1", self.broker_port):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not listen on {listen} (see {self.log_path})")
                time.sleep(0.05)
            self.proxy.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.proxy.stop()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> ProxiedTansu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
