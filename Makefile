# Two commands do everything on a fresh machine:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
DUALHRQ = $(VENV)/bin/dualhrq

.PHONY: setup demo test test-slow params clean

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
