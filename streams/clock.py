"""What "now" is for flags and alerts (SPEC §5), chosen by REFTRACK_CLOCK.

- `wall` (default): the machine's clock; a timer re-checks due referrals every
  REFTRACK_ALERT_TICK_SECONDS.
- `event`: each tracked partition's event-time watermark (the newest occurred_at seen
  there). Replaying last year's events raises and resolves the same alerts at the same
  event times; time only moves when events arrive, so the timer does nothing.
- `file:PATH`: the instant written in PATH (RFC 3339), re-read when the file changes. An
  injected clock for tests and drills ("what would fire on Monday morning?").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from schemas.events import to_micros


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Clock:
    mode: str  # "wall", "event" or "file"
    path: Path | None = None
    _cached: tuple[float, int] | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, spec: str) -> Clock:
        if spec in ("wall", "event"):
            return cls(spec)
        if spec.startswith("file:") and len(spec) > 5:
            return cls("file", Path(spec[5:]))
        raise ValueError(f"unknown clock {spec!r}: use wall, event or file:PATH")

    @property
    def event_time(self) -> bool:
        return self.mode == "event"

    def now(self) -> int:
        """The current instant (µs) in wall and file mode; event mode asks the partition."""
        if self.mode == "file":
            return self._read_file()
        return wall_clock_us()

    def _read_file(self) -> int:
        assert self.path is not None
        mtime = os.stat(self.path).st_mtime
        if self._cached is None or self._cached[0] != mtime:
            text = self.path.read_text(encoding="utf-8").strip()
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if value.tzinfo is None:
                raise ValueError(f"clock file {self.path}: {text!r} has no UTC offset")
            self._cached = (mtime, to_micros(value))
        return self._cached[1]
