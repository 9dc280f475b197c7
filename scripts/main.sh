#!/usr/bin/env bash
# The main job: set up (if needed), start a mixed swarm of three nodes on
# 127.0.0.1 (SmolLM2-135M-Instruct, Gemma 3 270M, SmolLM2-135M-Instruct: two
# different models vote on every chunk; scripts/demo_swarm.py says why this mix)
# and ask the swarm a question (`dellm ask`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo_swarm.py "$@"
