# The two commands: `make run` (the whole stack, embedded defaults) and
# `make test` (lint, types, tests). Each sets itself up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/coopgate/v1/*.proto)

.PHONY: run test setup generate check-generated lint typecheck pytest bench clean demo browser

## Debian's chromium, which the console's browser tests drive (Playwright's own
## browser download is never used). Installed when missing: as root, or with sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y --no-install-recommends chromium || \
	  ($$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium)

browser: $(CHROMIUM)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(STAMP)

## Regenerate the Python stubs (with mypy stubs) from proto/ — never edit them by hand.
generate: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=proto --grpc_python_out=proto \
	  --mypy_out=quiet:proto --mypy_grpc_out=quiet:proto $(PROTOS)

## Fails when the committed generated code differs from what the .proto files give.
check-generated: generate
	@git diff --exit-code --stat -- proto/ || \
	  (echo "generated code in proto/ is stale: run 'make generate' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- proto/)" || \
	  (git status --short -- proto/ >&2; echo "uncommitted generated files in proto/" >&2; exit 1)

lint: $(STAMP)
	cd proto && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup generate lint typecheck pytest

run: setup
	$(BIN)/coopgate up

## The scenarios end to end on a throwaway stack, reference partners as separate processes.
demo: setup
	$(BIN)/python -m partners.demo --own-stack

## Benchmarks (not part of `make test`): figures next to a bare-engine baseline.
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.consent_decision $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.audit_log $(AUDIT_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.case_view $(VIEW_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.incident --no-drills $(INCIDENT_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.incident $(INCIDENT_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.console $(CONSOLE_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.span_cost
	$(BIN)/python -m tests.benchmarks.tracing $(TRACING_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.tracing_parts $(TRACING_PARTS_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.tracing_instructions $(TRACING_INSTRUCTIONS_BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.memory $(MEMORY_BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
