"""The batched recovery loop (streams/faust_recovery.py) on Faust's own Recovery service
and a real memory-store Table; only the changelog records are put in its queue by hand
(the broker side is covered by the restart tests in tests/integration)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import pytest
from faust.types import TP
from faust.types.tuples import Message

from streams.faust_recovery import install_recovery_batching

install_recovery_batching()


def _app() -> Any:
    return faust.App("recovery-test", broker="kafka://127.0.0.1:1", store="memory://")


def _event(app: Any, tp: TP, offset: int, key: str, value: bytes | None) -> Any:
    raw_key = f'"{key}"'.encode()
    message = Message(tp.topic, tp.partition, offset, 0.0, 0, [], raw_key, value, None, tp=tp)
    return app.create_event(key, value, [], message)


def _recovering(app: Any, table: Any, highwaters: dict[TP, int]) -> Any:
    recovery = app.tables.recovery
    for tp, highwater in highwaters.items():
        recovery.active_tps.add(tp)
        recovery.tp_to_table[tp] = table
        recovery.active_highwaters[tp] = highwater
        recovery.active_offsets[tp] = -1
    recovery._set_recovery_started()  # as Faust's recovery does before reading
    return recovery


def _one_partition(highwater: int) -> tuple[Any, Any, TP, Any, Any]:
    """(app, table, its changelog partition 0, recovery, changelog queue)."""
    app = _app()
    table = app.Table("states", value_type=bytes, partitions=1)
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    return app, table, tp, _recovering(app, table, {tp: highwater}), app.tables.changelog_queue


async def _start(recovery: Any) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
    """(recovery ended, the running loop). The end is waited on as Faust does: already
    waiting when the loop starts (the loop clears the signal at the top of each round)."""
    ended = asyncio.ensure_future(recovery.signal_recovery_end.wait())
    await asyncio.sleep(0)
    return ended, asyncio.ensure_future(recovery._slurp_changelogs(recovery))


async def _stop(loop: asyncio.Future[Any]) -> None:
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


async def _run_until_recovered(recovery: Any, timeout: float = 10.0) -> None:
    ended, loop = await _start(recovery)
    try:
        await asyncio.wait_for(ended, timeout)
    finally:
        await _stop(loop)


def test_every_queued_record_is_applied_in_order_and_recovery_ends() -> None:
    async def scenario() -> None:
        app = _app()
        table = app.Table("states", value_type=bytes, partitions=2, recovery_buffer_size=7)
        tp0, tp1 = (
            TP(table.changelog_topic.get_topic_name(), 0),
            TP(table.changelog_topic.get_topic_name(), 1),
        )
        recovery = _recovering(app, table, {tp0: 99, tp1: 49})
        queue = app.tables.changelog_queue
        # a key written twice: the later offset wins; one deleted (null value)
        for offset in range(100):
            queue.put_nowait(_event(app, tp0, offset, f"k{offset % 60}", b"v%d" % offset))
        for offset in range(50):
            value = None if offset == 10 else b"w%d" % offset
            queue.put_nowait(_event(app, tp1, offset, f"p{offset}", value))
        await _run_until_recovered(recovery)

        data = table.data.data
        assert {k: data[k] for k in ("k0", "k39", "k40", "k59")} == {
            "k0": b"v60",
            "k39": b"v99",
            "k40": b"v40",
            "k59": b"v59",
        }
        assert "p10" not in data
        assert len(data) == 60 + 49
        assert recovery.active_offsets == {tp0: 99, tp1: 49}
        assert not recovery.in_recovery
        assert queue.empty()

    asyncio.run(scenario())


def test_records_at_or_below_the_recovered_offset_are_not_applied_again() -> None:
    async def scenario() -> None:
        app, table, tp, recovery, queue = _one_partition(5)
        for offset in range(6):
            queue.put_nowait(_event(app, tp, offset, "k", b"v%d" % offset))
        queue.put_nowait(_event(app, tp, 3, "k", b"stale"))  # a re-fetched older record
        await _run_until_recovered(recovery)
        assert table.data.data["k"] == b"v5"

    asyncio.run(scenario())


def test_a_record_of_an_unassigned_partition_is_skipped_not_applied_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        app = _app()
        table = app.Table("states", value_type=bytes, partitions=2)
        name = table.changelog_topic.get_topic_name()
        mine, other = TP(name, 0), TP(name, 1)
        recovery = _recovering(app, table, {mine: 1})
        queue = app.tables.changelog_queue
        queue.put_nowait(_event(app, mine, 0, "a", b"1"))
        queue.put_nowait(_event(app, other, 0, "stray", b"x"))  # Faust applied it to `table`
        queue.put_nowait(_event(app, mine, 1, "b", b"2"))
        await _run_until_recovered(recovery)
        assert dict(table.data.data) == {"a": b"1", "b": b"2"}

    with caplog.at_level(logging.WARNING, logger="streams.faust_recovery"):
        asyncio.run(scenario())
    assert "unassigned partition" in caplog.text


def test_recovery_does_not_end_while_an_active_partition_has_records_left() -> None:
    async def scenario() -> None:
        app, table, tp, recovery, queue = _one_partition(9)
        for offset in range(5):
            queue.put_nowait(_event(app, tp, offset, f"k{offset}", b"v"))
        ended, loop = await _start(recovery)
        try:
            await asyncio.sleep(0.3)
            assert recovery.in_recovery and not ended.done()
            assert recovery.active_offsets[tp] == 4
            for offset in range(5, 10):
                queue.put_nowait(_event(app, tp, offset, f"k{offset}", b"v"))
            await asyncio.wait_for(ended, 10)
        finally:
            await _stop(loop)
        assert len(table.data.data) == 10 and not recovery.in_recovery

    asyncio.run(scenario())
