"""scripts/bench_load.py against one SIMULATED node: openai clients through the HTTP API, all answered."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_load_tiny_simulated(tmp_path):
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_load.py", "--sim-nodes", "1", "--clients", "6", "--duration-s", "3",
         "--capacity", "2", "--first-token-ms", "100", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["nodes"] == 1 and run["clients"] == 6
    assert run["answered"] > 0 and run["refused"] == 0 and run["lost"] == 0
    assert set(run["k_used"]) <= {"1", "2"}  # two slots: never the default 5
