"""One validated settings object, read once from the environment (SPEC §8), passed down.

Nothing else in reftrack reads os.environ. A bad value stops start-up with a message
that names the variable.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.adapters.config import SourcesConfigError, load_sources
from schemas.sla import SlaConfigError, load_policy
from sinks.clickhouse import (
    ClickHouse,
    DsnError,
    chdb_client_args,
    dsn_database,
    http_client_args,
)
from sinks.cluster import ClusterLayout
from streams.clock import Clock
from streams.kafka_security import KafkaSecurity, KafkaSecurityError, Mechanism, Protocol

MIN_PSEUDONYM_KEY_BYTES = 16


class ConfigError(Exception):
    """Configuration that cannot work; the message says which variable and why."""


class Settings(BaseSettings):
    """reftrack configuration; every field is `REFTRACK_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="REFTRACK_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,...] of the brokers")
    kafka_security_protocol: Protocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (docs/security.md)"
    )
    kafka_sasl_mechanism: Mechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="PEM CA bundle; unset: the system's")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    clickhouse_dsn: str | None = Field(
        None,
        description="chdb:///abs/path (embedded; default <data_dir>/clickhouse) or "
        "http(s)://user:pass@host:port/",
    )
    clickhouse_database: str = Field("reftrack", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    clickhouse_cluster: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="create tables ON CLUSTER (Replicated*MergeTree `<t>_local` with a "
        "Distributed `<t>` in front; docs/operations.md); unset: one server",
    )
    clickhouse_replicated: bool = Field(
        True, description="with a cluster: replicated local tables (false: shards only)"
    )
    clickhouse_replica_path: str = Field(
        "",
        description="with a cluster: Keeper path of each local table; empty: the "
        "server's default_replica_path (/clickhouse/tables/{uuid}/{shard})",
    )
    clickhouse_migrate_on_start: bool = Field(
        True,
        description="apply pending migrations at worker start; false: refuse to start "
        "until `reftrack migrate` has run (one migrator at a time)",
    )
    data_dir: Path = Field(
        Path("./var"), description="local state: Faust tables, embedded ClickHouse"
    )
    topic_prefix: str = Field("referrals", pattern=r"^[A-Za-z0-9._-]+$")
    pseudonym_key: SecretStr | None = Field(None, description="HMAC key for patient ids")
    web_bind: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    api_token: SecretStr | None = None

    app_id: str = Field("reftrack", pattern=r"^[A-Za-z0-9._-]+$", description="consumer group id")
    partitions: int = Field(8, ge=1, description="partitions of the topics reftrack creates")
    replication_factor: int = Field(1, ge=1)
    store: Literal["rocksdb", "memory"] = "rocksdb"
    kafka_connect_timeout: float = Field(
        30.0, gt=0, description="how long start-up waits for the brokers (s)"
    )
    session_timeout: float = Field(10.0, gt=0, description="Kafka consumer session timeout (s)")
    # 4,000: a batch is only that large when the tracker is behind (at 2,000 events/s a
    # 0.1 s batch holds 200), and then its fixed costs (broker round trips, flushes) and a
    # referral's several events (one write, one snapshot) spread over more: a backlog ran
    # 10,250-10,420 messages/s at 1,000 and 12,000-12,700 at 4,000 (docs/performance.md)
    tracker_batch: int = Field(
        4000, ge=1, description="events the tracker takes per batch (ingest: per fetch)"
    )
    tracker_batch_seconds: float = Field(0.1, gt=0)
    stall_seconds: float = Field(
        120.0,
        ge=10,
        description="a partition with messages waiting whose position has not moved for this "
        "long is logged and counted as stalled (reftrack_stalled_partitions)",
    )
    window_grace_seconds: float = Field(
        3600.0, ge=0, description="event time a rate window stays open after it ends"
    )
    sink_batch_rows: int = Field(5000, ge=1, description="flush the sink at this many rows")
    sink_flush_seconds: float = Field(1.0, gt=0, description="... or after this long")
    sla_file: Path | None = Field(
        None, description="SLA targets and calendars (YAML, docs/sla.md); unset: SPEC defaults"
    )
    sources_file: Path | None = Field(
        None,
        description="orgs, senders and identifier systems of the raw source topics "
        "(YAML, docs/integrations.md); unset: orgs must be named by the messages",
    )
    clock: str = Field(
        "wall",
        pattern=r"^(wall|event|file:.+)$",
        description="now for flags and alerts: wall, event (watermark, for replays) or file:PATH",
    )
    alert_tick_seconds: float = Field(
        1.0, gt=0, description="how often due referrals are judged (wall and file clocks)"
    )
    kpi_refresh_seconds: int = Field(
        30, ge=1, description="how often kpi_summary, kpi_daily and stage_stats are recomputed"
    )
    event_retention_days: int | None = Field(
        None,
        ge=1,
        description="days `events` and `event_rates` rows stay in ClickHouse (TTL by event "
        "time); unset: kept (sinks/retention.py)",
    )
    kafka_fetch_max_wait_ms: int = Field(
        100, ge=1, le=30_000, description="longest the broker may hold a fetch (all consumers)"
    )
    kafka_producer_batch_bytes: int = Field(
        512 << 10,
        ge=16 << 10,
        description="largest record batch the worker publishes; keep it below the brokers' "
        "message.max.bytes (Kafka's default is 1 MiB)",
    )
    kafka_end_offsets_probe: bool = Field(
        True, description="confirm ListOffsets with a fetch (needed for the embedded broker)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server!r}")
        return value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("chdb://"):
            if not value.startswith("chdb:///"):
                raise ValueError("an embedded DSN is chdb:///absolute/path")
            try:
                chdb_client_args(value)
            except DsnError as exc:
                raise ValueError(str(exc)) from None
            return value
        if value.startswith(("http://", "https://")):
            try:
                http_client_args(value)
            except DsnError as exc:
                raise ValueError(str(exc)) from None
            return value
        raise ValueError("expected chdb:///abs/path or http(s)://user:pass@host:port/")

    @model_validator(mode="after")
    def _dsn_database(self) -> Settings:
        dsn = self.clickhouse_dsn
        named = dsn_database(dsn) if dsn and not dsn.startswith("chdb://") else None
        if named is not None and named != self.clickhouse_database:
            raise ValueError(
                f"REFTRACK_CLICKHOUSE_DSN names database {named!r} but "
                f"REFTRACK_CLICKHOUSE_DATABASE is {self.clickhouse_database!r}: drop the "
                "path from the DSN or make them agree"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        try:
            self.kafka_security.check()
        except KafkaSecurityError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> Settings:
        if self.clickhouse_cluster and self.embedded_clickhouse:
            raise ValueError(
                "REFTRACK_CLICKHOUSE_CLUSTER needs a ClickHouse server "
                "(REFTRACK_CLICKHOUSE_DSN=http(s)://...): the embedded engine has no cluster"
            )
        return self

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Settings:
        if not is_loopback(self.web_bind) and self.api_token is None:
            raise ValueError(
                f"REFTRACK_API_TOKEN is required when REFTRACK_WEB_BIND ({self.web_bind}) "
                "is not a loopback address"
            )
        return self

    # -- derived ---------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.data_dir.resolve() / "faust"

    @property
    def dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.data_dir.resolve() / 'clickhouse').as_posix()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.dsn.startswith("chdb://")

    @property
    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
            ssl_key_password=self.kafka_ssl_key_password,
            ssl_check_hostname=self.kafka_ssl_check_hostname,
        )

    def kafka_options(self) -> dict[str, Any]:
        """Security keyword arguments for an aiokafka client (streams/kafka_security.py)."""
        return self.kafka_security.client_options()

    @property
    def cluster_layout(self) -> ClusterLayout | None:
        if not self.clickhouse_cluster:
            return None
        return ClusterLayout(
            self.clickhouse_cluster,
            replicated=self.clickhouse_replicated,
            replica_path=self.clickhouse_replica_path,
        )

    def clickhouse(self) -> ClickHouse:
        """A client for reftrack's database, in the configured layout."""
        return ClickHouse(self.dsn, self.clickhouse_database, self.cluster_layout)

    @property
    def pseudonym_key_bytes(self) -> bytes:
        if self.pseudonym_key is None or not self.pseudonym_key.get_secret_value():
            raise ConfigError(
                "REFTRACK_PSEUDONYM_KEY is not set: patient ids cannot be pseudonymized. "
                "Set a long random secret (e.g. `openssl rand -hex 32`); only `reftrack demo` "
                "makes up its own."
            )
        key = self.pseudonym_key.get_secret_value().encode()
        if len(key) < MIN_PSEUDONYM_KEY_BYTES:
            raise ConfigError(
                f"REFTRACK_PSEUDONYM_KEY is too short ({len(key)} bytes; at least "
                f"{MIN_PSEUDONYM_KEY_BYTES}): a short key lets anyone test guessed patient ids"
            )
        return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> Settings:
    """Read and validate; raise ConfigError naming each bad variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            name = "REFTRACK_" + str(err["loc"][0]).upper() if err["loc"] else "configuration"
            lines.append(f"  {name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    try:  # the SLA file is configuration too: a mistake stops every command up front
        load_policy(settings.sla_file)
    except SlaConfigError as exc:
        raise ConfigError(f"invalid configuration:\n  REFTRACK_SLA_FILE: {exc}") from None
    try:
        load_sources(settings.sources_file)
    except SourcesConfigError as exc:
        raise ConfigError(f"invalid configuration:\n  REFTRACK_SOURCES_FILE: {exc}") from None
    try:  # an injected clock must be readable from the start
        Clock.parse(settings.clock).now()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"invalid configuration:\n  REFTRACK_CLOCK: {exc}") from None
    return settings


class Topics:
    """Topic names under the configured prefix (SPEC §2)."""

    def __init__(self, prefix: str) -> None:
        self.events = f"{prefix}.events.v1"
        self.tracked = f"{prefix}.tracked.v1"
        self.status = f"{prefix}.status.v1"
        self.dlq = f"{prefix}.dlq.v1"
        self.alerts = f"{prefix}.alerts.v1"
        self.rates = f"{prefix}.rates.v1"
        self.idlinks = f"{prefix}.idlinks.v1"
        self.raw = {
            "fhir": f"{prefix}.raw.fhir.v1",
            "hl7v2": f"{prefix}.raw.hl7v2.v1",
            "comms": f"{prefix}.raw.comms.v1",
            "claims": f"{prefix}.raw.claims.v1",
        }
