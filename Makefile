# Barge: `make demo` runs a real job on the embedded stack; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
# mkdocs-material prints a banner about its successor on every build unless told not to.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
# torch is pinned to the 2.13 series (a CPU build here; the same pin picks a CUDA build on GPU hosts).
TORCH := torch==2.13.*

.PHONY: help venv dev demo test test-unit lint typecheck fmt services docs docs-serve bench bench-finetune bench-onnx bench-ray bench-images bench-lora bench-generate bench-scale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(PIP) install '$(TORCH)' -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install '$(TORCH)' -e '.[dev]'
	@touch $@

venv: $(VENV)/.runtime ## the virtualenv with Barge installed

dev: $(VENV)/.dev ## the virtualenv with the dev extras (tests, lint, types)

demo: venv ## run a real embedding job end to end on the embedded stack (no servers needed)
	$(BIN)/barge demo

services: dev ## check Postgres and RabbitMQ are reachable and Chromium is installed (says how if not)
	$(BIN)/python scripts/check_services.py

lint: dev ## ruff format check + ruff lint + the import contracts (layers) + the docs site, strict
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(MKDOCS) build --strict --quiet

docs: dev ## build the docs site into build/site (strict: a broken link fails; no network needed)
	$(MKDOCS) build --strict

docs-serve: dev ## serve the docs site on http://127.0.0.1:8001 with live reload (warnings shown, not fatal)
	$(MKDOCS) serve --no-strict --dev-addr 127.0.0.1:8001

typecheck: dev ## mypy on the packages
	$(BIN)/mypy

fmt: dev ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The suite runs in two phases. First every test but the exclusive ones, its test files spread
# over TEST_WORKERS processes (pytest-xdist; each process has its own database, RabbitMQ vhost,
# S3 server and workers; TEST_WORKERS=0 runs them in this one). Then the tests marked
# `exclusive`, one at a time: they stop or restart a service every test shares (RabbitMQ,
# Postgres) or bound wall-clock time, which parallel runs on a small machine disturb. Both phases
# always run; the target fails if either failed.
TEST_WORKERS ?= 2

test: dev services lint typecheck ## everything: services check, lint, types, all tests
	status=0; \
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not exclusive" --durations=25 $(PYTEST_ARGS); \
	code=$$?; [ $$code -eq 0 ] || [ $$code -eq 5 ] || status=$$code; \
	$(BIN)/pytest -m exclusive $(PYTEST_ARGS); \
	code=$$?; [ $$code -eq 0 ] || [ $$code -eq 5 ] || status=$$code; \
	exit $$status

test-unit: dev ## the unit tier only: no services, seconds
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

bench: venv ## throughput benchmark against a bare PyTorch loop
	$(BIN)/python bench/throughput.py

bench-finetune: venv ## fine-tune steps/s against a bare PyTorch training loop
	$(BIN)/python bench/finetune.py

bench-onnx: venv ## an ONNX regress job's records/s against onnxruntime in a bare loop
	$(BIN)/python bench/onnx.py

bench-ray: venv ## the same embedding job through Barge and Ray Data (the bench extra), Barge / Ray
	$(BIN)/pip --disable-pip-version-check -q install -e '.[bench]'
	$(BIN)/python bench/ray_peer.py

bench-images: venv ## image_classify over one object per image vs bare loops (in memory, from S3)
	$(BIN)/python bench/images.py

bench-lora: venv ## LoRA steps/s against a bare peft loop; peak RSS of LoRA vs full
	$(BIN)/python bench/lora.py

bench-generate: venv ## generation: Barge's engines against bare generate loops, completion tokens/s
	$(BIN)/python bench/generate.py $(BENCH_ARGS)

bench-scale: venv ## the control plane with simulated GPU workers (BENCH_ARGS="workers --workers 100 ...")
	$(BIN)/python bench/scale.py $(or $(BENCH_ARGS),workers)

clean: ## remove the virtualenv and the embedded state
	rm -rf $(VENV) .barge
