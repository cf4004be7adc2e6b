# Two commands do all the set-up on a fresh machine:
#   make run    install everything, then start the main job on the embedded default
#   make test   install everything, then run the whole suite
# and a cluster on this machine (docs/SCALING.md):
#   make cluster        nginx on CLUSTER_PORT + WORKERS workers + one llama_cpp.server (PostgreSQL, Redis running)
#   make cluster-down   stop what `make cluster` started
#   make cluster-restart  rolling restart: each worker drains, then starts again (WORKER=n: only that one)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.moksori-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=
CLUSTER_PORT ?= 8000
WORKERS ?= 2

.PHONY: setup run test lint bench clean cluster cluster-down cluster-status cluster-restart

setup: $(STAMP)

# pip keeps its wheel cache (~/.cache/pip): llama-cpp-python compiles once per machine.
$(STAMP): pyproject.toml requirements/nodeps.txt requirements/constraints.txt scripts/install-system.sh
	bash scripts/install-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -c requirements/constraints.txt -e ".[test]"
	$(PY) -m pip install --no-deps -r requirements/nodeps.txt
	$(PY) -m moksori models prepare
	touch $(STAMP)

run: setup
	$(PY) -m moksori serve --host $(HOST) --port $(PORT)

# The gates first (seconds; mypy's first run ~1 min, then its cache in .mypy_cache), then the suite.
test: setup lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m mypy

cluster: setup
	CLUSTER_PORT=$(CLUSTER_PORT) WORKERS=$(WORKERS) $(PY) scripts/cluster.py up

cluster-down:
	$(PYTHON) scripts/cluster.py down

cluster-status:
	$(PYTHON) scripts/cluster.py status

cluster-restart: setup
	$(PY) scripts/cluster.py restart

# The telephony benchmark also runs Pipecat 1.14 in its own venv (.data/bench/pipecat-venv,
# made from PyPI only when missing); `make test` needs none of it.
bench: setup
	PYTHON=$(PYTHON) bash benchmarks/pipecat/setup-venv.sh
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
