# Two commands do everything: `make demo` and `make test` (each makes .venv/ first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flatfl-installed

LOWEST := .venv-lowest
LOWEST_STAMP := $(LOWEST)/.flatfl-installed

.PHONY: install install-docs demo test test-deployment test-lowest lint bench docs clean

install: $(STAMP)

# the exact versions of constraints.txt: every .venv/ is the same
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(PY) examples/fedavg_vs_fedmut.py

# two workers (pytest-xdist), one test file each at a time, one BLAS/OpenMP thread each: the 2-core CI machine
test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $${FLATFL_TEST_WORKERS:-2} --dist loadfile \
		-m "not deployment and not docs"

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
	$(VENV)/bin/ruff check flatfl analysis tests bench examples docs

# the documentation site: Sphinx + furo + MyST, tutorials executed by sphinx-gallery, warnings are errors;
# offline (no CDN). Then the site in headless Chromium (tests/test_docs_site.py reads the built site).
DOCS_STAMP := $(VENV)/.flatfl-docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,docs]'
	touch $(DOCS_STAMP)

install-docs: $(DOCS_STAMP)

docs: install-docs
	rm -rf docs/_build docs/tutorials/executed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} MPLBACKEND=Agg $(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html
	$(PY) -m pytest -q -m docs tests/test_docs_site.py

bench: install
	$(PY) bench/round_overhead.py

clean:
	rm -rf $(VENV) $(LOWEST) .pytest_cache .ruff_cache *.egg-info docs/_build docs/tutorials/executed
