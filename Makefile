# Two entry points on a fresh machine: `make demo` (the offline benchmark) and `make test`.
# Each creates .venv and installs what it needs (exact pins in constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SIZE ?=
BENCH ?= 3
SEEDS ?= 0,1,2
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test test-slow demo clean

# Base + benchmark extras: what `make demo` needs.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[bench]'
	touch $@

# Test extras and the system services/browsers the tests drive (Debian packages).
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql) || true
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || true
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=10

test-slow: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow --durations=10

demo: $(VENV)/.installed
	$(VENV)/bin/glassdetect demo --bench-version $(BENCH) $(if $(SIZE),--size $(SIZE)) --seeds $(SEEDS) --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
