"""The ClickHouse server path is configured from REFTRACK_CLICKHOUSE_DSN alone: host, port,
TLS, credentials, settings and database, checked without a server (issue 9). The manual
check against a real server is in docs/operations.md."""

from __future__ import annotations

import pytest

from sinks.clickhouse import ClickHouse, ClickHouseError, DsnError, http_client_args, scrub
from streams.config import ConfigError, load_settings


def test_https_with_credentials_tls_and_settings() -> None:
    args = http_client_args(
        "https://bi%40acme:p%3Ass%2Fw@ch.example.org:9440/reftrack"
        "?verify=false&ca_cert=/etc/ssl/ca.pem&client_cert=/etc/c.pem&client_cert_key=/etc/k.pem"
        "&connect_timeout=5&max_execution_time=60&async_insert=1"
    )
    assert args == {
        "interface": "https",
        "host": "ch.example.org",
        "port": 9440,
        "secure": True,
        "username": "bi@acme",
        "password": "p:ss/w",
        "database": None,  # reftrack creates and selects its own database
        "verify": False,
        "ca_cert": "/etc/ssl/ca.pem",
        "client_cert": "/etc/c.pem",
        "client_cert_key": "/etc/k.pem",
        "connect_timeout": 5.0,
        "settings": {"max_execution_time": "60", "async_insert": "1"},
    }


@pytest.mark.parametrize(
    ("dsn", "port", "secure", "user"),
    [
        ("http://ch:8123/", 8123, False, None),
        ("http://ch", 8123, False, None),
        ("https://ch", 8443, True, None),
        ("https://reader@ch", 8443, True, "reader"),
    ],
)
def test_defaults(dsn: str, port: int, secure: bool, user: str | None) -> None:
    args = http_client_args(dsn)
    assert (args["port"], args["secure"], args["username"], args["password"]) == (
        port,
        secure,
        user,
        "",
    )
    assert "verify" not in args  # certificates are verified unless ?verify=false


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("http://ch/?ca_cert=/x.pem", "use https"),
        ("https://ch/?verify=maybe", "true or false"),
        ("https://ch/?connect_timeout=soon", "seconds"),
        ("https://ch:99999/", "port"),
        ("https:///reftrack", "no host"),
    ],
)
def test_bad_dsns_are_refused(dsn: str, problem: str) -> None:
    with pytest.raises(DsnError, match=problem):
        http_client_args(dsn)


def test_start_up_names_the_variable_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(clickhouse_dsn="https://admin:hunter2@ch:notaport/")
    assert "REFTRACK_CLICKHOUSE_DSN" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_dsn_naming_another_database_is_refused() -> None:
    with pytest.raises(ConfigError, match="REFTRACK_CLICKHOUSE_DATABASE"):
        load_settings(clickhouse_dsn="https://ch/analytics")
    assert load_settings(clickhouse_dsn="https://ch/reftrack").dsn == "https://ch/reftrack"


def test_connection_errors_never_show_credentials() -> None:
    # nothing listens on port 1: the real client fails, the message is scrubbed
    ch = ClickHouse("http://admin:hunter2@127.0.0.1:1/?connect_timeout=1", "reftrack")
    with pytest.raises(ClickHouseError) as caught:
        ch.command("SELECT 1")
    assert "hunter2" not in str(caught.value) and "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("failed: http://admin:hunter2@ch:8123/?x=1", "failed: http://***@ch:8123"),
        (
            "HTTP 500 from https://ch.example:8443/?password=hunter2&query=SELECT",
            "HTTP 500 from https://ch.example:8443",
        ),
        ("url 'https://u:p@h/db?user=u&password=hunter2' refused", "url 'https://***@h' refused"),
        ("no url here: hunter2 is just text", "no url here: hunter2 is just text"),
    ],
)
def test_scrub_keeps_only_scheme_host_and_port(message: str, shown: str) -> None:
    assert scrub(message) == shown
