# qlab: `make test` and `make reproduce` do all set-up on a fresh machine
# (python3 with pip is all they need).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qlab-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: test reproduce venv bench clean chromium fashion-mnist

venv: $(STAMP) chromium fashion-mnist

# apt_install(check, package, what happens without it): Debian packages installed when
# missing and we are root or may sudo without a password.
define apt_install
	@$(1) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "$(2) missing and not root: $(3)"; exit 0; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q $(2) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(2) >/dev/null; } || \
	  echo "could not install $(2): $(3)"; }
endef

# The panel's browser test drives Debian's chromium (never Playwright's own download).
chromium:
	$(call apt_install,command -v chromium >/dev/null 2>&1,chromium,the browser test will be skipped)

# Fashion-MNIST for the reproductions (tests use scikit-learn's digits).
fashion-mnist:
	$(call apt_install,test -d /usr/share/datasets/fashion-mnist,dataset-fashion-mnist,install it or pass data_dir= (a folder of Fashion-MNIST IDX files) to the notebooks)

# Reinstall when the project's requirements change.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[notebook,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP) chromium
	$(PY) -m pytest -q $(PYTEST_ARGS) tests
	$(PY) -m pytest -q --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly notebooks/00_quickstart.ipynb notebooks/01_api_tour.ipynb notebooks/02_panel.ipynb

reproduce: $(STAMP) fashion-mnist
	mkdir -p build
	$(PY) -m qlab.ext.reproduce --out build

bench: $(STAMP)
	$(PY) bench/intrinsic_cpu.py

clean:
	rm -rf build
