"""A real node at default verbosity: a quiet start, and SIGTERM mid-answer releases vLLM's shared memory."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dellm_p2p.local import NodeProcess
from dellm_p2p.models import default_model_ready


@pytest.mark.slow
def test_quiet_start_and_clean_sigterm_while_answering(tmp_path):
    cached = default_model_ready()
    grace = {"DELLM_GRACE_PERIOD_S": "1"}  # the answer is still running when the grace period ends
    node = NodeProcess(["--name", "quiet", "--state-dir", str(tmp_path), "--no-mdns"], env=grace)
    try:
        url = node.wait_ready(timeout_s=300)
        start_log = node.stderr_tail(500)
        asking = subprocess.Popen(
            [sys.executable, "-m", "dellm_p2p.cli.main", "generate", "--peer", url, "--max-tokens", "1000", "-n", "4",
             "--temperature", "0.8", "Write a long story about a dragon."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(4)  # the request is being generated (1000 tokens x 4 take far longer)
        assert asking.poll() is None, asking.communicate()
        assert node.stop(timeout_s=60) == 0, node.stderr_tail()
        asking.communicate(timeout=30)
    finally:
        node.kill()
    time.sleep(2)  # multiprocessing's resource tracker (which reports leaks) exits just after the node
    log = node.stderr_tail(1000)
    for noise in ("Triton", "FutureWarning", "NUMA", "it/s]", "Loading safetensors", "leaked", "Traceback", "ERROR"):
        assert noise not in log, f"{noise!r} in the node's stderr:\n{log}"
    if cached:
        assert "converting" not in start_log
    assert "vLLM's CPU worker runs on core" in start_log
