# The two set-up commands of the README: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_LAKE := data/demo

.PHONY: venv train test test-fast bench lint mutation demo clean

venv:
	@PYTHON=$(PYTHON) bash scripts/ensure_venv.sh $(VENV)

demo: venv
	@$(PY) -m sustain data demo --out $(DEMO_LAKE) --if-missing

train: demo
	$(PY) -m sustain train --config configs/demo.yaml --set device=cpu

# Two pytest-xdist workers, each file on one worker (its module fixtures train once): on 2 cores
# most tests run one torch thread (tests/conftest.py), so two at a time use both cores. Files go out
# in tests/conftest.py's order (slow files first), not xdist's (most tests first: the slow files last).
PYTEST_PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

test: venv
	$(PY) -m ruff check --quiet sustain tests benchmarks
	$(PY) -m pytest $(PYTEST_PARALLEL)

test-fast: venv
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

bench: venv
	$(PY) -m benchmarks

lint: venv
	$(PY) -m ruff check sustain tests benchmarks

# Mutation testing of the pure decision modules (mutmut; outside CI, an hour or more on two cores).
mutation: venv
	nice -n 19 $(PY) -m benchmarks.mutation

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info mutants
