#!/usr/bin/env bash
# Set up (if needed), pull every model the tests use, run the test suite.
# Extra arguments go to pytest (e.g. `-m slow` for the long evaluation runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh || echo "warning: no chromium (apt-get failed): the browser tests will be skipped" >&2
.venv/bin/faceflow models pull --all
.venv/bin/python -m pytest "$@"
