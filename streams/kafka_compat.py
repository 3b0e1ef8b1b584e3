"""Broker quirks we work around, each with the reason.

Tansu (the embedded broker) answers ListOffsets(latest) with the base offset of the
partition's last record batch + 1, not the offset after its last record: after a batch
of 3 records at offsets 10-12 it reports 11 where Kafka reports 13. Fetch responses
carry the right high watermark. Faust's table recovery reads changelogs up to the
ListOffsets answer, so without a fix it would stop short (memory store: lost state) or
refuse to start (RocksDB: "persisted offset is higher than the highwater").

`install_end_offsets_probe()` makes `AIOKafkaConsumer.end_offsets` confirm each answer
with one fetch from the last batch and return the fetch's high watermark when it is
higher. On Apache Kafka the two agree, so the probe only costs a round trip at
rebalances; REFTRACK_KAFKA_END_OFFSETS_PROBE=false turns it off.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

_original_end_offsets = AIOKafkaConsumer.end_offsets
_CLIENT_SETTINGS = {
    "security_protocol": "_security_protocol",
    "ssl_context": "_ssl_context",
    "sasl_mechanism": "_sasl_mechanism",
    "sasl_plain_username": "_sasl_plain_username",
    "sasl_plain_password": "_sasl_plain_password",
    "sasl_kerberos_service_name": "_sasl_kerberos_service_name",
    "sasl_kerberos_domain_name": "_sasl_kerberos_domain_name",
    "sasl_oauth_token_provider": "_sasl_oauth_token_provider",
}


async def fetched_highwaters(
    client: Any, listed: dict[TopicPartition, int], timeout_ms: int = 30_000
) -> dict[TopicPartition, int]:
    """High watermarks from one fetch per partition, starting at its last batch."""
    nonempty = [tp for tp, end in listed.items() if end > 0]
    if not nonempty:
        return dict(listed)
    options = {
        name: getattr(client, attr)
        for name, attr in _CLIENT_SETTINGS.items()
        if getattr(client, attr, None) is not None
    }
    probe = AIOKafkaConsumer(
        bootstrap_servers=client._bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=1024 * 1024,  # the whole last batch, however large
        **options,
    )
    await probe.start()
    try:
        probe.assign(nonempty)
        for tp in nonempty:
            probe.seek(tp, listed[tp] - 1)
        pending = set(nonempty)
        for _ in range(max(1, timeout_ms // 250)):
            if not pending:
                break
            await probe.getmany(*pending, timeout_ms=250)
            pending = {tp for tp in pending if probe.highwater(tp) is None}
        if pending:
            log.warning(
                "end-offset probe got no answer for %s within %.0fs; using the broker's "
                "ListOffsets answer, which the embedded broker may understate",
                sorted(f"{tp.topic}/{tp.partition}" for tp in pending),
                timeout_ms / 1000,
            )
        out = dict(listed)
        for tp in nonempty:
            fetched = probe.highwater(tp)
            if fetched is not None and fetched > listed[tp]:
                out[tp] = fetched
        return out
    finally:
        await probe.stop()


async def _probed_end_offsets(self: AIOKafkaConsumer, partitions: Any) -> dict[TopicPartition, int]:
    listed = await _original_end_offsets(self, partitions)
    try:
        return await fetched_highwaters(self._client, dict(listed))
    except Exception as exc:  # a failed probe must not be worse than no probe
        log.warning("end-offset probe failed, using the broker's answer: %s", exc)
        return dict(listed)


def install_end_offsets_probe() -> None:
    """Patch AIOKafkaConsumer.end_offsets in this process (idempotent)."""
    AIOKafkaConsumer.end_offsets = _probed_end_offsets  # type: ignore[method-assign]


_original_consumer_init = AIOKafkaConsumer.__init__
_fetch_max_wait_ms: int | None = None


def _init_with_fetch_wait(self: AIOKafkaConsumer, *topics: str, **kwargs: Any) -> None:
    if _fetch_max_wait_ms is not None:
        kwargs["fetch_max_wait_ms"] = _fetch_max_wait_ms
    _original_consumer_init(self, *topics, **kwargs)


def install_fetch_max_wait(ms: int) -> None:
    """Cap how long the broker may hold a fetch, for every consumer in this process.

    Faust hard-codes fetch_max_wait_ms=1500 for its consumer. Tansu then answers a fetch
    about 450 ms after new data arrives, where Kafka answers at once (fetch_min_bytes=1):
    measured here, 451 ms at 1500 and 2 ms at 100. Every hop of the pipeline (events →
    ingest → tracked → tracker → status → sink) pays it, so throughput and freshness
    collapse. REFTRACK_KAFKA_FETCH_MAX_WAIT_MS (default 100) costs an idle consumer ten
    empty fetches a second on Kafka, and nothing else.
    """
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = ms
    AIOKafkaConsumer.__init__ = _init_with_fetch_wait  # type: ignore[method-assign]
