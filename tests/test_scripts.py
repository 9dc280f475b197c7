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


@pytest.mark.slow
def test_sweep_sampling_tiny(tmp_path):
    out = tmp_path / "sweep.json"
    done = script(
        "sweep_sampling.py", "--limit", "2", "--samples", "2", "--temperatures", "0.7", "--top-p", "1",
        "--max-tokens", "16", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sampling sweep" in done.stdout and "| T=0.7 top_p=1 |" in done.stdout
    figures = json.loads(out.read_text())
    (setting,) = figures["settings"]
    assert set(setting["accuracy"]) >= {"one", "pass@2", "majority@2", "weighted@2"}
    assert len(setting["replies"]) == 2 and all(len(r) == 2 for r in setting["replies"])


def test_sweep_sampling_rejects_bad_arguments():
    done = script("sweep_sampling.py", "--samples", "3", "--ks", "5")
    assert done.returncode == 2 and "every k in 1..--samples" in done.stderr


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dellm_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _load_harness(name: str):
    """A module of scripts/harness/ (the benchmark harness), imported as the scripts import it."""
    import importlib
    from pathlib import Path

    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(f"harness.{name}")


def test_soak_helpers():
    from dellm_p2p.coordinator.errors import AllPeersFailedError

    soak = _load_script("soak")
    a = AllPeersFailedError(
        "chunk c1 got no answer (3f9a1c2b7d0e4f11: connection_lost: cannot connect to ws://127.0.0.1:4711)"
    )
    b = AllPeersFailedError(
        "chunk c1 got no answer (0aa1c2b7d0e4f199: connection_lost: cannot connect to ws://127.0.0.1:5)"
    )
    assert (
        soak.reason_key(a)
        == soak.reason_key(b)
        == ("AllPeersFailedError: chunk cN got no answer (<id>: connection_lost: cannot connect to <url>)")
    )
    assert soak.percentile([], 50) is None
    assert soak.percentile([3.0, 1.0, 2.0], 50) == 2.0 and soak.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert soak.fold("Brasília") == "brasilia"
    pairs = soak.load_questions(soak.DATA_DIR)
    assert len(pairs) == 194 and pairs[0] == ("What is the capital of Afghanistan?", "Kabul")


def test_soak_node_envs():
    soak = _load_script("soak")
    envs = soak.node_envs(["A=1", "b:B=x=y", 'c:DELLM_VLLM_ARGS={"k": 1}'], 3)
    assert envs == [{"A": "1"}, {"A": "1", "B": "x=y"}, {"A": "1", "DELLM_VLLM_ARGS": '{"k": 1}'}]
    for bad in ("nokey", "d:A=1", "=1", "ab:A=1"):
        with pytest.raises(ValueError, match="--node-env"):
            soak.node_envs([bad], 3)
    with pytest.raises(SystemExit):  # a bad spec is a usage error, not a traceback
        soak.parse_args(["--node-env", "z:A=1"])


def test_soak_memory_slope_and_summary():
    mem = _load_harness("memory")
    mib = 2**20
    assert mem.slope_mib_per_min([(0, 0), (60, 10 * mib), (120, 20 * mib)]) == pytest.approx(10.0)
    assert mem.slope_mib_per_min([(0, 5 * mib)]) is None and mem.slope_mib_per_min([(3, 1), (3, 2)]) is None
    series = mem.MemorySeries("n")
    for minute in range(11):  # the worker grows 8 MiB/min for 5 minutes, then levels off
        worker = (100 + 8 * min(minute, 5)) * mib
        roles = {"node": {"rss": 50 * mib, "pss": 40 * mib}, "worker": {"rss": worker, "pss": None}}
        series.samples.append(mem.MemorySample(minute * 60.0, roles))
    series.samples.append(mem.MemorySample(30.0, None))  # the node was down: skipped
    summary = series.summary(600.0)
    assert summary["worker"]["rss"]["slope_first_half_mib_per_min"] == pytest.approx(8.0)
    assert summary["worker"]["rss"]["slope_second_half_mib_per_min"] == pytest.approx(0.0)
    assert "pss" not in summary["worker"] and "pss" not in summary["total"]  # unreadable PSS is not summed as 0
    assert summary["total"]["rss"]["last_bytes"] == 190 * mib
    assert summary["node"]["pss"]["first_bytes"] == 40 * mib
    halves = mem.throughput_halves([10.0, 20.0, 30.0, 70.0], 120.0)
    assert halves == {"first_per_min": 3.0, "second_per_min": 1.0, "ratio": pytest.approx(1 / 3)}


def test_soak_memory_samples_this_process_tree():
    mem = _load_harness("memory")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        roles = mem.sample_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert roles["node"]["rss"] > 0 and roles["node"]["pss"] > 0
    assert roles["other"]["rss"] > 0  # the child is neither an engine core nor a worker
    assert mem.sample_tree(2**22 + 12345) is None  # no such process


@pytest.mark.slow
def test_soak_tiny(vllm_node, tmp_path):
    """The session node plus one victim the script starts, SIGKILLs at 3 s and restarts (same id and port)."""
    out = tmp_path / "soak.json"
    done = script(
        "soak.py", "--peer", vllm_node.url, "--nodes", "1", "--duration", "10", "--clients", "4", "--swarms", "2",
        "--kill-at", "3", "--max-tokens", "8", "--deadline", "45", "--settle", "1", "--json", str(out),
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "soak: 4 clients on 2 coordinators" in done.stdout and "nothing lost" in done.stdout
    result = json.loads(out.read_text())
    assert result["nothing_lost"] and result["hung"] == 0 and result["sent"] >= 4
    assert result["sent"] == result["answered"] + result["failed"]
    timeline = result["timeline"]
    assert timeline["same_node_id"] and timeline["rejoined_s"] >= timeline["ready_s"] > timeline["killed_s"]
    victim = next(n for n in result["nodes"] if n["started_here"])
    assert victim["restarted"] and victim["rss_start_bytes"] and victim["rss_end_bytes"]
    assert timeline["probe"]["asked"] == 2 and not timeline["probe"]["errors"]
    memory = result["memory"]  # one sample at the start and one at the end of the load, at least
    assert memory["throughput"]["first_per_min"] is not None
    peer = next(n for n in memory["nodes"] if n["name"] != victim["name"])
    assert len(peer["samples"]) >= 2 and {"node", "engine_core", "worker"} <= set(peer["samples"][0]["roles"])
