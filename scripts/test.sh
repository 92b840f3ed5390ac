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
exec .venv/bin/python -m pytest -q "$@"
