# Two commands do everything on a fresh machine with Python 3.11+:
#   make run   — set up, create the database, serve on the embedded defaults (SQLite, SMTP 127.0.0.1:8025)
#   make test  — set up, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/qaflow-mail db upgrade
	$(BIN)/qaflow-mail serve

test: $(VENV)/.installed
	bash scripts/install-test-peers.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check qaflow_mail tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# Speed figures, each beside a reference measured in the same run (see README, Performance).
bench: $(VENV)/.installed
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ingest.py --offered 100
	$(BIN)/python bench/ingest.py --heavy 2
	$(BIN)/python bench/ingest.py --accept inline
	$(BIN)/python bench/outbox_drain.py
	$(BIN)/python bench/notify_fanout.py
	$(BIN)/python bench/digests.py
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) var .pytest_cache
