"""A node whose engine dies leaves the network and exits with a one-line reason, instead of failing every request."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from dellm_p2p import node as node_module
from dellm_p2p.cli import node as cli_node
from dellm_p2p.config import NodeConfig
from dellm_p2p.local import NodeProcess

from .simulated_engine import SimulatedEngine


class DyingEngine(SimulatedEngine):
    """SIMULATED engine that reports a failure once ``die()`` was called."""

    reason: str | None = None

    def die(self) -> None:
        self.reason = "simulated engine process exited"

    def failure(self) -> str | None:
        return self.reason


def test_engine_failure_is_none_by_default():
    assert SimulatedEngine("hi").failure() is None


async def test_node_engine_failure_waits_for_the_reason(tmp_path, monkeypatch):
    engine = DyingEngine("Paris.")
    monkeypatch.setattr(node_module, "build_engine", lambda config, progress: engine)
    monkeypatch.setattr(node_module, "_vllm_on_cpu", lambda: False)
    config = NodeConfig(name="dying", port=0, mdns=False, state_dir=tmp_path)
    async with node_module.Node(config) as node:
        waiting = asyncio.create_task(node.engine_failure(every_s=0.01))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        engine.die()
        async with asyncio.timeout(5):
            assert await waiting == "simulated engine process exited"


async def test_dellm_node_exits_1_when_its_engine_dies(tmp_path, monkeypatch, capsys):
    engine = DyingEngine("Paris.")
    monkeypatch.setattr(node_module, "build_engine", lambda config, progress: engine)
    monkeypatch.setattr(node_module, "_vllm_on_cpu", lambda: False)
    config = NodeConfig(name="dying", port=0, mdns=False, state_dir=tmp_path)
    asyncio.get_running_loop().call_later(1.5, engine.die)
    async with asyncio.timeout(30):
        code = await cli_node.serve(config)
    said = capsys.readouterr()
    assert code == 1
    assert "error: simulated engine process exited; leaving the network" in said.err
    assert "Traceback" not in said.err + said.out


@pytest.mark.slow
def test_real_vllm_worker_killed_stops_the_node(tmp_path):
    """SIGKILL vLLM's worker (as the kernel's OOM killer would): the node says why and exits 1."""
    node = NodeProcess(["--name", "doomed", "--state-dir", str(tmp_path / "doomed"), "--no-mdns"])
    try:
        node.wait_ready(600)
        workers = [
            p for p in psutil.Process(node.proc.pid).children(recursive=True) if "VLLM::Worker" in " ".join(p.cmdline())
        ]
        assert workers, "no vLLM worker process under the node"
        os.kill(workers[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while node.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert node.proc.returncode == 1, node.stderr_tail()
        said = "\n".join(node.stdout_lines) + node.stderr_tail(40)
        assert "vLLM's engine stopped" in said and "leaving the network" in said
    finally:
        node.stop(30)
