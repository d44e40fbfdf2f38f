#!/usr/bin/env bash
# Create .venv/ at the repository root (Python 3.11) and install faceflow with its test tools and
# every optional extra the tests exercise (postgres, ann, plots: see pyproject.toml).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.faceflow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "== installing faceflow and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[all,dev]"
  touch "$stamp"
fi
