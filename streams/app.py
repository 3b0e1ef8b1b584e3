"""The pipeline of one worker process: the Faust app, its topics, table and agents, the
ClickHouse sink and the metrics, wired from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from sinks.clickhouse import ClickHouse
from sinks.rows import REFERRAL_STATE_COLUMNS, referral_state_row
from sinks.topic_sink import TopicSink
from streams.config import Settings, Topics
from streams.ingest import register_ingest
from streams.kafka_compat import install_end_offsets_probe
from streams.metrics import Metrics
from streams.tracker import register_tracker

REFERRAL_TABLE = "referral-state"


@dataclass
class Pipeline:
    settings: Settings
    app: faust.App
    topics: Topics
    table: Any
    metrics: Metrics
    clickhouse: ClickHouse
    status_sink: TopicSink


def create_pipeline(settings: Settings) -> Pipeline:
    """Build (not start) everything one worker runs."""
    names = Topics(settings.topic_prefix)
    if settings.kafka_end_offsets_probe:
        install_end_offsets_probe()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    session = settings.session_timeout
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.state_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_enabled=False,  # Faust's own web server exposes table contents: never on
        autodiscover=False,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.1, session / 6),
        broker_rebalance_timeout=max(session, 10.0),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        table_cleanup_interval=60.0,
    )
    metrics = Metrics()
    key = settings.pseudonym_key_bytes

    def raw_topic(name: str, compacting: bool = False) -> Any:
        """Bytes in, bytes out: reftrack decodes messages itself, once, where it must."""
        return app.topic(name, key_serializer="raw", value_serializer="raw", compacting=compacting)

    events = raw_topic(names.events)
    tracked = raw_topic(names.tracked)
    status = raw_topic(names.status, compacting=True)
    dlq = raw_topic(names.dlq)
    table = app.Table(
        REFERRAL_TABLE,
        default=None,
        partitions=settings.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )

    register_ingest(app, events, tracked, dlq, metrics, key)
    register_tracker(
        app,
        tracked,
        status,
        dlq,
        table,
        metrics,
        key,
        settings.tracker_batch,
        settings.tracker_batch_seconds,
    )

    clickhouse = ClickHouse(settings.dsn, settings.clickhouse_database)
    status_sink = TopicSink(
        name="referral_state",
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}.sink.referral_state",
        topic=names.status,
        table="referral_state",
        columns=REFERRAL_STATE_COLUMNS,
        to_row=referral_state_row,
        clickhouse=clickhouse,
        metrics=metrics,
        batch_rows=settings.sink_batch_rows,
        flush_seconds=settings.sink_flush_seconds,
        session_timeout=session,
    )
    return Pipeline(settings, app, names, table, metrics, clickhouse, status_sink)
