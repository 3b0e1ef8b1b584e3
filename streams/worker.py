"""Run one worker process: migrate ClickHouse, ensure topics, then run the Faust worker
with the web endpoints and the ClickHouse sink until SIGTERM/SIGINT.

Services start in the order web, ingest, sinks, Faust app and stop in reverse: the app
stops ingest first (its batch published and committed), then its agents stop and its
producer flushes, then the sinks drain their topics, flush and commit, so a graceful stop
leaves nothing acknowledged outside ClickHouse.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from sinks.clickhouse import ClickHouse
from sinks.kpi_refresh import set_refresh_interval
from sinks.migrate import Migration, migrate, pending
from sinks.retention import set_retention
from streams import local_state
from streams.app import create_pipeline
from streams.config import ConfigError, Settings
from streams.gc_tuning import tune_for_worker
from streams.logs import configure, logging_config
from streams.topics import ensure_topics
from streams.web import WebService

log = logging.getLogger(__name__)


def prepare_schema(ch: ClickHouse, migrate_on_start: bool) -> list[Migration]:
    """Apply pending migrations, or (REFTRACK_CLICKHOUSE_MIGRATE_ON_START=false, where
    `reftrack migrate` runs once before the workers) refuse to start without them."""
    if migrate_on_start:
        return migrate(ch)
    missing = pending(ch)
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise ConfigError(
            f"ClickHouse database {ch.database} lacks migrations {names} and "
            "REFTRACK_CLICKHOUSE_MIGRATE_ON_START is false: run `reftrack migrate` once"
        )
    return []


def run_worker(settings: Settings) -> int:
    configure(settings.log_level, settings.log_format)
    settings.pseudonym_key_bytes  # noqa: B018  (fail before touching Kafka or ClickHouse)
    asyncio.run(ensure_topics(settings, settings.kafka_connect_timeout))
    local_state.prepare(settings.state_dir)
    pipeline = create_pipeline(settings)
    ch = pipeline.clickhouse
    applied = ch._executor.submit(prepare_schema, ch, settings.clickhouse_migrate_on_start).result()
    ch._executor.submit(set_refresh_interval, ch, settings.kpi_refresh_seconds).result()
    retention = ch._executor.submit(set_retention, ch, settings.event_retention_days).result()
    if retention:
        log.info(
            "event retention set to %s days on %s",
            settings.event_retention_days or "unlimited",
            ", ".join(retention),
        )
    log.info("clickhouse %s ready (%d migrations applied)", ch.describe(), len(applied))
    web = WebService(pipeline)
    worker = faust.Worker(
        pipeline.app,
        web,
        pipeline.ingest,  # joins its group while the app recovers; the app stops it first
        *pipeline.sinks,
        pipeline.stall_watch,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        redirect_stdouts=False,
        quiet=True,
    )
    log.info(
        "worker %s starting: kafka=%s (%s) topics=%s.* web=http://%s:%s/",
        settings.app_id,
        settings.kafka_bootstrap,
        settings.kafka_security.describe(),
        settings.topic_prefix,
        settings.web_bind,
        settings.web_port,
    )
    tune_for_worker()  # after everything the process keeps for its lifetime is built
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    if code == 0:
        local_state.mark_clean(settings.state_dir)
    return code
