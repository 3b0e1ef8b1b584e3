"""Python's cyclic garbage collector, set for a long-running worker.

With CPython's defaults (a young collection every 700 new container objects, a full one
after ten of the middle generation) a busy worker collected about 4,100 times on
`bench.pipeline`'s backlog, and its 36 full collections took 115–145 ms each: walking
every object the process holds (Faust, aiokafka, pydantic, the tables' Python side).
That was 5.4–7.4 s of a 30–40 s run, about 15 % of the worker's time, all of it holding
the GIL.

`tune_for_worker()`, called once the worker is built and before it runs:
- freezes what exists by then (modules, classes, the app and its services): it lives as
  long as the process, and full collections no longer walk it;
- collects the young generation every 50,000 new container objects instead of 700, and
  runs fewer full collections. Garbage cycles are still collected, later: the young
  generation holds at most a few MB more.

Measured with the scratch harness on the same backlog, two interleaved pairs: GC time
7.4 s → 1.35 s, worker CPU per message 618–667 → 530–581 µs, 1,691–1,802 → 1,918–2,090
messages/s (docs/performance.md).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # CPython's default: 700
MIDDLE_THRESHOLD = 20  # young collections per middle one (default 10)
OLD_THRESHOLD = 10  # middle collections per full one (default 10)


def tune_for_worker() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
