"""schemas.snapshot.iso: the hand-made RFC 3339 formatting says what datetime's does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas.snapshot import iso

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
LAST = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)


def reference(us: int) -> str:
    moment = EPOCH + timedelta(microseconds=us)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@given(st.integers(min_value=FIRST, max_value=LAST))
def test_every_representable_time_is_formatted_as_datetime_does(us: int) -> None:
    assert iso(us) == reference(us)


def test_edges_of_days_and_the_epoch() -> None:
    day = 86_400_000_000
    for us in (0, -1, 1, day - 1, day, -day, FIRST, LAST, 1_796_000_000_123_456):
        assert iso(us) == reference(us)
    assert iso(1_796_000_000_123_456) == "2026-11-30T00:53:20.123456Z"
    assert iso(None) is None
