# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
# Both (re)build .venv only when pyproject.toml or the bootstrap script changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.streamrec-installed

.PHONY: demo test lint services screenshot bench-ingest chaos clean

$(STAMP): pyproject.toml deploy/bootstrap.sh
	@PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/bootstrap.sh
	@touch $@

# redis-server, and Java + Maven for the embedded Apache Kafka (then its jars, once).
services:
	@bash deploy/ensure-redis.sh
	@VENV=$(VENV) bash deploy/ensure-java.sh

demo: $(STAMP) services
	$(BIN)/streamrec up

test: lint services
	@bash deploy/ensure-chromium.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

# Refresh docs/dashboard.png from a live run (the browser test, writing into docs/).
screenshot: $(STAMP) services
	@bash deploy/ensure-chromium.sh
	STREAMREC_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_observability.py

# Fault injection on the embedded stack: kill -9 worker, trainer, scorer; restart Redis; restart
# the Kafka broker (SIGTERM, then kill -9).
# Prints a last JSON line and writes benchmarks/results/reliability.json.
chaos: $(STAMP) services
	$(BIN)/streamrec bench chaos

# ruff, and the one-way layers of pyproject.toml's [tool.importlinter] (import-linter).
lint: $(STAMP)
	$(BIN)/ruff check streaming models trainer deploy tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .streamrec
