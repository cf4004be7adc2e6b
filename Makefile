# Two commands do all the set-up on a fresh machine:
#   make run    install everything, then start the main job on the embedded default
#   make test   install everything, then run the whole suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.moksori-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

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

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
