# The one place commands live. `make run` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest processes for `make test`; a test file stays in one (module fixtures run once).
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-stamp

.PHONY: install torch-cpu browser postgres nginx run run-tiny demo test test-quick lint format bench bench-gpu bench-ingest load clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml or this file changes. Torch comes from pip like
# everything else. clip-retrieval only for its ClipClient, which the compatibility tests
# drive: without its dependencies, an old stack the client does not need.
CLIP_RETRIEVAL := clip-retrieval==2.45.0
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@if [ "$(TORCH)" = cpu ]; then $(MAKE) --no-print-directory torch-cpu; fi
	$(BIN)/pip install --disable-pip-version-check -e '.[dev,scale]'
	$(BIN)/pip install --disable-pip-version-check --no-deps '$(CLIP_RETRIEVAL)'
	touch $(STAMP)

install: $(STAMP)

## `make run TORCH=cpu` (before the first install): PyTorch's CPU-only build, about 1 GB in
## all instead of 6.5 GB, from PyTorch's own index. Where that index cannot be reached, or
## what pip finds makes no working pair (PyPI has no CPU-only torch for x86-64 Linux, and
## its torchvision does not load beside a CPU torch), it says so, removes what it put in,
## and the plain install follows.
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
torch-cpu: | $(BIN)/python
	@if $(BIN)/pip show --disable-pip-version-check torch >/dev/null 2>&1; then \
	  echo "torch is installed already: TORCH=cpu changes nothing (make clean first)"; \
	elif $(BIN)/pip install --disable-pip-version-check --retries 0 --timeout 20 \
	    --index-url $(TORCH_CPU_INDEX) torch torchvision \
	  && $(BIN)/python -c 'import torchvision' 2>/dev/null; then \
	  echo "installed PyTorch's CPU-only build"; \
	else \
	  $(BIN)/pip uninstall --disable-pip-version-check -qy torch torchvision 2>/dev/null; \
	  echo "no working CPU-only torch and torchvision from $(TORCH_CPU_INDEX) here: the plain install follows (about 6.5 GB)"; \
	fi

## Serve the default model (ViT-B-32, laion2b_s34b_b79k) on port 8000.
run: install
	$(BIN)/xmodal serve

## Serve the tiny random-weights model: no download, for development offline.
run-tiny: install
	XMODAL_MODEL=xmodal-tiny XMODAL_PRETRAINED=none $(BIN)/xmodal serve

## Offline demo: synthetic shapes, fine-tune xmodal-tiny, activate it, index a gallery, serve.
## DEMO_ARGS passes options on (`make demo DEMO_ARGS="--port 8080"`; `xmodal demo --help`).
demo: install
	$(BIN)/xmodal demo $(DEMO_ARGS)

## Debian's chromium, for the web page's end-to-end tests (driven by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

## Debian's PostgreSQL server, for the catalogue's tests: each test session starts a
## throwaway cluster of its own (initdb, pg_ctl) on a Unix socket, as the postgres user.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    postgresql postgresql-contrib; }

## nginx from Debian, for the tests of several servers behind a load balancer.
nginx:
	@[ -x /usr/sbin/nginx ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    nginx-light; }

## Lint, type-check and run the default (CPU) test suite, the browser, PostgreSQL and
## nginx tests included.
test: install browser postgres nginx lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

## The quick local loop: the suite without its slow tier (folders named slow, the browser).
test-quick: install postgres nginx
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: install
	$(BIN)/ruff check app models index tests bench
	$(BIN)/ruff format --check app models index tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format app models index tests bench
	$(BIN)/ruff check --fix app models index tests bench

## Encoder throughput, search latency at 100k vectors, HTTP searches/s (see BENCHMARKS.md).
bench: install
	$(BIN)/python -m bench.run

## Every GPU figure in one command (encoders, ingest, search, HTTP); on a GPU host with the
## ../shared/gpu kit run `source .gpu/gpu-env.sh && PYTHONPATH=$$PWD python -m bench.gpu`.
bench-gpu: install
	$(BIN)/python -m bench.gpu $(GPU_ARGS)

## The index job against plain PIL on one core, on the same files (medians of 3 runs).
bench-ingest: install
	$(BIN)/python -m bench.ingest $(INGEST_ARGS)

## Many clients searching, uploading and deleting for 30 s; checks no acknowledged write is
## lost. Starts its own tiny server; `$(BIN)/python -m bench.load --url URL` for another.
load: install
	$(BIN)/python -m bench.load $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
