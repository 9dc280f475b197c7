"""``dellm up`` / ``dellm down``: a local swarm in one command (coordinator-only nodes, so it is fast)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DELLM = [sys.executable, "-m", "dellm_p2p.cli.main"]


def dellm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DELLM, *args], capture_output=True, text=True, timeout=timeout)


def pids(swarm: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(swarm.glob("*/node.pid"))]


def running(pid: int) -> bool:
    try:
        return b"dellm_p2p.cli.node" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_up_detached_then_down(tmp_path):
    swarm = tmp_path / "swarm"
    started = dellm("up", "--nodes", "2", "--no-model", "--http-port", "0", "--detach", "--dir", str(swarm))
    try:
        assert started.returncode == 0, started.stderr
        lines = started.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["local-1", "local-2"]
        assert all("ws://127.0.0.1:" in line and "http://127.0.0.1:" in line for line in lines), lines
        assert "dellm down" in started.stderr
        node_pids = pids(swarm)
        assert len(node_pids) == 2 and all(running(pid) for pid in node_pids)
        assert (swarm / "local-1" / "node_key.pem").exists()  # its own state directory

        again = dellm("up", "--nodes", "1", "--no-model", "--detach", "--dir", str(swarm))
        assert again.returncode == 1 and "already running" in again.stderr and again.stderr.count("\n") == 1

        stopped = dellm("down", "--dir", str(swarm))
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.splitlines() == [f"local-{i} (pid {pid}) stopped" for i, pid in enumerate(node_pids, 1)]
        assert not any(running(pid) for pid in node_pids) and pids(swarm) == []
        assert "shutting down" in (swarm / "local-1" / "node.log").read_text()  # SIGTERM: a clean stop
    finally:
        for pid in pids(swarm):
            if running(pid):
                os.killpg(pid, signal.SIGKILL)
    nothing = dellm("down", "--dir", str(swarm))
    assert nothing.returncode == 0 and "no local swarm running" in nothing.stderr


def test_up_in_the_foreground_stops_every_node_on_ctrl_c(tmp_path):
    swarm = tmp_path / "swarm"
    proc = subprocess.Popen(
        [*DELLM, "up", "--nodes", "2", "--no-model", "--dir", str(swarm)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = [proc.stdout.readline() for _ in range(2)]
        assert all("ws://127.0.0.1:" in line for line in ready), (ready, proc.stderr.read() if proc.poll() else "")
        node_pids = pids(swarm)
        assert len(node_pids) == 2 and all(running(pid) for pid in node_pids)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert not any(running(pid) for pid in node_pids) and pids(swarm) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids(swarm):
            if running(pid):
                os.killpg(pid, signal.SIGKILL)


def test_up_refuses_conflicting_options(tmp_path):
    both = dellm("up", "--model", "smollm2-135m", "--no-model", "--dir", str(tmp_path))
    assert both.returncode == 2 and both.stderr.startswith("dellm: error: ") and both.stderr.count("\n") == 1


def test_a_node_that_fails_to_start_stops_the_rest_and_shows_its_log(tmp_path):
    # A directory passes the option's check (a missing one is refused at parse time, exit 2) but holds no model.
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    failed = dellm("up", "--nodes", "2", "--model", str(empty), "--dir", str(tmp_path / "swarm"))
    assert failed.returncode == 1, failed.stderr
    assert "exited with code 1 while starting" in failed.stderr
    assert "is not a Hugging Face model directory (no config.json)" in failed.stderr
    assert pids(tmp_path / "swarm") == []


def test_up_models_cycle_over_the_nodes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dellm_p2p.cli import up as up_module

    started: dict[str, list[str]] = {}
    # Record each node's command line instead of starting it, then report a failed start: up stops and exits 1.
    monkeypatch.setattr(up_module.LocalNode, "start", lambda node, args: started.__setitem__(node.name, args))
    monkeypatch.setattr(up_module, "_wait_ready", lambda *args: True)
    result = CliRunner().invoke(
        up_module.up, ["--nodes", "3", "--models", "smollm2-135m, gemma3-270m", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    models = {name: args[args.index("--model") + 1] for name, args in started.items()}
    assert models == {"local-1": "smollm2-135m", "local-2": "gemma3-270m", "local-3": "smollm2-135m"}


def test_up_refuses_unknown_models_at_parse_time(tmp_path):
    bad = dellm("up", "--models", "smollm2-135m,gema", "--dir", str(tmp_path))
    assert bad.returncode == 2
    assert "unknown model 'gema'" in bad.stderr and "smollm2-135m, gemma3-270m" in bad.stderr
    assert dellm("up", "--model", "nope", "--dir", str(tmp_path)).returncode == 2
    both = dellm("up", "--model", "gemma3-270m", "--models", "gemma3-270m", "--dir", str(tmp_path))
    assert both.returncode == 2 and "one of --model, --models" in both.stderr
    assert not list(tmp_path.iterdir())  # nothing started
