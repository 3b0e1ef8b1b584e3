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
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect

T = TypeVar("T")

_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
READ_ONLY_PREFIXES = ("select", "with", "show", "describe", "desc", "explain", "exists")


class ClickHouseError(Exception):
    """A ClickHouse call failed; the message is scrubbed of credentials."""


def scrub(text: str) -> str:
    """Remove `user:pass@` from any URL in a message before it is logged or shown."""
    return _CREDENTIALS.sub(r"\1***@", text)


def server_dsn(dsn: str) -> str:
    """The DSN without a database path: reftrack creates its database itself."""
    if dsn.startswith("chdb://"):
        return dsn
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))


def is_read_only(sql: str) -> bool:
    stripped = sql.lstrip().lstrip("(").lower()
    return stripped.startswith(READ_ONLY_PREFIXES)


class ClickHouse:
    """A clickhouse-connect client owned by one thread."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Any = None

    def describe(self) -> str:
        return scrub(self.dsn)

    # -- blocking API (runs in the caller's thread; use `call` from async code) -------

    def _connect(self) -> Any:
        if self._client is None:
            try:
                self._client = clickhouse_connect.get_client(dsn=server_dsn(self.dsn))
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
            return self._connect().command(sql)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(scrub(str(exc))) from None

    def query(self, sql: str, read_only: bool = False) -> tuple[list[str], list[Sequence[Any]]]:
        settings = {"readonly": 1} if read_only else None
        try:
            result = self._connect().query(sql, settings=settings)
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(scrub(str(exc))) from None
        return list(result.column_names), list(result.result_rows)

    def insert(self, table: str, rows: list[Sequence[Any]], columns: Sequence[str]) -> None:
        try:
            self._connect().insert(f"{self.database}.{table}", rows, column_names=list(columns))
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
