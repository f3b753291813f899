#!/usr/bin/env bash
# Checks that need an NVIDIA GPU, run on one (a lent GPU machine, a GPU worker host). A missing
# GPU fails here rather than skips (BARGE_REQUIRE_GPU=1).
#
#   bench/gpu_check.sh              # from the repository root, with the dev virtualenv
#
# 1. NVML's energy counter of this GPU, read through worker.usage: it moves under load and stays
#    below the GPU's power limit times the seconds (tests/unit/test_usage.py; needs no services).
# 2. A real job's energy through GET /v1/jobs/{id}: measured, above zero, below the power limit
#    times its GPU-seconds (tests/e2e/test_energy.py; needs Postgres and RabbitMQ, as `make
#    services` checks; skipped with a note when they are not reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export BARGE_REQUIRE_GPU=1

"$PY" -m pytest -q -p no:cacheprovider tests/unit/test_usage.py -k nvml -rs

if "$PY" -c 'import scripts.check_services as c, sys; sys.exit(bool(c.check_postgres() or c.check_rabbitmq()))'; then
  "$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_energy.py -rs
else
  echo "gpu_check: Postgres or RabbitMQ not reachable: the job-level energy check was not run" >&2
fi
