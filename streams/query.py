"""`reftrack query`: read-only SQL against reftrack's ClickHouse.

The embedded engine can be held by one process only, so while a worker runs, the query
goes through that worker's /api/query; with no worker listening (or with a ClickHouse
server) it connects directly. Either way the query runs with `readonly=1`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from sinks.clickhouse import ClickHouseError, is_read_only
from streams.config import Settings, is_loopback


class QueryError(Exception):
    pass


def _worker_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.web_bind in ("0.0.0.0", "::") else settings.web_bind
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.web_port}/api/query"


def query_worker(
    settings: Settings, sql: str, timeout: float = 70.0, max_rows: int = 10_000
) -> tuple[list[str], list[Any]] | None:
    """Ask a running worker; None when no worker listens."""
    request = urllib.request.Request(
        _worker_url(settings),
        data=json.dumps({"sql": sql, "max_rows": max_rows}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if settings.api_token is not None:
        request.add_header("Authorization", f"Bearer {settings.api_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            detail = exc.reason
        raise QueryError(f"worker refused the query ({exc.code}): {detail}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    if body.get("truncated"):
        raise QueryError(f"more than {max_rows} rows: add a LIMIT or raise --max-rows")
    return body["columns"], body["rows"]


def run_query(settings: Settings, sql: str, max_rows: int = 10_000) -> tuple[list[str], list[Any]]:
    if not is_read_only(sql):
        raise QueryError("reftrack query is read-only: SELECT, WITH, SHOW, DESCRIBE, EXPLAIN")
    if is_loopback(settings.web_bind) or settings.web_bind in ("0.0.0.0", "::"):
        result = query_worker(settings, sql, max_rows=max_rows)
        if result is not None:
            return result
    ch = settings.clickhouse()
    try:
        columns, rows = ch.query(sql, read_only=True)
    except ClickHouseError as exc:
        if "Cannot lock file" in str(exc) or "status" in str(exc) and "lock" in str(exc):
            raise QueryError(
                "the embedded ClickHouse is held by another process and no worker answered on "
                f"{_worker_url(settings)}; check REFTRACK_WEB_PORT"
            ) from None
        raise QueryError(str(exc)) from None
    finally:
        ch.close_blocking()
    return columns, [list(r) for r in rows]


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(columns, r, strict=False)), default=str) for r in rows)
    if fmt == "tsv":
        lines = ["\t".join(columns)] + ["\t".join(_cell(c) for c in r) for r in rows]
        return "\n".join(lines)
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return str(value)
