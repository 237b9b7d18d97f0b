# Two commands for a fresh machine:  make demo   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test data bench clean gpu-pack

$(BIN)/sdsnn-search: setup.cfg constraints.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/sdsnn-search

# The main job: a quick search on scikit-learn's bundled digits (no files needed).
demo: install
	$(BIN)/sdsnn-search run --space search_spaces/digits.yaml

test: install
	$(BIN)/python -m pytest -q tests

# What the lent GPU machine (Python 3.12, CUDA torch, nothing else of ours) needs to train with
# sdsnn alone: wheels of the core dependencies and the datasets, in ignored folders that travel
# with the device's `carry` (64 MiB a call; see README "Training on a GPU").
# MNIST goes gzipped (11 MiB; the loader reads .gz), CIFAR-10 as its 36 MiB source + build script
# (the built batches are 176 MiB): `python cache/gpu-data/build_cifar10.py cache/gpu-data` there.
GPU_WHEELS := spikingjelly loguru pydantic pydantic-core annotated-types typing-inspection \
	typing-extensions pyyaml tqdm safetensors pillow
gpu-pack: install
	rm -rf build/gpu-wheels cache/gpu-data && mkdir -p build/gpu-wheels cache/gpu-data/MNIST/raw
	$(BIN)/pip download -q --dest build/gpu-wheels --only-binary=:all: --no-deps -c constraints.txt \
		--python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $(GPU_WHEELS)
	for f in $(SHARED)/datasets/MNIST/raw/*-ubyte; do gzip -c $$f > cache/gpu-data/MNIST/raw/$$(basename $$f).gz; done
	cp -r $(SHARED)/datasets/cifar10_src $(SHARED)/datasets/build_cifar10.py cache/gpu-data/
	du -sh build/gpu-wheels cache/gpu-data

clean:  # keeps results/benchmarks/ (tracked: the measured figures)
	rm -rf $(VENV) cache *.egg-info
	find results -mindepth 1 -maxdepth 1 -type d ! -name benchmarks -exec rm -rf {} + 2>/dev/null || true
