"""Shared fixtures: one real dellm-node with the default model for the whole session."""

from __future__ import annotations

import pytest

from dellm_p2p.local import NodeProcess


@pytest.fixture(scope="session")
def vllm_node(tmp_path_factory):
    """A real ``dellm-node`` serving the embedded default model on 127.0.0.1.

    Started once per session (loading and warming up takes about a minute on
    CPU); tests must leave it serving. Its clean exit on SIGTERM is checked
    at teardown. It serves the HTTP API too (``node.http_url``, on a free
    loopback port), so the API tests need no model of their own.
    """
    state = tmp_path_factory.mktemp("vllm-node-state")
    node = NodeProcess(
        ["--name", "test-vllm", "--state-dir", str(state), "--max-concurrency", "8", "--no-mdns", "--http-port", "0"]
    )
    try:
        node.wait_ready(timeout_s=600)
    except Exception:
        node.kill()
        raise
    yield node
    code = node.stop(timeout_s=60)
    assert code == 0, f"dellm-node exited with {code}:\n{node.stderr_tail()}"


@pytest.fixture(scope="session")
def vllm_node_b(tmp_path_factory, vllm_node):
    """A second real node (started after the first, its vLLM worker on core 1)."""
    state = tmp_path_factory.mktemp("vllm-node-b-state")
    node = NodeProcess(
        ["--name", "test-vllm-b", "--state-dir", str(state), "--max-concurrency", "8", "--cpu-bind", "1"]
    )
    try:
        node.wait_ready(timeout_s=600)
    except Exception:
        node.kill()
        raise
    yield node
    assert node.stop(timeout_s=60) == 0, node.stderr_tail()


@pytest.fixture(scope="session")
def gemma_node(tmp_path_factory):
    """A real node serving the embedded base model Gemma 3 270M (``--model gemma3-270m``), vLLM worker on core 1.

    No mDNS: it meets only the peers a test names. Converting the model on first use takes minutes. Its vLLM
    worker holds about 2.9 GB (float32 weights, 1.1 GB, plus the KV cache: 1 GiB, as vLLM's CPU backend takes
    whole GiB only).
    """
    state = tmp_path_factory.mktemp("gemma-node-state")
    node = NodeProcess(
        ["--model", "gemma3-270m", "--name", "test-gemma", "--state-dir", str(state), "--max-concurrency", "8",
         "--cpu-bind", "1", "--no-mdns", "--kv-cache-gib", "1"]
    )  # fmt: skip
    try:
        node.wait_ready(timeout_s=900)
    except Exception:
        node.kill()
        raise
    yield node
    assert node.stop(timeout_s=60) == 0, node.stderr_tail()
