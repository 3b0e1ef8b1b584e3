"""One ClickHouse connection for a process, embedded (chdb://) or a server (http(s)://).

clickhouse-connect serves both with the same client API, so the rest of reftrack has one
code path. Calls block (chdb runs the engine in-process and releases the GIL), so every
call goes through a single worker thread: the event loop stays free and the embedded
engine sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import clickhouse_connect

from sinks.cluster import CLUSTER_SETTINGS, ClusterLayout

T = TypeVar("T")

_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
# After the host: path and query of any URL (a query may carry settings or a password).
_URL_TAIL = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/?#\s'\"]+)[/?#][^\s'\"]*", re.I)
READ_ONLY_PREFIXES = ("select", "with", "show", "describe", "desc", "explain", "exists")


class ClickHouseError(Exception):
    """A ClickHouse call failed; the message is scrubbed of credentials."""


def scrub(text: str) -> str:
    """Reduce every URL in a message to scheme://host:port (no `user:pass@`, path or
    query) before it is logged or shown."""
    return _URL_TAIL.sub(r"\1", _CREDENTIALS.sub(r"\1***@", text))


# DSN query parameters that configure the client (TLS, timeouts, compression); any other
# parameter is a ClickHouse setting sent with every query (e.g. ?max_execution_time=60).
CLIENT_PARAMETERS = {
    "verify": "bool",
    "ca_cert": "str",
    "client_cert": "str",
    "client_cert_key": "str",
    "server_host_name": "str",
    "connect_timeout": "float",
    "send_receive_timeout": "float",
    "compress": "bool",
}


class DsnError(ValueError):
    """An http(s) DSN reftrack cannot use; the message carries no credentials."""


def http_client_args(dsn: str) -> dict[str, Any]:
    """clickhouse-connect `get_client` arguments for an `http(s)://` DSN.

    `https` means TLS (server certificate verified unless `?verify=false`; `?ca_cert=`
    for a private CA, `?client_cert=`/`?client_cert_key=` for mutual TLS). User and
    password may be percent-encoded. Default ports: 8123 (http), 8443 (https). The path,
    if any, must name REFTRACK_CLICKHOUSE_DATABASE (checked at start): reftrack creates
    and selects its database itself, so it is not passed here.
    """
    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https"):
        raise DsnError(f"expected http:// or https://, got {parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise DsnError("the DSN names no host")
    secure = parts.scheme == "https"
    try:
        port = parts.port or (8443 if secure else 8123)
    except ValueError:
        raise DsnError("the DSN's port is not a number from 1 to 65535") from None
    args: dict[str, Any] = {
        "interface": parts.scheme,
        "host": parts.hostname,
        "port": port,
        "secure": secure,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "database": None,
        "settings": {},
    }
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        kind = CLIENT_PARAMETERS.get(name)
        if kind is None:
            args["settings"][name] = value
        elif kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise DsnError(f"?{name}= must be true or false")
            args[name] = value.lower() in ("true", "1")
        elif kind == "float":
            try:
                args[name] = float(value)
            except ValueError:
                raise DsnError(f"?{name}= must be a number of seconds") from None
        else:
            args[name] = value
    if not secure and any(k in args for k in ("ca_cert", "client_cert", "client_cert_key")):
        raise DsnError("TLS parameters given for an http:// DSN: use https://")
    return args


def chdb_client_args(dsn: str) -> dict[str, Any]:
    """clickhouse-connect `get_client` arguments for a `chdb:///abs/path` DSN.

    `?config_file=/abs/config.xml` gives the embedded engine a ClickHouse configuration
    file (server settings, macros, clusters: the cluster DDL test uses it); no other
    parameter is accepted.
    """
    parts = urlsplit(dsn)
    options: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name != "config_file":
            raise DsnError(f"unknown parameter ?{name}= for chdb:// (only ?config_file=)")
        options["config-file"] = values[-1]
    return {"interface": "chdb", "path": unquote(parts.path), "chdb_options": options or None}


def dsn_database(dsn: str) -> str | None:
    """The database a server DSN's path names, if any."""
    path = urlsplit(dsn).path.strip("/")
    return unquote(path) if path else None


def is_read_only(sql: str) -> bool:
    stripped = sql.lstrip().lstrip("(").lower()
    return stripped.startswith(READ_ONLY_PREFIXES)


class ClickHouse:
    """A clickhouse-connect client owned by one thread.

    `cluster`, when given, is the layout migrations create (sinks/cluster.py); every
    statement and insert then carries its settings (synchronous distributed inserts).
    """

    def __init__(self, dsn: str, database: str, cluster: ClusterLayout | None = None) -> None:
        self.dsn = dsn
        self.database = database
        self.cluster = cluster
        self._settings: dict[str, Any] = dict(CLUSTER_SETTINGS) if cluster else {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = None

    def describe(self) -> str:
        return scrub(self.dsn)

    # -- blocking API (runs in the caller's thread; use `call` from async code) -------

    def _connect(self) -> Any:
        if self._client is None:
            try:
                if self.dsn.startswith("chdb://"):
                    self._client = clickhouse_connect.get_client(**chdb_client_args(self.dsn))
                else:
                    self._client = clickhouse_connect.get_client(**http_client_args(self.dsn))
            except Exception as exc:  # the driver raises many kinds
                raise ClickHouseError(
                    f"cannot connect to {self.describe()}: {scrub(str(exc))}"
                ) from None
            self.use_database()
        return self._client

    def use_database(self) -> None:
        """Make unqualified names in queries resolve in reftrack's database, once it exists."""
        client = self._client
        if client is not None and client.command(f"EXISTS DATABASE {self.database}") in (1, "1"):
            client.database = self.database

    def command(self, sql: str) -> Any:
        try:
            return self._connect().command(sql, settings=self._settings or None)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(scrub(str(exc))) from None

    def query(
        self, sql: str, read_only: bool = False, parameters: dict[str, Any] | None = None
    ) -> tuple[list[str], list[Sequence[Any]]]:
        """Rows of a query; `parameters` are bound by clickhouse-connect (`{name:Type}`
        placeholders, sent apart from the SQL text)."""
        settings = {"readonly": 1} if read_only else self._settings
        try:
            result = self._connect().query(sql, parameters=parameters, settings=settings or None)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(scrub(str(exc))) from None
        return list(result.column_names), list(result.result_rows)

    def insert(self, table: str, rows: list[Sequence[Any]], columns: Sequence[str]) -> None:
        try:
            self._connect().insert(
                f"{self.database}.{table}",
                rows,
                column_names=list(columns),
                settings=self._settings or None,
            )
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(scrub(str(exc))) from None

    def ping(self) -> bool:
        try:
            self.query("SELECT 1")
            return True
        except ClickHouseError:
            return False

    def close_blocking(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    # -- async API ------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)
