"""Create the topics reftrack owns before anything consumes them.

Creating them here (not on first use) gives the status topic its compaction, gives
the internal topic the partition count the referral table needs, and fails start-up
with a clear message when the brokers cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.config import Settings, Topics

log = logging.getLogger(__name__)


class TopicError(Exception):
    """The brokers cannot be reached, or a topic exists in a shape reftrack cannot use."""


def wanted_topics(settings: Settings) -> list[NewTopic]:
    names = Topics(settings.topic_prefix)
    n, rf = settings.partitions, settings.replication_factor
    return [
        NewTopic(names.events, n, rf),
        NewTopic(names.tracked, n, rf),
        NewTopic(names.status, n, rf, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(names.dlq, n, rf),
        NewTopic(names.alerts, n, rf),
        NewTopic(names.rates, n, rf, topic_configs={"cleanup.policy": "compact"}),
        NewTopic(names.idlinks, n, rf),
        *(NewTopic(name, n, rf) for name in names.raw.values()),
    ]


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        request_timeout_ms=int(timeout * 1000),
        **settings.kafka_options(),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise TopicError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({type(exc).__name__}); "
            "is the broker running? (`reftrack broker` starts an embedded one)"
        ) from None
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted_topics(settings) if t.name not in existing]
        for topic in missing:
            try:
                await admin.create_topics([topic])
                log.info("created topic %s (%d partitions)", topic.name, topic.num_partitions)
            except TopicAlreadyExistsError:
                pass
        tracked = Topics(settings.topic_prefix).tracked
        described = await admin.describe_topics([tracked])
        count = len(described[0].get("partitions", [])) if described else 0
        if count and count != settings.partitions:
            raise TopicError(
                f"{tracked} has {count} partitions but REFTRACK_PARTITIONS is "
                f"{settings.partitions}; they must match (the referral table is co-partitioned)"
            )
    finally:
        await admin.close()


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of `topic`, as a started consumer's metadata knows them (refreshed
    once if it does not know the topic yet); empty if the topic does not exist."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def offsets_client(
    bootstrap: str, group: str, options: dict[str, Any] | None = None
) -> AIOKafkaConsumer:
    """A client of consumer group `group` that never joins it: it only reads or commits
    the group's offsets (for partitions it is assigned by hand). Start it, then stop it."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **(options or {})
    )
