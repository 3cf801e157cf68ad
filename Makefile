# skinseg: `make setup`, `make test`, `make report`, `make bench`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup test test-fast report docs bench clean

setup: $(VENV)/.installed

# torch first: pinned builds (CPU machines here take them from local disk; GPU users get CUDA builds).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,weights,notebooks]"
	touch $@

# the unit/integration tests, then every notebook executed with its default parameters (nbval, lax)
test: setup
	$(PY) -m pytest -q --durations=10 tests
	$(PY) -m pytest -q --nbval-lax notebooks

docs: setup
	$(PY) -m skinseg.config docs/configuration.md
	$(PY) -m skinseg.notebook
	$(PY) -m skinseg.results docs/experiments.md README.md

report: setup
	$(PY) -m skinseg report

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not real" tests

bench: setup
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/models.py

clean:
	rm -rf .cache reports/*.html reports/*.pdf
