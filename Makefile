# qlab: `make test` and `make reproduce` do all set-up on a fresh machine
# (python3 with pip is all they need).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qlab-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: test reproduce venv bench clean

venv: $(STAMP)

# Reinstall when the project's requirements change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[notebook,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests
	$(PY) -m pytest -q --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly notebooks/00_quickstart.ipynb

reproduce: $(STAMP)
	mkdir -p build
	$(PY) -m qlab.ext.reproduce --out build

bench: $(STAMP)
	$(PY) bench/intrinsic_cpu.py

clean:
	rm -rf build
