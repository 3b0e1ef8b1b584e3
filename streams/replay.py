"""`reftrack replay`: rebuild ClickHouse from the topics.

Kafka is the source of truth. The status and rates topics are compacted (the latest
snapshot per referral, the latest count per window segment) and the tracked topic holds
every accepted event. Replay empties the tables the sinks fill, then moves the sinks'
consumer groups back to the start of their topics. The next worker start re-sinks
everything. Every table is idempotent, so the views come back identical.

Run it with the workers stopped: the embedded engine cannot be opened while a worker
holds it, and a live sink group cannot be moved.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sinks.kpi_refresh import KPI_VIEWS, refresh_now
from sinks.migrate import migrate
from streams.config import Settings, Topics
from streams.topics import offsets_client, topic_partitions

SINK_TABLES = ("referral_state", "stage_durations", "events", "event_rates", "alerts")


class ReplayError(Exception):
    pass


def sink_groups(settings: Settings) -> dict[str, str]:
    """Consumer group -> topic, for every ClickHouse sink (see streams/app.py)."""
    names = Topics(settings.topic_prefix)
    return {
        f"{settings.app_id}.sink.status": names.status,
        f"{settings.app_id}.sink.events": names.tracked,
        f"{settings.app_id}.sink.rates": names.rates,
        f"{settings.app_id}.sink.alerts": names.alerts,
    }


async def rewind_group(
    bootstrap: str, group: str, topic: str, kafka_options: dict[str, Any] | None = None
) -> int:
    """Commit the earliest offsets of `topic` for `group`; return the partitions moved."""
    consumer = offsets_client(bootstrap, group, kafka_options)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        if not tps:
            return 0
        consumer.assign(tps)
        earliest = await consumer.beginning_offsets(tps)
        await consumer.commit(dict(earliest))
        return len(tps)
    finally:
        await consumer.stop()


def replay(settings: Settings) -> list[str]:
    """Empty the sink tables and rewind the sink groups; return what was done."""
    done = []
    ch = settings.clickhouse()
    try:
        migrate(ch)
        for table in SINK_TABLES:
            if ch.cluster is not None:
                ch.command(ch.cluster.truncate(ch.database, table))
            else:
                ch.command(f"TRUNCATE TABLE IF EXISTS {ch.database}.{table}")
            done.append(f"emptied {settings.clickhouse_database}.{table}")
        refresh_now(ch)  # the KPI views now say "empty", not the numbers from before
        done.append("recomputed " + ", ".join(KPI_VIEWS))
    finally:
        ch.close_blocking()
    for group, topic in sink_groups(settings).items():
        moved = asyncio.run(
            rewind_group(settings.kafka_bootstrap, group, topic, settings.kafka_options())
        )
        done.append(f"rewound {group} to the start of {topic} ({moved} partitions)")
    return done
