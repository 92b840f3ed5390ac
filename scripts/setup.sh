#!/usr/bin/env bash
# Create .venv and install memscore with its test tools. Idempotent: a second run only checks.
# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml (on these machines pip takes
# them from local disk).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.memscore-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
# Headless Chromium renders `memscore report` pages in tests/test_report.py. Best effort: a
# machine without apt (or without root) only gets a warning, and that test then fails saying why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
    echo "warning: could not install chromium with apt-get; tests/test_report.py needs /usr/bin/chromium" >&2
  fi
fi
