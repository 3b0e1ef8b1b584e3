"""The worker's garbage-collector settings (streams/gc_tuning.py)."""

from __future__ import annotations

import gc

from streams.gc_tuning import YOUNG_THRESHOLD, tune_for_worker


def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_for_worker()
        assert gc.get_freeze_count() > 10_000  # the modules and objects built so far
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD > before[0]
        # cycles are still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
