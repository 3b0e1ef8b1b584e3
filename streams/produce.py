"""`reftrack produce FILE`: send an NDJSON file of canonical events to Kafka, one line
per message, keyed by `referral_id` when the line has one (keys are a hint only)."""

from __future__ import annotations

import json
from pathlib import Path

from aiokafka import AIOKafkaProducer


def _key(line: bytes) -> bytes | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    rid = doc.get("referral_id") if isinstance(doc, dict) else None
    return rid.encode("utf-8") if isinstance(rid, str) else None


async def produce_file(path: Path, bootstrap: str, topic: str, batch: int = 500) -> int:
    """Send every non-empty line; return how many were acknowledged by the broker."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        pending = []
        with path.open("rb") as handle:
            for raw_line in handle:
                line = raw_line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                pending.append(await producer.send(topic, value=line, key=_key(line)))
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
