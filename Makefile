# Two commands for a fresh machine:  make demo   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test data bench clean

$(BIN)/sdsnn-search: setup.cfg constraints.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/sdsnn-search

# The main job: a quick search on scikit-learn's bundled digits (no files needed).
demo: install
	$(BIN)/sdsnn-search run --space search_spaces/digits.yaml

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) cache results/*/ *.egg-info
