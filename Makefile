# Every target creates .venv (venv + pip) if it is missing, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench docs lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,docs]'
	$(BIN)/python -m pip install --quiet --no-deps qpth==0.0.18
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/doubleopt demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# qpth (the OptNet baseline, checked in the tests) pins numpy<2 although it runs on numpy 2, so the set-up
# installs it without deps.
bench: $(STAMP)
	$(BIN)/doubleopt bench all

# The documentation site (MkDocs + Material, API reference from the docstrings) into site/; --strict fails on any
# broken link, cross-reference or docstring warning. Open site/index.html, or serve it: $(BIN)/mkdocs serve
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check src tests examples scripts

clean:
	rm -rf $(VENV) bench_results site
