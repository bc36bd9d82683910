# Every target creates the virtualenv on first use, so a fresh clone needs
# only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint format docs demo bench browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's chromium for the browser tests (Playwright drives the system browser;
# no browser download works here). Skipped quietly when apt is not available.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium not installed: browser tests will be skipped"; }

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Without the tests that spawn processes or drive a browser (marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# -E: read every page each time, so warnings of unchanged pages fail too.
# -n: a reference to an object that is not documented fails the build
# (docs/conf.py lists the third-party names that cannot resolve offline).
docs: $(STAMP)
	$(BIN)/sphinx-build -E -n -W --keep-going -b html docs docs/_build/html

# Initialises instance/ (SQLite database and queue) on first run, starts the
# example app with embedded workers on 127.0.0.1:$(PORT); Ctrl-C stops it.
demo: $(STAMP)
	PORT=$(PORT) $(BIN)/python -m example_app

# Benchmarks (benchmarks/README.md): SQLite and the SQLite queue by default, no
# services needed. The scale-out setup:
#   make bench BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test BENCH_QUEUE=redis
# BENCH_DELIVERIES scales the worker memory run down (the documented run uses 20000).
BENCH_DATABASE_URL ?=
BENCH_QUEUE ?= sqlite
BENCH_DELIVERIES ?= 20000
BENCH_DB = $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))

bench: $(STAMP)
	$(BIN)/python benchmarks/capture_overhead.py --objects 10000 --growth $(BENCH_DB)
	$(BIN)/python benchmarks/delivery_throughput.py --deliveries 2000 --queue $(BENCH_QUEUE) --threads 4 $(BENCH_DB)
	$(BIN)/python benchmarks/latency.py --events 300 --queue $(BENCH_QUEUE) $(BENCH_DB)
	$(BIN)/python benchmarks/memory.py --deliveries $(BENCH_DELIVERIES) --queue $(BENCH_QUEUE) $(BENCH_DB)

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache instance
