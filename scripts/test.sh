#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1
.venv/bin/python -m ruff check dellm_p2p tests scripts examples
exec .venv/bin/python -m pytest "$@"
