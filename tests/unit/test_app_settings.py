"""Settings that reach the worker's Faust app and clients (built, not started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.app import create_pipeline
from streams.config import ConfigError, load_settings
from streams.ingest import ingest_group


def test_producer_batch_size_and_ingest_group_follow_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REFTRACK_PSEUDONYM_KEY", "k" * 32)
    monkeypatch.setenv("REFTRACK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REFTRACK_STORE", "memory")
    monkeypatch.setenv("REFTRACK_APP_ID", "clinic-a")
    monkeypatch.setenv("REFTRACK_KAFKA_PRODUCER_BATCH_BYTES", str(64 << 10))
    pipeline = create_pipeline(load_settings())
    try:
        assert pipeline.app.conf.producer_max_batch_size == 64 << 10
        assert pipeline.ingest.group_id == ingest_group("clinic-a") == "clinic-a.ingest"
        assert pipeline.ingest.topic == pipeline.topics.events
        # ingest is the app's upstream service, stopped before the app's own consumer
        assert pipeline.app.upstream is pipeline.ingest
    finally:
        pipeline.clickhouse.close_blocking()


def test_a_producer_batch_below_16_kib_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_KAFKA_PRODUCER_BATCH_BYTES", "1000")
    with pytest.raises(ConfigError, match="REFTRACK_KAFKA_PRODUCER_BATCH_BYTES"):
        load_settings()
