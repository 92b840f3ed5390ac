#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Needs Redis on 127.0.0.1:6379
# (override with MEMSCORE_TEST_REDIS_URL); S3 is a moto server the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# Style first (config in pyproject.toml): a formatting slip fails in seconds, not after the suite.
.venv/bin/ruff format --check --quiet .
.venv/bin/ruff check --quiet .
# Two test processes (pytest-xdist; MEMSCORE_TEST_PROCESSES=0 runs in this one), each, and every
# worker or server it starts, on one thread: the integration tests' waits on workers, heartbeats
# and outages are filled by the other process, and two torch processes with two threads each on
# two cores would spin against each other.
procs="${MEMSCORE_TEST_PROCESSES:-2}"
if [ "$procs" != 0 ]; then
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
fi
exec .venv/bin/python -m pytest -q -n "$procs" --dist worksteal "$@"
