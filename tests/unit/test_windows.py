"""schemas/windows.py, and a pure model of streams/windows.py's counter proving the sunk
segment rows add up to exactly the distinct events, through crashes and redelivery."""

from __future__ import annotations

import copy
import json
from collections import Counter
from itertools import accumulate

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.windows import (
    WINDOW_US,
    Counted,
    PartitionProgress,
    PartitionWindows,
    WindowCell,
    cell_key,
    progress_key,
    window_start,
)

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z in µs, a minute boundary
SEC = 1_000_000


def test_window_start_boundaries() -> None:
    assert window_start(T0) == T0
    assert window_start(T0 + WINDOW_US - 1) == T0
    assert window_start(T0 - 1) == T0 - WINDOW_US
    assert window_start(0) == 0 and window_start(WINDOW_US - 1) == 0
    assert window_start(T0 - 1) != window_start(T0)  # across a minute boundary


def test_keys_are_distinct() -> None:
    keys = {
        cell_key(p, org, t, s)
        for p in (0, 1)
        for org in ("a", "b")
        for t in ("x", "y")
        for s in (T0, T0 + WINDOW_US)
    }
    assert len(keys) == 16
    assert progress_key(0) != progress_key(1)
    assert not keys & {progress_key(0), progress_key(1)}


def cell(segment: int = 5, **kw: object) -> WindowCell:
    return WindowCell("org", "referral.created", T0, 3, segment=segment, **kw)  # type: ignore[arg-type]


def test_count_once_counts_each_offset_once() -> None:
    c = cell()
    assert [c.count_once(o) for o in (5, 5, 7, 6, 7, 9)] == [True, False, True, False, False, True]
    assert (c.count, c.max_offset) == (3, 9)


def test_cell_round_trip_row_key_and_closing() -> None:
    c = cell(count=4, max_offset=11)
    assert WindowCell.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.row_key != cell(segment=6).row_key
    assert c.key == cell(segment=6).key == cell_key(3, "org", "referral.created", T0)
    assert c.closes_by(0) == T0 + 60 * SEC
    assert c.closes_by(5 * SEC) == T0 + 65 * SEC


def test_partition_progress() -> None:
    p = PartitionProgress.from_dict(None)
    assert (p.watermark, p.closed_through) == (None, -1)
    assert not p.counted_in_a_closed_window(0)
    for t, expected in ((T0, T0), (T0 - SEC, T0), (T0 + SEC, T0 + SEC)):
        p.see(t)
        assert p.watermark == expected  # only forward
    p.close(cell(max_offset=9))
    p.close(cell(max_offset=4))
    assert p.closed_through == 9
    assert p.counted_in_a_closed_window(9) and not p.counted_in_a_closed_window(10)
    assert PartitionProgress.from_dict(json.loads(json.dumps(p.to_dict()))) == p


# --- the real counter (PartitionWindows) over a plain dict, as streams/windows.py runs it

Event = tuple[int, int, str, str]  # (offset, occurred_at, org_id, type)
Sink = dict[str, tuple[int, int, tuple[str, str, int]]]  # row_key -> (version, count, window)
Op = tuple[str, str, object]  # ("set" | "del", key, value)


def index(table: dict, partition: int, grace: int) -> PartitionWindows:
    """The open-window index rebuilt from the table, as after a start or a rebalance."""
    windows = PartitionWindows(partition, grace)
    for key, value in table.items():
        if key.startswith(f"w/{partition}/"):
            windows.track(key, WindowCell.from_dict(value).closes_by(grace))
    return windows


def count_batch(
    table: dict,
    partition: int,
    items: list[Event],
    grace: int,
    sink: Sink,
    windows: PartitionWindows | None = None,
) -> list[Op]:
    """Count one batch; publish its rows to the sink; return the table writes in the order
    the worker sends them to the changelog (cells, progress, deletions), unapplied. The
    index is the one kept from earlier batches, or else rebuilt from the table."""
    windows = windows or index(table, partition, grace)
    result = windows.count(
        [Counted(o, at, org, t) for o, at, org, t in sorted(items)],
        table.get,
        PartitionProgress.from_dict(table.get(progress_key(partition))),
    )
    ops: list[Op] = [("set", k, c.to_dict()) for k, c in result.cells.items()]
    ops.append(("set", progress_key(partition), result.progress.to_dict()))
    ops += [("del", k, None) for k in result.closed]
    for c in result.emitted:  # ReplacingMergeTree: the highest version of a row wins
        if c.row_key not in sink or c.max_offset >= sink[c.row_key][0]:
            sink[c.row_key] = (c.max_offset, c.count, (c.org_id, c.type, c.window_start))
    return ops


def apply(table: dict, ops: list[Op]) -> None:
    for kind, key, value in ops:
        if kind == "set":
            table[key] = copy.deepcopy(value)
        else:
            table.pop(key, None)


def run(table: dict, partition: int, items: list[Event], grace: int, sink: Sink) -> None:
    apply(table, count_batch(table, partition, items, grace, sink))


def totals(sink: Sink) -> Counter:
    out: Counter = Counter()
    for _, n, window in sink.values():
        out[window] += n
    return out


def truth(events: list[Event]) -> Counter:
    return Counter((org, t, window_start(at)) for _, at, org, t in events)


events_st = st.lists(
    st.tuples(
        st.integers(1, 3),  # offset gap (only accepted copies reach the counter)
        st.integers(0, 4 * 60).map(lambda s: T0 + s * SEC),  # late ones go far beyond grace
        st.sampled_from("aaab"),
        st.sampled_from(["referral.created", "referral.sent"]),
    ),
    min_size=12,
    max_size=40,
).map(lambda xs: [(o, *x[1:]) for o, x in zip(accumulate(x[0] for x in xs), xs, strict=True)])


@settings(max_examples=300, deadline=None)
@given(events=events_st, grace=st.sampled_from([0, 5 * SEC, 120 * SEC]), data=st.data())
def test_counter_is_exact_through_crashes_and_redelivery(events, grace, data) -> None:
    """Random batching. A crash keeps any prefix of the changelog (cut anywhere, even inside
    a batch's writes) while every row already published stays in the sink. Kafka then
    redelivers from a committed position, which Faust only commits once every write made
    before it is in the changelog, and the redelivery is batched differently."""
    changelog: list[Op] = []
    commits: list[tuple[int, int]] = [(0, 0)]  # (event position, changelog length then)
    table: dict = {}
    sink: Sink = {}
    pos, crashes = 0, data.draw(st.integers(0, 3))
    while pos < len(events):
        batch = events[pos : pos + data.draw(st.integers(1, 6))]
        ops = count_batch(table, 0, batch, grace, sink)
        apply(table, ops)
        changelog += ops
        pos += len(batch)
        commits.append((pos, len(changelog)))
        if crashes and data.draw(st.booleans()):
            crashes -= 1
            cut = data.draw(st.integers(0, len(changelog)))
            changelog = changelog[:cut]
            table = {}
            apply(table, changelog)
            possible = [c for c in commits if c[1] <= cut]
            pos, _ = possible[data.draw(st.integers(0, len(possible) - 1))]
            commits = [c for c in commits if c[0] <= pos]
    assert totals(sink) == truth(events)


@settings(max_examples=300, deadline=None)
@given(events=events_st, grace=st.sampled_from([0, 5 * SEC, 120 * SEC]), data=st.data())
def test_counter_is_exact_with_its_index_kept_between_batches(events, grace, data) -> None:
    """As the worker runs it: one index kept from batch to batch, which lets the counter
    skip reading keys it lacks. A batch may fail after counting (its rows published or
    not, its table writes not made); the index is then rebuilt from the table, as
    streams/windows.py does, and reading resumes at a committed position. A crash also
    loses a suffix of the changelog."""
    changelog: list[Op] = []
    commits: list[tuple[int, int]] = [(0, 0)]  # (event position, changelog length then)
    table: dict = {}
    sink: Sink = {}
    windows = index(table, 0, grace)
    pos, failures = 0, data.draw(st.integers(0, 4))
    while pos < len(events):
        batch = events[pos : pos + data.draw(st.integers(1, 6))]
        if failures and data.draw(st.booleans()):  # fails between counting and writing
            failures -= 1
            published: Sink = {}
            count_batch(table, 0, batch, grace, published, windows)
            if data.draw(st.booleans()):
                sink.update(published)
            cut = len(changelog)
            if data.draw(st.booleans()):  # and the worker crashed
                cut = data.draw(st.integers(0, len(changelog)))
                changelog = changelog[:cut]
                table = {}
                apply(table, changelog)
            windows = index(table, 0, grace)  # WindowCounter.forget, then a rebuild
            possible = [c for c in commits if c[1] <= cut]
            pos, _ = possible[data.draw(st.integers(0, len(possible) - 1))]
            commits = [c for c in commits if c[0] <= pos]
            continue
        ops = count_batch(table, 0, batch, grace, sink, windows)
        apply(table, ops)
        changelog += ops
        pos += len(batch)
        commits.append((pos, len(changelog)))
    assert totals(sink) == truth(events)


def test_an_index_left_ahead_of_the_table_would_count_twice() -> None:
    """Why a failed batch rebuilds the index: counting closed a stored cell in the index
    only. Kept so, the index hides the stored cell from the events read again, and one
    it had counted opens a new segment: counted twice."""
    w, later = T0, T0 + 2 * WINDOW_US
    table: dict = {}
    sink: Sink = {}
    windows = index(table, 0, 0)
    for event in ((0, w, "a", "x"), (1, w, "a", "x")):  # two batches; committed after 0
        apply(table, count_batch(table, 0, [event], 0, sink, windows))
    count_batch(table, 0, [(2, later, "a", "x")], 0, {}, windows)  # fails before writing
    again = [(1, w, "a", "x"), (2, later, "a", "x")]  # from the committed position
    stale_sink = copy.deepcopy(sink)
    count_batch(copy.deepcopy(table), 0, again, 0, stale_sink, copy.deepcopy(windows))
    assert totals(stale_sink)[("a", "x", w)] == 3  # the stale index: one too many
    apply(table, count_batch(table, 0, again, 0, sink, index(table, 0, 0)))
    assert totals(sink) == truth(again + [(0, w, "a", "x")])  # rebuilt: exact


def test_late_events_open_new_segments_with_no_grace() -> None:
    w, later = T0, T0 + 2 * WINDOW_US
    events = [(0, w, "a", "x"), (1, later, "a", "x"), (2, w + SEC, "a", "x"), (3, w, "a", "x")]
    table: dict = {}
    sink: Sink = {}
    for e in events:
        run(table, 0, [e], 0, sink)
    segments = [row for row in sink.values() if row[2] == ("a", "x", w)]
    assert len(segments) == 3  # one per event later than the window's close
    assert totals(sink) == truth(events) == Counter({("a", "x", w): 3, ("a", "x", later): 1})
    for e in events:  # redelivered with the table intact: nothing counted twice
        run(table, 0, [e], 0, sink)
    assert totals(sink) == truth(events)


def test_redelivery_in_different_batches_after_losing_the_table() -> None:
    # The first pass counts three events in one batch; the changelog loses that batch but
    # the sink kept its rows. Redelivered in two batches, the segments come out the same:
    # windows close event by event, not at the end of a batch.
    w, later = T0, T0 + 2 * WINDOW_US
    events = [(0, w, "a", "x"), (1, later, "a", "x"), (2, w, "a", "x")]
    sink: Sink = {}
    run({}, 0, events, 0, sink)
    table: dict = {}  # rolled back to before the batch
    run(table, 0, events[:2], 0, sink)
    run(table, 0, events[2:], 0, sink)
    assert totals(sink) == truth(events)
