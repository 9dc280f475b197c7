#!/usr/bin/env bash
# The main job: set up (if needed), start three nodes with the embedded default
# model on 127.0.0.1 and ask the swarm a question (`dellm ask`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo_swarm.py "$@"
