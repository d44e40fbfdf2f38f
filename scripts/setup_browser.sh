#!/usr/bin/env bash
# What the browser tests (tests/test_web.py) need beyond scripts/setup.sh: Debian's chromium (plus
# fonts, so screenshots show text) and Playwright for Python in .venv. Playwright's own browser
# download is not used (nor reachable offline): the tests launch /usr/bin/chromium through
# `executable_path`. Idempotent: a second run only checks that both are there.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-liberation fonts-dejavu-core
fi
PY=${VENV:-.venv}/bin/python
if [ ! -x "$PY" ]; then
  echo "no $PY: run scripts/setup.sh first" >&2
  exit 1
fi
if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "== installing playwright (pip) into ${VENV:-.venv}"
  "$PY" -m pip install --quiet "playwright>=1.40"
fi
echo "chromium: $(chromium --version 2>/dev/null)"
"$PY" -c "from importlib.metadata import version; print('playwright:', version('playwright'))"
