# Every target sets up .venv (with the project and its test and docs extras)
# when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help test docs lint bench clean

help:
	@echo "make test   run the spec (docs/*.rst) and the tests"
	@echo "make docs   build the HTML documentation into build/html"
	@echo "make lint   check the code with ruff"
	@echo "make bench  print what the queue costs on this machine"
	@echo "make clean  remove build output and the virtual environment"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

docs: $(STAMP)
	$(BIN)/python -m sphinx -W -n --keep-going -q -b html docs build/html
	@echo "The documentation is in $(CURDIR)/build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check mailqueue tests docs conftest.py
	$(BIN)/ruff format --check mailqueue tests docs conftest.py

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_queue.py

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache .hypothesis
