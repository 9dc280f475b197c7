"""The benchmark scripts run on tiny inputs and print their tables, so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"scripts/{name}", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_bench_membership_tiny(tmp_path):
    out = tmp_path / "membership.json"
    done = script("bench_membership.py", "--sizes", "3", "--settle-s", "1", "--warmup-s", "0.5", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "membership gossip benchmark" in done.stdout
    assert json.loads(out.read_text())


@pytest.mark.slow
def test_bench_node_tiny(tmp_path):
    out = tmp_path / "node.json"
    done = script("bench_node.py", "--requests", "2", "--batch", "2", "--max-tokens", "8", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench_node summary" in done.stdout and "wall time per request" in done.stdout
    assert json.loads(out.read_text())


@pytest.mark.slow
def test_bench_overhead_tiny(tmp_path):
    out = tmp_path / "overhead.json"
    done = script("bench_overhead.py", "--requests", "2", "--max-tokens", "8", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "layer overhead" in done.stdout and "(c) coordinator" in done.stdout
    figures = json.loads(out.read_text())
    assert set(figures["ratios"]) >= {"b/a", "c/a"}
