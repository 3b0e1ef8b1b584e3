"""Benchmarks: `make bench` measures reftrack's performance targets on this machine and
writes the figures to docs/performance.md. Not tests: they take minutes and assert nothing."""
