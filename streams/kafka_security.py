"""How every Kafka client of reftrack authenticates and encrypts: one place, from the env.

REFTRACK_KAFKA_SECURITY_PROTOCOL picks PLAINTEXT (default), SSL, SASL_PLAINTEXT or
SASL_SSL. SASL takes a mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), a user and a
password; SSL takes a CA file (else the system's), an optional client certificate and
key (mutual TLS), and checks the broker's host name unless told not to.

Everything is checked when the settings load, before any connection: files exist and
parse (the SSL context is built), and settings that the protocol would ignore are an
error rather than a silent downgrade. Passwords are SecretStr: never in a message, a
log line or a repr. The same options go to Faust (its credentials object), the sinks'
consumers, the topic admin client, `reftrack produce`/`simulate` and `replay`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work; says which variable, never a secret."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def check(self) -> None:
        """Raise KafkaSecurityError for settings that cannot work (see module doc)."""
        sasl = {
            "REFTRACK_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "REFTRACK_KAFKA_SASL_USERNAME": self.sasl_username,
            "REFTRACK_KAFKA_SASL_PASSWORD": self.sasl_password,
        }
        tls = {
            "REFTRACK_KAFKA_SSL_CAFILE": self.ssl_cafile,
            "REFTRACK_KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "REFTRACK_KAFKA_SSL_KEYFILE": self.ssl_keyfile,
            "REFTRACK_KAFKA_SSL_KEY_PASSWORD": self.ssl_key_password,
        }
        sasl_given = [name for name, value in sasl.items() if value is not None]
        ssl_given = [name for name, value in tls.items() if value is not None]
        if self.uses_sasl:
            missing = [name for name, value in sasl.items() if not _present(value)]
            if missing:
                raise KafkaSecurityError(
                    f"REFTRACK_KAFKA_SECURITY_PROTOCOL={self.protocol} needs " + ", ".join(missing)
                )
        elif sasl_given:
            raise KafkaSecurityError(
                f"{', '.join(sasl_given)} set but REFTRACK_KAFKA_SECURITY_PROTOCOL is "
                f"{self.protocol}: use SASL_SSL (or SASL_PLAINTEXT) or unset them"
            )
        if not self.uses_ssl and ssl_given:
            raise KafkaSecurityError(
                f"{', '.join(ssl_given)} set but REFTRACK_KAFKA_SECURITY_PROTOCOL is "
                f"{self.protocol}: use SSL or SASL_SSL, or unset them"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise KafkaSecurityError(
                "REFTRACK_KAFKA_SSL_CERTFILE and REFTRACK_KAFKA_SSL_KEYFILE go together "
                "(mutual TLS needs both)"
            )
        if self.uses_ssl:
            self.ssl_context()

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every client; reading the files here makes a bad path or
        PEM fail at start, naming the variable."""
        for name, path in (
            ("REFTRACK_KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("REFTRACK_KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("REFTRACK_KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise KafkaSecurityError(f"{name}: no readable file at {path}")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ssl_cafile is not None:
            try:
                context.load_verify_locations(cafile=str(self.ssl_cafile))
            except (ssl.SSLError, OSError) as exc:
                raise KafkaSecurityError(
                    f"REFTRACK_KAFKA_SSL_CAFILE ({self.ssl_cafile}) is not a PEM CA "
                    f"bundle: {_reason(exc)}"
                ) from None
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            try:
                context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile), password)
            except (ssl.SSLError, OSError) as exc:
                raise KafkaSecurityError(
                    "REFTRACK_KAFKA_SSL_CERTFILE / REFTRACK_KAFKA_SSL_KEYFILE: cannot load "
                    f"the client certificate and key ({_reason(exc)}); wrong "
                    "REFTRACK_KAFKA_SSL_KEY_PASSWORD, or a key that does not match"
                ) from None
        context.check_hostname = self.ssl_check_hostname
        return context

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_ssl:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            assert self.sasl_password is not None  # check() ran when settings loaded
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials`: None for PLAINTEXT."""
        import faust

        if self.uses_sasl:
            assert self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context() if self.uses_ssl else None,
            )
        if self.uses_ssl:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """For the start-up log line: what is used, never a secret."""
        parts: list[str] = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.uses_ssl:
            parts.append(f"CA {self.ssl_cafile or 'system'}")
            if self.ssl_certfile:
                parts.append("client certificate")
            if not self.ssl_check_hostname:
                parts.append("host name NOT checked")
        return ", ".join(parts)


def _present(value: object) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return bool(value)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or type(exc).__name__
