"""scripts/bench_api.py runs on a tiny input and prints its table, so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_bench_api_rejects_half_a_node():
    done = subprocess.run(
        [sys.executable, "scripts/bench_api.py", "--peer", "ws://127.0.0.1:1"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--peer and --http go together" in done.stderr


@pytest.mark.slow
def test_bench_api_tiny(vllm_node, tmp_path):
    out = tmp_path / "api.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_api.py", "--peer", vllm_node.url, "--http", vllm_node.http_url,
         "--questions", "2", "--clients", "2", "--duration", "3", "--max-tokens", "8", "--redundancy", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HTTP API benchmark" in done.stdout and "ratio API / Swarm" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["overhead"]["questions"] == 2 and figures["overhead"]["ratio_api_over_swarm"]["wall"] > 0
    load = figures["load"]
    assert load["sent"] >= 2 and load["lost"] == 0 and load["answered"] == load["sent"]
    assert load["ttft_ms"]["p50"] > 0
