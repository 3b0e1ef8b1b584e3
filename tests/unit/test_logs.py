"""Log lines: JSON shape, and library repeats summarized (streams/logs.py)."""

from __future__ import annotations

import json
import logging

from streams.logs import JsonFormatter, RepeatFilter


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_library_repeats_pass_once_per_window_and_say_how_many_were_held() -> None:
    now = [100.0]
    repeats = RepeatFilter(window=10.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    shown = []
    for second in range(25):  # 25 s of an outage, 100 lines a second
        now[0] = 100.0 + second
        for attempt in range(100):
            r = record("aiokafka.conn", template, 0, f"[Errno 111] try {attempt}")
            if repeats.filter(r):
                shown.append(r.getMessage())
    assert len(shown) == 3  # at 0 s, 10 s and 20 s
    assert shown[0] == "Unable connect to node with id 0: [Errno 111] try 0"
    assert shown[1].endswith("(999 more like this in the last 10 s)")
    # another template, another level, or reftrack's own logger: not held back
    assert repeats.filter(record("aiokafka.conn", "Unable to update metadata"))
    assert repeats.filter(record("aiokafka.conn", template, 0, "x", level=logging.WARNING))
    assert all(repeats.filter(record("sinks.topic_sink", "insert failed")) for _ in range(5))


def test_json_lines_carry_level_logger_and_message() -> None:
    line = json.loads(JsonFormatter().format(record("streams.worker", "worker %s up", "a")))
    assert (line["level"], line["logger"], line["msg"]) == (
        "error",
        "streams.worker",
        "worker a up",
    )
