#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one go, on one (a lent GPU machine, a GPU worker host).
# A missing GPU fails here rather than skips.
#
# Run from the repository root: bench/gpu_check.sh
#   PYTHON   the interpreter (default .venv/bin/python; `pip install -e '.[dev,vllm]'` for vLLM)
#   REQUESTS chat requests in the benchmark (default 512), ROUNDS timed runs of each path (2)
#   BENCH_ARGS more arguments for bench/generate.py (e.g. "--layers 12 --hidden 768")
#
# 1. Generation: the tests of tests/unit/test_generation_engines.py that need CUDA (the batched
#    and continuous engines on the GPU, the vLLM engine where the vllm extra is installed; their
#    skip reasons are printed).
# 2. NVML's energy counter of this GPU, read through worker.usage: it moves under load and stays
#    below the GPU's power limit times the seconds (tests/unit/test_usage.py; needs no services).
# 3. A real job's energy through GET /v1/jobs/{id}: measured, above zero, below the power limit
#    times its GPU-seconds (tests/e2e/test_energy.py; needs Postgres and RabbitMQ, as `make
#    services` checks; skipped with a note when they are not reachable).
# 4. The generate benchmark there (every engine, the bare loops, vLLM's bare loop where
#    installed), bf16; with the end-to-end row through /openai/v1 (--e2e) when Postgres and
#    RabbitMQ are reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-${PY:-.venv/bin/python}}
export BARGE_REQUIRE_GPU=1

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
"$PY" -c 'import importlib.util as u; print("vllm:", "installed" if u.find_spec("vllm") else "not installed")'

echo "== CUDA and vLLM tests"
"$PY" -m pytest tests/unit/test_generation_engines.py -q -rs -p no:cacheprovider -s \
    -k "cuda or vllm"

echo "== NVML energy"
"$PY" -m pytest -q -p no:cacheprovider tests/unit/test_usage.py -k nvml -rs
if "$PY" -c 'import scripts.check_services as c, sys; sys.exit(bool(c.check_postgres() or c.check_rabbitmq()))'; then
  "$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_energy.py -rs
else
  echo "gpu_check: Postgres or RabbitMQ not reachable: the job-level energy check was not run" >&2
fi

echo "== generate benchmark"
E2E=""
if "$PY" -c 'import scripts.check_services as c, sys; sys.exit(bool(c.check_postgres() or c.check_rabbitmq()))'; then
  E2E="--e2e"
fi
# shellcheck disable=SC2086  # BENCH_ARGS and E2E are split on purpose
"$PY" bench/generate.py --device cuda --requests "${REQUESTS:-512}" --rounds "${ROUNDS:-2}" \
    $E2E ${BENCH_ARGS:-}
