# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Slow tests run in their own target; the default suite stays fast on a 2-core CPU. Two
# pytest-xdist workers keep both cores busy while the other compiles (most of a test's time).
PYTEST_ARGS ?= -n 2
# XLA:CPU takes each step's temporaries as one large block that glibc maps afresh per step; huge
# pages make faulting it in cheap (benchmarks/README.md, "Host memory"). Other C libraries, and
# glibc before 2.35, ignore it; a value already in the environment wins.
GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
export GLIBC_TUNABLES

.PHONY: demo demo-losses test test-slow test-faults test-all lint format bench-generate clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-runtime

## The main job: the whole pipeline on the embedded synthetic task (see README).
demo: $(VENV)/.installed-runtime
	$(PY) experiments/run_pipeline.py --config configs/synthetic.py

## The loss library end to end on a tabular task, in seconds.
demo-losses: $(VENV)/.installed-runtime
	$(PY) experiments/demo.py

## Lint, then the default (fast) test suite.
test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-test
	$(VENV)/bin/pytest -m "slow and not faults" $(PYTEST_ARGS)

## Fault injection: every phase killed, signalled, corrupted, raced, fed bad rows.
test-faults: $(VENV)/.installed-test
	$(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
