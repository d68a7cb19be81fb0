# ivr-bridge: `make run` starts the bridge, `make test` runs the suite. Each sets itself up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8080

.PHONY: install sysdeps run test lint bench fuzz soak clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,sip]'
	@touch $(STAMP)

install: $(STAMP)

# Peers and tools the test suite drives (SIPp, Kamailio, baresip, sox, espeak-ng, asterisk prompts).
sysdeps:
	@bash scripts/install-sysdeps.sh

run: install
	$(VENV)/bin/ivr-bridge serve --host 0.0.0.0 --port $(PORT)

# Quality gates: ruff's rules, ruff's formatting, and mypy on bridge/ (settings in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check bridge tests bench
	$(VENV)/bin/ruff format --check bridge tests bench
	$(VENV)/bin/mypy

test: install sysdeps lint
	$(VENV)/bin/pytest -q -rfEs -p no:cacheprovider --durations=20

bench: install sysdeps
	$(PY) -m bench

# Property-based tests of every parser and protocol core, long run (make test runs a bounded one).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q -p no:cacheprovider tests/fuzz

# Calls with churn for SOAK_MINUTES (default 30) at SOAK_CALLS (default 50); bench/results/soak.md.
SOAK_MINUTES ?= 30
SOAK_CALLS ?= 50
soak: install
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) --calls $(SOAK_CALLS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
