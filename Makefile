# Two commands do everything on a fresh machine:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DUALHRQ = $(VENV)/bin/dualhrq

.PHONY: setup demo test test-slow params clean gpu-wheels gpu-check

setup: $(VENV)/.installed

# torch first, pinned to the CPU build that lies on this machine: a looser requirement with no torch installed
# would pull several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev]'
	touch $@

demo: setup
	$(DUALHRQ) demo

test: setup
	$(VENV)/bin/ruff check dualhrq tests
	$(DUALHRQ) params --config config/hrm_27m.yaml --strict
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

params: setup
	$(DUALHRQ) params --config config/hrm_27m.yaml --strict

clean:
	rm -rf $(VENV) runs artifacts .pytest_cache

# The GPU check (README, GPU) on a machine that has PyTorch with CUDA, onnx and onnxruntime but no package
# registry: `make gpu-wheels` where PyPI is reachable brings the other dependencies into .whl/ (CPython 3.12,
# x86-64; hnswlib as source, it has no such wheel), `make gpu-check` there installs them into /tmp/site and runs
# `dualhrq gpu-check` once per GPU_RUNS entry (config:steps), writing GPU_OUT/<config>.json.
WHEELS     = msgspec pyzmq arch backtesting bokeh xyzservices tornado
WHEEL_ARGS = --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
             --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
GPU_RUNS  ?= train_eurusd:300 train_eurusd_27m:30
GPU_OUT   ?= runs/gpu
# 256 parity windows, not export's 1000: the 27M model's CPU parity runs then take minutes, not (estimated) 15-20.
GPU_ARGS  ?= --parity-samples 256

gpu-wheels:
	mkdir -p .whl
	$(PYTHON) -m pip download -q $(WHEEL_ARGS) -d .whl $(WHEELS)
	$(PYTHON) -m pip download -q --no-deps --no-binary=hnswlib -d .whl hnswlib==0.8.0

gpu-check:
	$(PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl .whl/hnswlib-*.tar.gz
	status=0; for run in $(GPU_RUNS); do \
	  PYTHONPATH=/tmp/site:$(CURDIR) PYTHONUNBUFFERED=1 $(PYTHON) -m dualhrq gpu-check --train $${run%%:*} \
	    --steps $${run##*:} --out $(GPU_OUT)/$${run%%:*}.json $(GPU_ARGS) || status=$$?; done; exit $$status
