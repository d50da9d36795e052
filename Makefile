# sync-worker: `make demo`, `make test`, `make lint`, `make bench`. Each creates .venv itself.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-smoke format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-dev
	$(BIN)/python scripts/demo.py

# Three processes on a two-core machine: about a third of the suite's time is waiting (the
# sandbox's latency, pacing, processes starting), which the third fills. The tests that assert
# on wall-clock pacing (mostly asleep) run after the rest, so no CPU-heavy test competes with
# them.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -n 3 -m "not timing and not bench"
	$(BIN)/python -m pytest -q -n 3 -m timing

lint: $(VENV)/.installed-dev
	$(BIN)/ruff format --check sync_worker tests scripts
	$(BIN)/ruff check sync_worker tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed-dev
	$(BIN)/python tests/benchmarks/run.py

# Every benchmark at its smallest, to keep `make bench` working: about 40 s of CPU in some 50
# processes, so not part of `make test`; CI runs it after the suite.
bench-smoke: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m bench

format: $(VENV)/.installed-dev
	$(BIN)/ruff format sync_worker tests scripts
	$(BIN)/ruff check --fix sync_worker tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache ledgers state *.egg-info
