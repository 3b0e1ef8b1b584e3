"""Kafka TLS and SASL from the environment (streams/kafka_security.py).

The embedded broker (Tansu) speaks neither, so the TLS handshake is proven against a
real TLS listener in the test: it requires a client certificate from the test CA and
records the first Kafka request it decrypts. SASL is checked as what the clients are
given (aiokafka's options, Faust's credentials) and as validation.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer

from streams.config import ConfigError, load_settings

SASL_SECRET = "sasl-pa55-do-not-print"
KEY_SECRET = "key-pa55-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("REFTRACK_"):
            monkeypatch.delenv(name)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA; a server certificate for IP 127.0.0.1 only; a client certificate with
    a key encrypted under KEY_SECRET; and a second, unrelated CA."""
    assert shutil.which("openssl"), "openssl is needed (.ci/run installs it)"
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            cwd=d,
        )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    _openssl(
        "pkey",
        "-in",
        "client.key",
        "-aes256",
        "-passout",
        f"pass:{KEY_SECRET}",
        "-out",
        "client.enc.key",
        cwd=d,
    )
    (d / "not-a-pem.txt").write_text("hello\n")
    names = ("ca", "other-ca", "server", "client")
    files = {name: d / f"{name}.pem" for name in names}
    files.update({f"{name}.key": d / f"{name}.key" for name in names})
    return {**files, "client.enc.key": d / "client.enc.key", "not-a-pem": d / "not-a-pem.txt"}


def tls_env(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], **extra: str) -> None:
    monkeypatch.setenv("REFTRACK_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_CAFILE", str(pki["ca"]))
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_CERTFILE", str(pki["client"]))
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_KEYFILE", str(pki["client.enc.key"]))
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_KEY_PASSWORD", KEY_SECRET)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


class TlsListener:
    """A TLS server that wants a client certificate from the test CA and records the
    header (api key, client id) of the first Kafka request it can decrypt."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(pki["server"]), str(pki["server.key"]))
        self.context.load_verify_locations(cafile=str(pki["ca"]))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.requests: list[tuple[int, str]] = []
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            body = await reader.readexactly(size)
            api_key, _version, _correlation, id_len = struct.unpack(">hhih", body[:10])
            self.requests.append((api_key, body[10 : 10 + id_len].decode()))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def attempt(self, host: str, options: dict[str, Any]) -> list[tuple[int, str]]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        port = server.sockets[0].getsockname()[1]
        producer = AIOKafkaProducer(
            bootstrap_servers=f"{host}:{port}",
            client_id="reftrack-tls-test",
            request_timeout_ms=2000,
            **options,
        )
        try:
            with pytest.raises(Exception):  # noqa: B017  (no broker behind the listener)
                await asyncio.wait_for(producer.start(), 10)
        finally:
            await producer.stop()
            server.close()
            await server.wait_closed()
        return list(self.requests)


def test_plaintext_is_the_default() -> None:
    settings = load_settings()
    assert settings.kafka_options() == {"security_protocol": "PLAINTEXT"}
    assert settings.kafka_security.faust_credentials() is None


def test_mutual_tls_handshake_reaches_a_real_tls_listener(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    tls_env(monkeypatch, pki)
    options = load_settings().kafka_options()
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    seen = asyncio.run(TlsListener(pki).attempt("127.0.0.1", options))
    assert seen and seen[0] == (18, "reftrack-tls-test")  # ApiVersions, decrypted


def test_tls_refuses_a_broker_of_another_ca_and_a_wrong_host_name(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    tls_env(monkeypatch, pki, REFTRACK_KAFKA_SSL_CAFILE=str(pki["other-ca"]))
    assert asyncio.run(TlsListener(pki).attempt("127.0.0.1", load_settings().kafka_options())) == []
    # The certificate names IP 127.0.0.1, not "localhost": refused unless checks are off.
    tls_env(monkeypatch, pki)
    assert asyncio.run(TlsListener(pki).attempt("localhost", load_settings().kafka_options())) == []
    tls_env(monkeypatch, pki, REFTRACK_KAFKA_SSL_CHECK_HOSTNAME="false")
    seen = asyncio.run(TlsListener(pki).attempt("localhost", load_settings().kafka_options()))
    assert seen and seen[0][0] == 18


def test_without_the_client_certificate_the_listener_hears_nothing(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    monkeypatch.setenv("REFTRACK_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_CAFILE", str(pki["ca"]))
    assert asyncio.run(TlsListener(pki).attempt("127.0.0.1", load_settings().kafka_options())) == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_reaches_every_client(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], mechanism: str
) -> None:
    monkeypatch.setenv("REFTRACK_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("REFTRACK_KAFKA_SSL_CAFILE", str(pki["ca"]))
    monkeypatch.setenv("REFTRACK_KAFKA_SASL_MECHANISM", mechanism)
    monkeypatch.setenv("REFTRACK_KAFKA_SASL_USERNAME", "reftrack")
    monkeypatch.setenv("REFTRACK_KAFKA_SASL_PASSWORD", SASL_SECRET)
    settings = load_settings()
    options = settings.kafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (mechanism, "reftrack")
    assert options["sasl_plain_password"] == SASL_SECRET
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = settings.kafka_security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == mechanism
    # What Faust hands aiokafka: the same protocol, mechanism and user.
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_plain_username"] == "reftrack"
    described = settings.kafka_security.describe()
    assert mechanism in described and SASL_SECRET not in described
    assert SASL_SECRET not in repr(settings) and SASL_SECRET not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {
                "REFTRACK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "REFTRACK_KAFKA_SASL_MECHANISM": "PLAIN",
                "REFTRACK_KAFKA_SASL_USERNAME": "u",
            },
            "needs REFTRACK_KAFKA_SASL_PASSWORD",
        ),
        (
            {"REFTRACK_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "needs REFTRACK_KAFKA_SASL_MECHANISM, REFTRACK_KAFKA_SASL_USERNAME, "
            "REFTRACK_KAFKA_SASL_PASSWORD",
        ),
        (
            {"REFTRACK_KAFKA_SASL_USERNAME": "u", "REFTRACK_KAFKA_SASL_PASSWORD": SASL_SECRET},
            "REFTRACK_KAFKA_SASL_USERNAME, REFTRACK_KAFKA_SASL_PASSWORD set but "
            "REFTRACK_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        ({"REFTRACK_KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem"}, "use SSL or SASL_SSL"),
        (
            {
                "REFTRACK_KAFKA_SECURITY_PROTOCOL": "SSL",
                "REFTRACK_KAFKA_SSL_CAFILE": "/nonexistent.pem",
            },
            "REFTRACK_KAFKA_SSL_CAFILE: no readable file at /nonexistent.pem",
        ),
        (
            {
                "REFTRACK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "REFTRACK_KAFKA_SASL_MECHANISM": "GSSAPI",
                "REFTRACK_KAFKA_SASL_USERNAME": "u",
                "REFTRACK_KAFKA_SASL_PASSWORD": "p",
            },
            "REFTRACK_KAFKA_SASL_MECHANISM",
        ),
        ({"REFTRACK_KAFKA_SECURITY_PROTOCOL": "TLS"}, "REFTRACK_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_settings_that_cannot_work_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert message in str(caught.value)
    assert SASL_SECRET not in str(caught.value)


def test_bad_files_and_a_wrong_key_password_are_named_not_shown(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    tls_env(monkeypatch, pki, REFTRACK_KAFKA_SSL_CAFILE=str(pki["not-a-pem"]))
    with pytest.raises(ConfigError, match="REFTRACK_KAFKA_SSL_CAFILE .* is not a PEM CA bundle"):
        load_settings()
    wrong = "wrong-pa55-do-not-print"
    tls_env(monkeypatch, pki, REFTRACK_KAFKA_SSL_KEY_PASSWORD=wrong)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "cannot load the client certificate and key" in str(caught.value)
    assert wrong not in str(caught.value) and KEY_SECRET not in str(caught.value)
    tls_env(monkeypatch, pki)
    monkeypatch.delenv("REFTRACK_KAFKA_SSL_KEYFILE")
    with pytest.raises(ConfigError, match="go together"):
        load_settings()


def test_every_kafka_client_gets_the_options(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], tmp_path: Path
) -> None:
    """The worker's Faust app and its ingest and sink consumers are built with the settings'
    security (the topic admin, produce, simulate and replay take the same options)."""
    from streams.app import create_pipeline

    tls_env(monkeypatch, pki)
    monkeypatch.setenv("REFTRACK_PSEUDONYM_KEY", "k" * 32)
    monkeypatch.setenv("REFTRACK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REFTRACK_STORE", "memory")
    pipeline = create_pipeline(load_settings())
    try:
        assert isinstance(pipeline.app.conf.broker_credentials, faust.SSLCredentials)
        for client in [*pipeline.sinks, pipeline.ingest]:
            assert client.consumer_options["security_protocol"] == "SSL"
            assert isinstance(client.consumer_options["ssl_context"], ssl.SSLContext)
    finally:
        pipeline.clickhouse.close_blocking()
