"""The pipeline of one worker process: the Faust app, its topics, table and agents, the
ClickHouse sink and the metrics, wired from one Settings object."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import faust
from faust.sensors import Sensor
from mode import Service

from schemas.adapters.config import load_sources
from schemas.sla import load_policy
from sinks.clickhouse import ClickHouse
from sinks.rows import (
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    RATE_COLUMNS,
    REFERRAL_STATE_COLUMNS,
    STAGE_COLUMNS,
    alert_rows,
    event_rows,
    rate_rows,
    referral_state_rows,
    stage_rows,
)
from sinks.topic_sink import SinkTarget, TopicSink
from streams.adapt import IdLinks, register_adapters, register_id_links
from streams.clock import Clock
from streams.config import Settings, Topics
from streams.deadline_store import disk_indexes
from streams.faust_compat import install_consumer_fixes
from streams.faust_recovery import install_recovery_batching
from streams.ingest import IngestService
from streams.kafka_compat import install_end_offsets_probe, install_fetch_max_wait
from streams.metrics import Metrics
from streams.stall import StallWatch, Watched, tracker_watch
from streams.tracker import Tracker, register_tracker
from streams.windows import WindowCounter

REFERRAL_TABLE = "referral-state"
WINDOW_TABLE = "rate-windows"
ALIAS_TABLE = "id-links"

# RocksDB keeps one database per table and partition (24 with 8 partitions), and Faust's
# defaults give each up to 3 x 64 MiB of memtables and its own 2 GiB block cache: memory
# that grows with the data until those limits. These bound each database to 2 x 8 MiB of
# memtables and 16 MiB of cache; the tables are written far below the rate that would
# need larger write buffers (docs/performance.md, "Recovery and memory").
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 << 20,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 << 20,
    "block_cache_compressed_size": 4 << 20,
}


class App(faust.App):
    """Faust's app with a no-op sensor in place of its Monitor: the monitor keeps
    statistics for Faust's own web views, which reftrack never turns on (they expose
    table contents), and every message, send and table access paid for it (about 2 % of
    a worker's time; reftrack's metrics are its own, streams/metrics.py). One sensor
    stays so that Faust's rebalance bookkeeping finds the state it expects.

    Ingest (`upstream`) reads with a consumer of its own but publishes through this
    app's producer, so the app stops it first (streams/worker.py starts it)."""

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        self.sensors.add(Sensor())
        return dependencies

    # Ingest (streams/ingest.py): its own consumer, publishing through this app's producer.
    upstream: Service | None = None

    async def on_stop(self) -> None:
        """Stop ingest first, with the batch in hand published and committed: upstream
        first, so nothing is published after Faust's consumer and producer stop."""
        if self.upstream is not None:
            await self.upstream.stop()
        await super().on_stop()

    @cached_property
    def _event_class(self) -> Any:
        return self.conf.Event

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        """As Faust's, with the event class looked up once: Faust reads it from its
        settings for every message consumed, and a settings lookup costs more than the
        event itself (about 2 % of a worker's time)."""
        return self._event_class(self, key, value, headers, message)


@dataclass
class Pipeline:
    settings: Settings
    app: faust.App
    topics: Topics
    table: Any
    metrics: Metrics
    clickhouse: ClickHouse
    sinks: list[TopicSink]
    ingest: IngestService
    stall_watch: StallWatch


def create_pipeline(settings: Settings) -> Pipeline:
    """Build (not start) everything one worker runs."""
    names = Topics(settings.topic_prefix)
    if settings.kafka_end_offsets_probe:
        install_end_offsets_probe()
    install_fetch_max_wait(settings.kafka_fetch_max_wait_ms)
    install_consumer_fixes()
    install_recovery_batching()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    session = settings.session_timeout
    app = App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")],
        broker_credentials=settings.kafka_security.faust_credentials(),
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
        # One record batch per partition and flush: with Faust's 16 KiB a tracker batch's
        # snapshots and table writes took several produce requests one after another
        # (one in flight per broker), 174 ms a flush instead of 14 (docs/performance.md).
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
        table_cleanup_interval=60.0,
    )
    metrics = Metrics()
    key = settings.pseudonym_key_bytes

    def raw_topic(name: str, compacting: bool = False) -> Any:
        """Bytes in, bytes out: reftrack decodes messages itself, once, where it must."""
        return app.topic(name, key_serializer="raw", value_serializer="raw", compacting=compacting)

    tracked = raw_topic(names.tracked)
    status = raw_topic(names.status, compacting=True)
    dlq = raw_topic(names.dlq)
    rates = raw_topic(names.rates, compacting=True)
    alerts = raw_topic(names.alerts)
    idlinks = raw_topic(names.idlinks)
    raw_sources = {kind: raw_topic(name) for kind, name in names.raw.items()}

    def store_options() -> dict[str, int] | None:
        # A fresh dict per table: Faust's RocksDB store pops keys from the one it gets.
        return dict(ROCKSDB_OPTIONS) if settings.store == "rocksdb" else None

    def json_table(name: str) -> Any:
        return app.Table(
            name,
            default=None,
            partitions=settings.partitions,
            schema=faust.Schema(key_serializer="json", value_serializer="json"),
            options=store_options(),
        )

    # Values are the records' JSON bytes, decoded by the tracker (tracker.decode_record):
    # the same changelog bytes as a json table, a third of the memory of decoded dicts.
    # (Faust takes a table's serializers from key_type/value_type: bytes is "raw", and
    # anything else "json".)
    table = app.Table(
        REFERRAL_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=str,
        value_type=bytes,
        options=store_options(),
    )
    windows = WindowCounter(
        table=json_table(WINDOW_TABLE),
        rates=rates,
        metrics=metrics,
        grace_us=int(settings.window_grace_seconds * 1_000_000),
    )
    tracker = Tracker(
        table=table,
        status=status,
        dlq=dlq,
        alerts=alerts,
        windows=windows,
        metrics=metrics,
        pseudonym_key=key,
        tracked_topic=names.tracked,
        partitions=settings.partitions,
        policy=load_policy(settings.sla_file),
        clock=Clock.parse(settings.clock),
    )
    if settings.store == "rocksdb":  # bounded memory: the deadline index on disk too
        tracker.new_index = disk_indexes(settings.state_dir / "deadline-index")

    ingest = IngestService(
        app=app,
        bootstrap=settings.kafka_bootstrap,
        app_id=settings.app_id,
        topic=names.events,
        tracked=names.tracked,
        dlq=names.dlq,
        metrics=metrics,
        pseudonym_key=key,
        batch=settings.tracker_batch,
        session_timeout=session,
        consumer_options=settings.kafka_options(),
        ready=lambda: bool(
            app.producer.started and app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        ),
    )
    app.upstream = ingest
    register_adapters(
        app, raw_sources, tracked, idlinks, dlq, metrics, key, load_sources(settings.sources_file)
    )
    register_id_links(app, idlinks, IdLinks(json_table(ALIAS_TABLE), tracked, dlq, metrics, key))
    register_tracker(
        app,
        tracked,
        tracker,
        settings.tracker_batch,
        settings.tracker_batch_seconds,
        settings.alert_tick_seconds,
    )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _forget_partitions(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        numbers = {tp.partition for tp in revoked if tp.topic == names.tracked}
        windows.forget(numbers)
        tracker.forget(numbers)

    clickhouse = settings.clickhouse()

    def sink(name: str, topic: str, *targets: SinkTarget) -> TopicSink:
        return TopicSink(
            name=name,
            bootstrap=settings.kafka_bootstrap,
            group_id=f"{settings.app_id}.sink.{name}",
            topic=topic,
            targets=targets,
            clickhouse=clickhouse,
            metrics=metrics,
            batch_rows=settings.sink_batch_rows,
            flush_seconds=settings.sink_flush_seconds,
            session_timeout=session,
            consumer_options=settings.kafka_options(),
        )

    sinks = [
        sink(
            "status",
            names.status,
            SinkTarget("referral_state", REFERRAL_STATE_COLUMNS, referral_state_rows),
            SinkTarget("stage_durations", STAGE_COLUMNS, stage_rows),
        ),
        sink("events", names.tracked, SinkTarget("events", EVENT_COLUMNS, event_rows)),
        sink("rates", names.rates, SinkTarget("event_rates", RATE_COLUMNS, rate_rows)),
        sink("alerts", names.alerts, SinkTarget("alerts", ALERT_COLUMNS, alert_rows)),
    ]
    watched = [
        Watched("ingest", ingest.positions, ingest.describe),
        tracker_watch(app, names.tracked, tracker.sequence_state),
        *(Watched(f"sink:{s.sink_name}", s.positions, s.describe) for s in sinks),
    ]
    stall_watch = StallWatch(watched, metrics, stall_seconds=settings.stall_seconds)
    return Pipeline(settings, app, names, table, metrics, clickhouse, sinks, ingest, stall_watch)
