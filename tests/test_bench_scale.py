"""scripts/bench_scale.py runs on a tiny network and prints its tables (SIMULATED engines, some seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_scale.py", "--sizes", "5", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench_scale" in done.stdout and "SIMULATED" in done.stdout
    assert "route p99" in done.stdout and "gossip to all N" in done.stdout
    figures = json.loads(out.read_text())
    (run,) = figures["runs"]
    assert run["n"] == 5 and "error" not in run
    assert run["membership"]["converged"]
    assert run["routing"]["route_us_p99"] > 0 and run["routing"]["route_dellm_us_p99"] > 0
    assert set(run["learning_offline"]) == {"dellm", "adaptive"}
    assert run["gossip"]["reps"][0]["reached"] == 5
    assert run["coordinator_state"]["bytes_per_peer"] > 0
    assert run["coordinator_live_memory"]["known_peers"] == 5
    assert run["throughput"]["completed"] > 0
    # Routing that learns (issue 17): both policies ran on SIMULATED nodes with hidden accuracies.
    assert "routing that learns" in done.stdout and "Thompson sampling" in done.stdout
    assert set(run["learning"]) == {"dellm", "adaptive"}
    for figures in run["learning"].values():
        assert figures["questions"] == 40 and figures["errors"] == 0
        assert figures["requests"] == 120 and 1 <= figures["distinct_peers_used"] <= 5
        assert figures["peak_in_flight"] <= figures["capacity"]
        assert 0 <= figures["accuracy_first"] <= 1 and 0 <= figures["accuracy_last"] <= 1
        assert figures["spearman_ceiling"] is not None and set(figures["targets"]) >= {"no peer over capacity"}
