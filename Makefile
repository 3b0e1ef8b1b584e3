# The front door. Every target bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-unit test-integration lint typecheck schema clean bench fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "reftrack needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## Run the whole pipeline on this machine (broker, worker, simulator, dashboard) until Ctrl-C.
demo: venv
	$(BIN)/reftrack demo

## The test suite: unit (pure), then integration (embedded broker + real worker + chDB).
test: venv
	$(BIN)/python -m pytest -q tests

test-unit: venv
	$(BIN)/python -m pytest -q tests/unit

test-integration: venv
	$(BIN)/python -m pytest -q tests/integration

## Longer hostile-input runs than `make test`: 20,000 cases per canonical property, a
## million coverage-guided atheris runs on canonical ingest, fresh random seeds for the
## adapters' fuzz tests; minutes, not seconds.
fuzz: venv
	REFTRACK_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/unit/test_fuzz_canonical.py
	$(BIN)/python -m pip install --quiet atheris
	PYTHONPATH=. $(BIN)/python tests/fuzz/atheris_ingest.py -runs=1000000 -max_len=70000
	$(BIN)/python -m pytest -q tests/unit/test_adapter_fhir.py tests/unit/test_adapter_hl7v2.py \
		tests/unit/test_adapter_comms_claims.py -k "fuzz or never or garbage or random"

lint: venv
	$(BIN)/ruff check schemas streams sinks tests

typecheck: venv
	$(BIN)/mypy

## Re-export the canonical event JSON Schema for upstream producers.
schema: venv
	$(BIN)/python -m schemas.export

## Benchmarks (take minutes; each rewrites its section of docs/performance.md): KPI view
## latency, alert tick, adapter throughput, pipeline throughput and freshness, recovery.
bench: venv
	$(BIN)/python -m bench.kpi_views
	$(BIN)/python -m bench.alert_tick
	$(BIN)/python -m bench.adapters
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.recovery

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
