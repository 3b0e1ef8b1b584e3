"""JSON logs, one object per line, for log shippers; `text` for humans at a terminal.

Log calls in reftrack never carry event payloads or patient ids, only where a message
came from (topic/partition/offset) and why it was rejected.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Libraries that repeat one line thousands of times while a broker is unreachable
# (aiokafka logged about 4,500 errors in a 12 s outage): their repeats are summarized.
CHATTY = ("aiokafka", "faust", "mode", "kafka")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RepeatFilter(logging.Filter):
    """Let the first of identical library log lines through, then at most one per
    `window` seconds, saying how many were held back. Identical: same logger, level and
    message template (the arguments may differ). reftrack's own lines always pass."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CHATTY):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        shown_at, held = self._seen.get(key, (float("-inf"), 0))
        if now - shown_at < self.window:
            self._seen[key] = (shown_at, held + 1)
            return False
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.window:.0f} s)"
        self._seen[key] = (now, 0)
        if len(self._seen) > 10_000:  # templates are few; bound it anyway
            self._seen.clear()
        return True


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    formatter = (
        {"()": "streams.logs.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"repeats": {"()": "streams.logs.RepeatFilter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["repeats"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # Faust and aiokafka are chatty at info; their warnings still come through.
            "faust": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
            "aiokafka": {"level": "WARNING"},
        },
    }


def configure(level: str, fmt: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
