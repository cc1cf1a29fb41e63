# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
# Both (re)build .venv only when pyproject.toml or the bootstrap script changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.streamrec-installed

.PHONY: demo test lint services bench-ingest clean

$(STAMP): pyproject.toml deploy/bootstrap.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/bootstrap.sh
	@touch $@

services:
	@bash deploy/ensure-redis.sh

demo: $(STAMP) services
	$(BIN)/streamrec up

test: $(STAMP) services
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check streaming models trainer deploy tests benchmarks

clean:
	rm -rf $(VENV) .streamrec
