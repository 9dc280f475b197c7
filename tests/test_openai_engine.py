"""OpenAICompatEngine against a real ``vllm serve`` of the default model on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from dellm_p2p.client import PeerClient
from dellm_p2p.engine import EngineError, GenerationRequest
from dellm_p2p.engine.openai_engine import OpenAICompatEngine
from dellm_p2p.local import NodeProcess
from dellm_p2p.models import DEFAULT_MODEL_NAME, ensure_default_model
from dellm_p2p.protocol import ChatMessage, SamplingParams, Token

FRANCE = [ChatMessage(role="user", content="What is the capital of France?")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory):
    """``vllm serve`` (its OpenAI-compatible API server) of the default model; yields the API root."""
    model_dir = ensure_default_model()
    port = free_port()
    log = (tmp_path_factory.mktemp("vllm-serve") / "server.log").open("w")
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    # `vllm serve` itself fails under vllm-cpu (its metadata is named vllm-cpu); the module works.
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", DEFAULT_MODEL_NAME, "--dtype", "float32", "--max-model-len", "2048",
         "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, f"vllm serve exited with {proc.returncode}; see {log.name}"
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "vllm serve was not ready within 600 s"
            time.sleep(1)
        # The first request after loading is slow (one-time warm-up on CPU).
        httpx.post(f"{base}/completions", json={"model": DEFAULT_MODEL_NAME, "prompt": "Hi", "max_tokens": 2},
                   timeout=300)  # fmt: skip
        yield base
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def server_metric(base: str, name: str) -> float:
    """Sum of a metric over its labels in the server's Prometheus /metrics."""
    text = httpx.get(base.removesuffix("/v1") + "/metrics", timeout=5).text
    values = re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    assert values, f"no {name} in /metrics"
    return sum(float(v) for v in values)


@pytest.mark.slow
async def test_streams_chat_and_prompt_from_vllm_serve(vllm_serve):
    engine = OpenAICompatEngine(vllm_serve)
    await engine.start()
    try:
        assert engine.info.name == DEFAULT_MODEL_NAME and engine.info.max_model_len == 2048
        request = GenerationRequest(SamplingParams(max_tokens=32, logprobs=True), messages=FRANCE)
        deltas = [d async for d in engine.generate(request, "chat-1")]
        text = "".join(d.text for d in deltas)
        assert "Paris" in text
        assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
        counted = [d for d in deltas if d.tokens]
        assert len(counted) >= 3 and all(len(d.logprobs) == d.tokens for d in counted)
        assert all(lp <= 0 for d in counted for lp in d.logprobs)
        assert max(d.prompt_tokens or 0 for d in deltas) > 10
        raw = GenerationRequest(SamplingParams(max_tokens=5), prompt="The capital of France is")
        assert "Paris" in "".join([d.text async for d in engine.generate(raw, "prompt-1")])
        assert engine.stats().running == 0
    finally:
        await engine.close()


@pytest.mark.slow
def test_node_fronts_vllm_serve_and_cancel_reaches_it(vllm_serve, tmp_path):
    node = NodeProcess(["--openai-url", vllm_serve, "--name", "front", "--state-dir", str(tmp_path)])
    try:
        node.wait_ready(timeout_s=60)
        assert node.model == DEFAULT_MODEL_NAME

        async def scenario():
            async with await PeerClient.connect(node.url) as client:
                answer = await client.complete(messages=FRANCE, params=SamplingParams(max_tokens=32))
                assert "Paris" in answer.text
                story = [ChatMessage(role="user", content="Write a very long story about a dragon.")]
                params = SamplingParams(max_tokens=1500, temperature=0.8)
                seen = 0
                async for item in client.generate(messages=story, params=params, request_id="long"):
                    if isinstance(item, Token):
                        seen += item.tokens
                        if seen >= 20 and seen - item.tokens < 20:
                            await client.cancel("long")
                    else:
                        assert item.finish_reasons == ["cancelled"]
                # Closing the HTTP stream made vLLM abort the request: nothing
                # runs and the server's generated-token counter stands still.
                tokens = "vllm:generation_tokens_total"
                async with asyncio.timeout(15):
                    while await asyncio.to_thread(server_metric, vllm_serve, "vllm:num_requests_running"):
                        await asyncio.sleep(0.2)
                    before = await asyncio.to_thread(server_metric, vllm_serve, tokens)
                    await asyncio.sleep(1.0)
                    assert await asyncio.to_thread(server_metric, vllm_serve, tokens) == before

        asyncio.run(scenario())
    finally:
        assert node.stop() == 0, node.stderr_tail()


async def test_unreachable_server_is_a_clear_engine_error():
    engine = OpenAICompatEngine("http://127.0.0.1:9/v1", timeout_s=2)
    with pytest.raises(EngineError, match="cannot reach"):
        await engine.start()
    await engine.close()
