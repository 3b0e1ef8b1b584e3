"""While Faust starts its consumer thread, the probe and scrape endpoints still answer
(Faust raises ConsumerNotStarted from `assignment()` for a moment after `started`)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.exceptions import ConsumerNotStarted

from streams.config import Topics
from streams.ingest import IngestService
from streams.metrics import Metrics
from streams.web import WebService


class StartingConsumer:
    def assignment(self) -> Any:
        raise ConsumerNotStarted("Consumer thread not yet started")


def starting_service() -> WebService:
    app = SimpleNamespace(
        started=True,
        consumer=StartingConsumer(),
        rebalancing=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=asyncio.Event())),
    )
    topics, metrics = Topics("t"), Metrics()
    ingest = IngestService(  # not started: no consumer yet
        app=app,  # type: ignore[arg-type]
        bootstrap="127.0.0.1:9",
        app_id="t",
        topic=topics.events,
        tracked=topics.tracked,
        dlq=topics.dlq,
        metrics=metrics,
        pseudonym_key=b"k" * 32,
        batch=10,
        session_timeout=6.0,
    )
    pipeline = SimpleNamespace(app=app, topics=topics, metrics=metrics, ingest=ingest)
    return WebService(pipeline)  # type: ignore[arg-type]


def test_consumer_lag_is_empty_not_an_error_while_the_consumer_starts() -> None:
    assert starting_service().consumer_lag() == {}


def test_metrics_render_while_the_consumer_starts() -> None:
    service = starting_service()
    response = asyncio.run(service.metrics(None))  # type: ignore[arg-type]
    assert response.status == 200
    assert b"reftrack_dlq_messages_total{error_code=" in response.body


def test_readiness_says_not_assigned_while_the_consumer_starts() -> None:
    checks = starting_service().readiness()
    assert checks["partitions_assigned"] is False
    assert checks["tables_recovered"] is False
