"""`reftrack produce FILE`: send a file of messages to Kafka.

NDJSON files (canonical events, FHIR resources, webhooks, claims) are one message per
line, keyed by `referral_id` when the line has one (keys are a hint only). HL7 v2 files
hold messages one after another, each starting at an `MSH` line, as interface engines
write them; they are sent with `\r` segment separators and no key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer


def _key(line: bytes) -> bytes | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    rid = doc.get("referral_id") if isinstance(doc, dict) else None
    return rid.encode("utf-8") if isinstance(rid, str) else None


def hl7_messages(data: bytes) -> list[bytes]:
    """Split an HL7 v2 file into messages: a message starts at each MSH segment."""
    messages: list[list[bytes]] = []
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        line = line.strip(b"\x0b\x1c")
        if not line.strip():
            continue
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def _messages(path: Path, framing: str) -> Iterator[tuple[bytes | None, bytes]]:
    if framing == "hl7v2":
        for message in hl7_messages(path.read_bytes()):
            yield None, message
        return
    with path.open("rb") as handle:
        for raw_line in handle:
            line = raw_line.rstrip(b"\r\n")
            if line.strip():
                yield _key(line), line


async def produce_file(
    path: Path,
    bootstrap: str,
    topic: str,
    batch: int = 500,
    framing: str = "lines",
    kafka_options: dict[str, Any] | None = None,
) -> int:
    """Send every message of the file; return how many the broker acknowledged.
    `kafka_options`: TLS/SASL (Settings.kafka_options)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(kafka_options or {})
    )
    await producer.start()
    sent = 0
    try:
        pending = []
        for key, value in _messages(path, framing):
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= batch:
                for fut in pending:
                    await fut
                sent += len(pending)
                pending = []
        for fut in pending:
            await fut
        sent += len(pending)
    finally:
        await producer.stop()
    return sent
