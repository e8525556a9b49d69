# Two commands do everything: `make demo` and `make test` (each makes .venv/ first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flatfl-installed

.PHONY: install demo test test-deployment lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) examples/fedavg_vs_fedmut.py

test: install
	$(PY) -m pytest -q -m "not deployment"

# Flower's deployment engine on loopback (SuperLink + 2 SuperNodes, ~2 min); CI runs it after make test
test-deployment: install
	$(PY) -m pytest -q -m deployment

lint: install
	$(VENV)/bin/ruff check flatfl analysis tests bench examples

bench: install
	$(PY) bench/round_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
