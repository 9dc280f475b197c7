"""The HTTP API of a real node with the default model, through the real ``openai`` client (slow).

All tests share the session's ``vllm_node`` (it runs with ``--http-port 0``).
Answers are kept short (few tokens, one or two samples): the point is the
API, not the model's words.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from dellm_p2p.client import PeerClient

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
QUICK = {"dellm": {"redundancy": 2, "decompose": "none"}}  # extra_body: two samples, one chunk


_clients: list = []


def sync_client(node) -> openai.OpenAI:
    api = openai.OpenAI(base_url=node.http_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    _clients.append(api)
    return api


def async_client(node) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=node.http_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    _clients.append(api)
    return api


@pytest.fixture(autouse=True)
async def _close_clients():
    """Close the test's clients in its own loop (an async client collected later fails on a closed loop)."""
    yield
    while _clients:
        api = _clients.pop()
        result = api.close()
        if asyncio.iscoroutine(result):
            await result


async def node_stats(node):
    async with await PeerClient.connect(node.url) as client:
        return await client.stats()


def test_sync_client_models_and_chat_through_the_pipeline(vllm_node):
    api = sync_client(vllm_node)
    assert [m.id for m in api.models.list().data] == ["dellm", MODEL]
    reply = api.chat.completions.create(
        model="dellm",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        extra_body=QUICK,
    )
    assert reply.choices[0].message.content.strip()
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    trace = reply.model_extra["dellm"]
    assert len(trace["chunks"][0]["candidates"]) == 2 and trace["chunks"][0]["vote"] is not None


def test_sync_client_streams_from_the_peer_model(vllm_node):
    stream = sync_client(vllm_node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage.completion_tokens <= 12 and chunks[-1].usage.prompt_tokens > 0


async def test_async_client_streams_through_the_pipeline_and_completes_from_the_peer_model(vllm_node):
    api = async_client(vllm_node)
    stream = await api.chat.completions.create(
        model="dellm",
        messages=[{"role": "user", "content": "What is the capital of Italy?"}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=QUICK,
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert any(c.choices and c.model_extra.get("dellm") for c in chunks)
    assert chunks[-1].usage.total_tokens > 0
    reply = await api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
    text = await api.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens <= 4


async def test_disconnect_mid_stream_cancels_on_the_peers(vllm_node):
    before = await node_stats(vllm_node)
    body = {
        "model": "dellm",
        "stream": True,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "dellm": {"redundancy": 2, "decompose": "none"},
    }
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", vllm_node.http_url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            deadline = time.monotonic() + 60
            while (await node_stats(vllm_node)).engine_running == 0:  # generating now
                assert time.monotonic() < deadline, "the node never started generating"
                await asyncio.sleep(0.1)
    # The client is gone: the question is cancelled and the node aborts both samples' request.
    async with asyncio.timeout(20):
        while (now := await node_stats(vllm_node)).in_flight or now.engine_running:
            await asyncio.sleep(0.1)
    assert now.requests_cancelled >= before.requests_cancelled + 1


async def test_second_turn_prompt_carries_the_first_turn(vllm_node):
    """Node side: the engine's own prompt-token count grows by the first turn (not read from the model's words)."""
    api = async_client(vllm_node)
    first = "Remember the secret word pomegranate and the number 4729. What is the capital of Spain?"
    reply = await api.chat.completions.create(
        model="dellm", messages=[{"role": "user", "content": first}], max_tokens=16, extra_body=QUICK
    )
    answer = reply.choices[0].message.content
    second = "What was the secret word?"
    one_sample = {"dellm": {"redundancy": 1, "decompose": "none", "synthesize": False}}
    alone = await api.chat.completions.create(
        model="dellm",
        messages=[{"role": "user", "content": second}],
        max_tokens=4,
        temperature=0,
        extra_body=one_sample,
    )
    in_context = await api.chat.completions.create(
        model="dellm",
        messages=[
            {"role": "user", "content": first},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": second},
        ],
        max_tokens=4,
        temperature=0,
        extra_body=one_sample,
    )
    # The first turn is ~25 tokens of question plus the answer; the node counted them in the second prompt.
    assert in_context.usage.prompt_tokens >= alone.usage.prompt_tokens + 20
    assert in_context.model_extra["dellm"]["chunks"][0]["chunk"]["text"] == second  # only the last turn decomposed
