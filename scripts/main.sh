#!/usr/bin/env bash
# The main job: set up (if needed), start a node with the embedded default
# model on 127.0.0.1 and stream an answer from it over the wire protocol.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo_node.py "$@"
