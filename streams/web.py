"""The worker's HTTP surface (SPEC §8): health, readiness, pipeline status, metrics,
read-only queries, the dashboard's JSON API (docs/dashboard.md) and the dashboard page.

Binds to loopback by default. With a token configured, every /api/* endpoint requires
`Authorization: Bearer <token>`; /healthz, /readyz and /metrics stay open for probes and
scrapers, and the page (/) and its assets (/static/*) for browsers: none of them carries
referral data (the page fetches its data from /api/* with the token). Faust's own web
server (which can browse tables) is never started.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web
from mode import Service
from multidict import MultiDict

from sinks.clickhouse import ClickHouseError, is_read_only
from sinks.kpi_refresh import refresh_status
from sinks.topic_sink import lag_of
from streams import dashboard_queries as dq
from streams.app import Pipeline
from streams.stall import stream_positions

log = logging.getLogger(__name__)
DEFAULT_QUERY_ROWS = 10_000
MAX_QUERY_ROWS = 1_000_000
DASHBOARD_TIMEOUT_S = 60

# (method, path, handler): every route the app serves; streams/static/openapi.json
# documents exactly these (tests/unit/test_dashboard_queries.py checks both ways).
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/", "index"),
    ("GET", "/static/{name}", "static"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/api/pipeline", "pipeline_status"),
    ("POST", "/api/query", "query"),
    ("GET", "/api/openapi.json", "openapi"),
    ("GET", "/api/filters", "filters"),
    ("GET", "/api/kpis", "kpis"),
    ("GET", "/api/funnel", "funnel"),
    ("GET", "/api/stages", "stages"),
    ("GET", "/api/rates", "rates"),
    ("GET", "/api/worklist", "worklist"),
    ("GET", "/api/referrals/{org_id}/{referral_id}", "referral"),
    ("GET", "/api/alerts", "alerts"),
)
# Routes served without the token: probes, the scrape endpoint, the page and its assets.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics"})
OPEN_ROUTES = OPEN_PATHS | {"/static/{name}"}

# Files of the streams.static package served under /static/, by suffix.
STATIC_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
_STATIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class WebService(Service):
    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self._sink_ok = False
        self.port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        s = self.pipeline.settings
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.web_bind, s.web_port)
        await site.start()
        server: Any = site._server
        sockets = server.sockets if server is not None else []
        self.port = sockets[0].getsockname()[1] if sockets else s.web_port
        log.info("web listening on http://%s:%s/", s.web_bind, self.port)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.add_routes(
            [
                web.get(path, getattr(self, handler))
                if method == "GET"
                else web.route(method, path, getattr(self, handler))
                for method, path, handler in ROUTES
            ]
        )
        return app

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @Service.task
    async def _watch_sink(self) -> None:
        ch = self.pipeline.clickhouse
        while not self.should_stop:
            self._sink_ok = await ch.call(ch.ping)
            await self.sleep(5.0)

    # -- auth ----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.pipeline.settings.api_token
        if token is not None and not _is_open(request):
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return web.json_response(
                    {"error": "unauthorized", "message": "send Authorization: Bearer <token>"},
                    status=401,
                )
        return await handler(request)

    # -- handlers ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        page = resources.files("streams.static").joinpath("index.html").read_text("utf-8")
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def static(self, request: web.Request) -> web.Response:
        """A file of the streams.static package; only names of files it holds, with a
        known suffix (no directories, no path traversal)."""
        name = request.match_info["name"]
        content_type = STATIC_TYPES.get(name[name.rfind(".") :].lower()) if "." in name else None
        if not _STATIC_NAME.match(name) or content_type is None:
            raise web.HTTPNotFound()
        resource = resources.files("streams.static").joinpath(name)
        if not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=resource.read_bytes(),
            content_type=content_type,
            charset="utf-8" if content_type.startswith("text/") else None,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "alive", "uptime_s": round(time.time() - self.started_at, 1)}
        )

    def readiness(self) -> dict[str, bool]:
        app: Any = self.pipeline.app
        try:
            assigned = bool(app.started and app.consumer.assignment())
        except Exception:  # Faust raises ConsumerNotStarted while its consumer thread starts
            assigned = False
        recovered = bool(app.started and app.tables.recovery.completed.is_set())
        # the tracker's partitions (Faust's group) and ingest's (its own group)
        assigned = assigned and self.pipeline.ingest.assigned
        return {
            "partitions_assigned": assigned and not app.rebalancing,
            "tables_recovered": recovered,
            "sink_reachable": self._sink_ok,
        }

    async def readyz(self, request: web.Request) -> web.Response:
        checks = self.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        by_topic: dict[str, int] = {}
        for where, lag in self.consumer_lag().items():
            topic = where.rsplit("/", 1)[0]
            by_topic[topic] = by_topic.get(topic, 0) + lag
        for topic, lag in by_topic.items():
            self.pipeline.metrics.consumer_lag.labels(topic).set(lag)
        return web.Response(
            body=self.pipeline.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    def consumer_lag(self) -> dict[str, int]:
        """Per partition this worker reads: messages waiting, on the events topic (ingest)
        and the tracked topic (the tracker)."""
        out: dict[str, int] = self.pipeline.ingest.lag()
        out.update(lag_of(stream_positions(self.pipeline.app, self.pipeline.topics.tracked)))
        return out

    async def pipeline_status(self, request: web.Request) -> web.Response:
        p = self.pipeline
        m = p.metrics
        processed = m.total(m.events_processed)
        duplicates = m.total(m.events_duplicate)
        dead = m.total(m.dlq)
        body = {
            "ready": all(self.readiness().values()),
            "checks": self.readiness(),
            "counts": {
                "consumed": m.total(m.messages_in),
                "processed": processed,
                "duplicates": duplicates,
                "dead_lettered": dead,
                "accounted": processed + duplicates + dead,
                "status_snapshots": m.total(m.status_out),
                "sink_rows": m.total(m.sink_rows),
            },
            "consumer_lag": self.consumer_lag(),
            "clickhouse": p.clickhouse.describe(),
            "sinks": [
                {
                    "name": sink.sink_name,
                    "topic": sink.topic,
                    "tables": sink.tables,
                    "rows_pending": sink.pending,
                    "lag": sink.lag(),
                    "last_flush": sink.last_flush,
                    "last_error": sink.last_error,
                }
                for sink in p.sinks
            ],
            "topics": vars(p.topics),
            "kpi_views": await self.kpi_refresh_status(),
        }
        return web.json_response(body)

    async def kpi_refresh_status(self) -> dict[str, Any]:
        """When each precomputed KPI view was last recomputed (or why it could not be)."""
        ch = self.pipeline.clickhouse
        try:
            return await asyncio.wait_for(ch.call(refresh_status, ch), timeout=5)
        except (ClickHouseError, TimeoutError) as exc:
            return {"error": str(exc) or type(exc).__name__}

    async def query(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            sql = str(body["sql"])
            limit = min(int(body.get("max_rows", DEFAULT_QUERY_ROWS)), MAX_QUERY_ROWS)
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response(
                {"error": "bad_request", "message": 'POST {"sql": "SELECT ...", "max_rows": N}'},
                status=400,
            )
        if not is_read_only(sql):
            return web.json_response(
                {"error": "read_only", "message": "only SELECT/WITH/SHOW/DESCRIBE/EXPLAIN"},
                status=400,
            )
        ch = self.pipeline.clickhouse
        try:
            columns, rows = await asyncio.wait_for(ch.call(ch.query, sql, True), timeout=60)
        except ClickHouseError as exc:
            return web.json_response({"error": "query_failed", "message": str(exc)}, status=400)
        truncated = len(rows) > limit
        return web.json_response(
            {"columns": columns, "rows": rows[:limit], "truncated": truncated},
            dumps=_dumps,
        )

    # -- the dashboard's JSON API (streams/dashboard_queries.py, docs/dashboard.md) ------------

    async def openapi(self, request: web.Request) -> web.Response:
        document = resources.files("streams.static").joinpath("openapi.json").read_bytes()
        return web.Response(body=document, content_type="application/json", charset="utf-8")

    async def _dashboard(self, compute: Callable[[dq.Runner], Any]) -> web.Response:
        """Run `compute` in the ClickHouse thread with a read-only runner; map its errors."""
        ch = self.pipeline.clickhouse

        def run(query: dq.Query) -> list[dq.Row]:
            columns, rows = ch.query(query.sql, True, query.parameters)
            return [dict(zip(columns, row, strict=True)) for row in rows]

        try:
            body = await asyncio.wait_for(ch.call(compute, run), timeout=DASHBOARD_TIMEOUT_S)
        except dq.BadRequest as exc:
            return web.json_response({"error": "bad_request", "message": str(exc)}, status=400)
        except ClickHouseError as exc:
            log.warning("dashboard query failed: %s", exc)
            return web.json_response({"error": "query_failed", "message": str(exc)}, status=503)
        except TimeoutError:
            return web.json_response(
                {"error": "timeout", "message": f"no answer within {DASHBOARD_TIMEOUT_S} s"},
                status=504,
            )
        if body is None:
            return web.json_response(
                {"error": "not_found", "message": "no such referral"}, status=404
            )
        return web.json_response(body, dumps=_dumps)

    async def filters(self, request: web.Request) -> web.Response:
        return await self._dashboard(dq.api_filters)

    async def _filtered(
        self, request: web.Request, api: Callable[[dq.Runner, MultiDict[str]], Any]
    ) -> web.Response:
        """An endpoint that answers from the query string's filters (dashboard_queries)."""
        params = MultiDict(request.query)
        return await self._dashboard(lambda run: api(run, params))

    async def kpis(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_kpis)

    async def funnel(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_funnel)

    async def stages(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_stages)

    async def rates(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_rates)

    async def worklist(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_worklist)

    async def referral(self, request: web.Request) -> web.Response:
        org_id = request.match_info["org_id"]
        referral_id = request.match_info["referral_id"]
        return await self._dashboard(lambda run: dq.api_referral(run, org_id, referral_id))

    async def alerts(self, request: web.Request) -> web.Response:
        return await self._filtered(request, dq.api_alerts)


def _is_open(request: web.Request) -> bool:
    """Served without the token: an exact open path, or a request the router matched to
    /static/{name} (decided by the matched route, not by the path's text, so no spelling
    of a path reaches a guarded handler through the open prefix)."""
    if request.path in OPEN_PATHS:
        return True
    resource = getattr(request.match_info.route, "resource", None)
    return isinstance(resource, web.AbstractResource) and resource.canonical == "/static/{name}"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
