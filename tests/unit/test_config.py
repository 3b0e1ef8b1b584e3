"""Configuration is validated at start, with messages that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import ConfigError, Settings, Topics, is_loopback, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("REFTRACK_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_contract(tmp_path: object) -> None:
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic_prefix == "referrals"
    assert (s.web_bind, s.web_port) == ("127.0.0.1", 6066)
    assert s.dsn.startswith("chdb:///") and s.dsn.endswith("/var/clickhouse")
    assert s.embedded_clickhouse


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("REFTRACK_CLICKHOUSE_DSN", "https://u:p@ch:8443/")
    monkeypatch.setenv("REFTRACK_TOPIC_PREFIX", "acme.referrals")
    s = load_settings()
    assert s.kafka_bootstrap == "k1:9092,k2:9093"
    assert not s.embedded_clickhouse
    assert Topics(s.topic_prefix).status == "acme.referrals.status.v1"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("REFTRACK_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("REFTRACK_CLICKHOUSE_DSN", "postgres://x", "chdb:///"),
        ("REFTRACK_CLICKHOUSE_DSN", "chdb://relative/path", "absolute"),
        ("REFTRACK_WEB_PORT", "70000", "less than or equal"),
        ("REFTRACK_PARTITIONS", "0", "greater than or equal"),
        ("REFTRACK_STORE", "redis", "rocksdb"),
        ("REFTRACK_TOPIC_PREFIX", "bad prefix!", "pattern"),
        ("REFTRACK_CLICKHOUSE_DATABASE", "drop table;", "pattern"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert variable in str(err.value)
    assert fragment in str(err.value)


def test_token_required_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_WEB_BIND", "0.0.0.0")
    with pytest.raises(ConfigError, match="REFTRACK_API_TOKEN is required"):
        load_settings()
    monkeypatch.setenv("REFTRACK_API_TOKEN", "s3cret")
    assert load_settings().web_bind == "0.0.0.0"


def test_secrets_are_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_PSEUDONYM_KEY", "very-secret-key")
    monkeypatch.setenv("REFTRACK_API_TOKEN", "very-secret-token")
    shown = repr(load_settings())
    assert "very-secret" not in shown


def test_missing_pseudonym_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="REFTRACK_PSEUDONYM_KEY is not set"):
        _ = Settings().pseudonym_key_bytes


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_short_pseudonym_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFTRACK_PSEUDONYM_KEY", "short")
    with pytest.raises(ConfigError, match="too short"):
        _ = load_settings().pseudonym_key_bytes


def test_a_bad_sla_file_stops_start_naming_the_variable_and_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "sla.yaml"
    bad.write_text("orgs:\n  acme:\n    routing: {urgnt: 12h}\n", encoding="utf-8")
    monkeypatch.setenv("REFTRACK_SLA_FILE", str(bad))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "REFTRACK_SLA_FILE" in message and "orgs.acme.routing.urgnt" in message
    monkeypatch.setenv("REFTRACK_SLA_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_settings()


def test_the_example_sla_file_and_clock_modes_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "sla.example.yaml"
    monkeypatch.setenv("REFTRACK_SLA_FILE", str(example))
    clock_file = tmp_path / "clock"
    clock_file.write_text("2025-01-01T00:00:00Z")
    for clock in ("wall", "event", f"file:{clock_file}"):
        monkeypatch.setenv("REFTRACK_CLOCK", clock)
        assert load_settings().clock == clock
    for bad in ("sundial", f"file:{tmp_path / 'nowhere'}"):
        monkeypatch.setenv("REFTRACK_CLOCK", bad)
        with pytest.raises(ConfigError, match="REFTRACK_CLOCK"):
            load_settings()
