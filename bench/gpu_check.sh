#!/usr/bin/env bash
# Generation on a CUDA machine, in one go: the tests of tests/unit/test_generation_engines.py that
# need CUDA (the batched and continuous engines on the GPU, the vLLM engine where the vllm extra is
# installed; their skip reasons are printed), then the generate benchmark there (every engine, the
# bare loops, vLLM's bare loop where installed), bf16.
#
# Run from the repository root: bench/gpu_check.sh
#   PYTHON   the interpreter (default .venv/bin/python; `pip install -e '.[dev,vllm]'` for vLLM)
#   REQUESTS chat requests in the benchmark (default 512), ROUNDS timed runs of each path (2)
#   BENCH_ARGS more arguments for bench/generate.py (e.g. "--layers 12 --hidden 768")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here")'
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
"$PY" -c 'import importlib.util as u; print("vllm:", "installed" if u.find_spec("vllm") else "not installed")'

echo "== CUDA and vLLM tests"
"$PY" -m pytest tests/unit/test_generation_engines.py -q -rs -p no:cacheprovider -s \
    -k "cuda or vllm"

echo "== generate benchmark"
# shellcheck disable=SC2086  # BENCH_ARGS is split on purpose
"$PY" bench/generate.py --device cuda --requests "${REQUESTS:-512}" --rounds "${ROUNDS:-2}" \
    ${BENCH_ARGS:-}
