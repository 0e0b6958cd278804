# Every target creates .venv (venv + pip) if it is missing, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
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

lint: $(STAMP)
	$(BIN)/ruff check src tests examples

clean:
	rm -rf $(VENV) bench_results
