# Two commands do everything: `make demo` and `make test` (each makes .venv/ first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flatfl-installed

LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.flatfl-installed

.PHONY: install demo test test-deployment test-lowest lint bench clean

install: $(STAMP)

# the exact versions of constraints.txt: every .venv/ is the same
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) examples/fedavg_vs_fedmut.py

test: install
	$(PY) -m pytest -q -m "not deployment"

# Flower's runtimes: the deployment engine on loopback (SuperLink + 2 SuperNodes) and the simulation
# runtime (Ray), ~3 min; CI runs them after make test
test-deployment: install
	$(PY) -m pytest -q -m deployment

# the lowest supported versions (pyproject's lower bounds, constraints-lowest.txt) in .venv-lowest/,
# with the test subset of tests/lowest.txt
$(LOWEST_STAMP): pyproject.toml constraints-lowest.txt
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --disable-pip-version-check -c constraints-lowest.txt -e . pytest
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST)/bin/python -m pytest -q $$(grep -v '^#' tests/lowest.txt)

lint: install
	$(VENV)/bin/ruff check flatfl analysis tests bench examples

bench: install
	$(PY) bench/round_overhead.py

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache *.egg-info
