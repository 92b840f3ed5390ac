#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Needs Redis on 127.0.0.1:6379
# (override with MEMSCORE_TEST_REDIS_URL); S3 is a moto server the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q "$@"
