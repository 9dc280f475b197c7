"""The command-line surfaces: bad arguments get one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

from dellm_p2p.local import NodeProcess


def run(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


def node(*args: str) -> subprocess.CompletedProcess:
    return run("dellm_p2p.cli.node", *args)


def test_node_rejects_bad_arguments(tmp_path):
    bad_port = node("--port", "99999")
    assert bad_port.returncode == 2 and "99999" in bad_port.stderr
    missing_model = node("--model", "/nonexistent/model", "--port", "0", "--state-dir", str(tmp_path))
    assert missing_model.returncode == 2  # refused with the arguments, before anything starts
    assert (
        missing_model.stderr.strip().splitlines()[-1]
        == "dellm-node: error: invalid config value for model: model directory not found: /nonexistent/model"
    )
    config = tmp_path / "bad.toml"
    config.write_text('[node]\nname = "x"\nmax_conncurrency = 4\n')
    bad_key = node("--config", str(config))
    assert bad_key.returncode == 2 and "max_conncurrency" in bad_key.stderr
    assert bad_key.stderr.strip().count("\n") == 0
    openai_without_url = node("--engine", "openai")
    assert openai_without_url.returncode == 2 and "openai_base_url" in openai_without_url.stderr
    for result in (bad_port, missing_model, bad_key, openai_without_url):
        assert "Traceback" not in result.stderr


def test_node_stops_cleanly_on_sigterm(tmp_path):
    proc = NodeProcess(["--no-model", "--name", "stopper", "--state-dir", str(tmp_path)])
    proc.wait_ready(timeout_s=60)
    started = time.monotonic()
    assert proc.stop(timeout_s=20) == 0, proc.stderr_tail()
    assert time.monotonic() - started < 10
    assert "shutting down" in proc.stderr_tail()
    assert "Traceback" not in proc.stderr_tail(200)


def test_generate_and_stats_against_nobody_fail_in_one_line():
    for args in (("generate", "--peer", "ws://127.0.0.1:9", "hello"), ("stats", "--peer", "ws://127.0.0.1:9")):
        result = run("dellm_p2p.cli.main", *args)
        assert result.returncode == 1
        assert result.stderr.startswith("dellm: error: connection_lost") and result.stderr.count("\n") == 1
    bad = run("dellm_p2p.cli.main", "generate", "--peer", "ws://127.0.0.1:9", "--temperature", "-1", "x")
    assert bad.returncode == 2 and "temperature" in bad.stderr
