"""scripts/bench_scale.py runs on a tiny network and prints its table (SIMULATED engines, a few seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_scale.py", "--sizes", "5", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench_scale" in done.stdout and "SIMULATED" in done.stdout
    assert "route p99" in done.stdout and "gossip to all N" in done.stdout
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    assert run["n"] == 5 and "error" not in run
    assert run["membership"]["converged"]
    assert run["routing"]["route_us_p99"] > 0
    assert run["gossip"]["reps"][0]["reached"] == 5
    assert run["coordinator_state"]["bytes_per_peer"] > 0
    assert run["coordinator_live_memory"]["known_peers"] == 5
    assert run["throughput"]["completed"] > 0
