"""A real dellm-node with the default model (vLLM, float32) on 127.0.0.1, through the wire."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import msgpack
import pytest
import websockets

from dellm_p2p.client import PeerClient
from dellm_p2p.protocol import PROTOCOL_VERSION, Done, Error, ErrorCode, Hello, SamplingParams, Token, decode, encode

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to count to one thousand."}]
LONG = SamplingParams(max_tokens=1500, temperature=0.8)


async def wait_until_idle(url: str, timeout_s: float = 10.0):
    """Poll the node's stats until nothing is in flight nor running in the engine."""
    async with await PeerClient.connect(url) as client:
        async with asyncio.timeout(timeout_s):
            while True:
                stats = await client.stats()
                if stats.in_flight == 0 and stats.engine_running == 0:
                    return stats
                await asyncio.sleep(0.05)


async def test_greedy_answer_streams_through_the_wire(vllm_node):
    async with await PeerClient.connect(vllm_node.url) as client:
        assert client.remote.model == "SmolLM2-135M-Instruct"
        assert client.remote.max_model_len == 2048
        items = [item async for item in client.generate(messages=FRANCE, params=SamplingParams(max_tokens=32))]
    tokens, done = items[:-1], items[-1]
    text = "".join(t.text for t in tokens)
    assert "Paris" in text
    assert len(tokens) >= 3, "the answer should arrive as a stream of deltas"
    assert isinstance(done, Done) and done.finish_reasons == ["stop"]
    assert done.usage.prompt_tokens > 10
    assert done.usage.completion_tokens == sum(t.tokens for t in tokens)
    assert 0 < done.timings.first_token_ms <= done.timings.total_ms
    assert done.timings.queued_ms is not None and done.timings.queued_ms >= 0


async def test_samples_carry_logprobs(vllm_node):
    params = SamplingParams(n=3, temperature=0.8, max_tokens=12, logprobs=True)
    async with await PeerClient.connect(vllm_node.url) as client:
        items = [item async for item in client.generate(messages=FRANCE, params=params)]
    tokens, done = [i for i in items if isinstance(i, Token)], items[-1]
    assert sorted({t.index for t in tokens}) == [0, 1, 2]
    assert len(done.finish_reasons) == 3
    for token in tokens:
        assert token.logprobs is not None and len(token.logprobs) == token.tokens
        assert all(lp <= 0 for lp in token.logprobs)


async def test_raw_prompt_completion(vllm_node):
    async with await PeerClient.connect(vllm_node.url) as client:
        result = await client.complete(prompt="The capital of France is", params=SamplingParams(max_tokens=5))
    assert "Paris" in result.text


async def test_cancel_stops_generation_in_the_engine(vllm_node):
    async with await PeerClient.connect(vllm_node.url) as client:
        seen = 0
        async for item in client.generate(messages=STORY, params=LONG, request_id="story"):
            if isinstance(item, Token):
                seen += item.tokens
                if seen >= 5 and seen - item.tokens < 5:
                    await client.cancel("story")
            else:
                done = item
    assert done.finish_reasons == ["cancelled"]
    assert done.usage.completion_tokens < 300, "cancel should stop the request long before max_tokens"
    before = await wait_until_idle(vllm_node.url)
    await asyncio.sleep(1.0)
    after = await wait_until_idle(vllm_node.url)
    assert after.tokens_generated == before.tokens_generated, "the engine kept generating after cancel"
    assert after.requests_cancelled >= 1


async def test_dropped_connection_aborts_generation(vllm_node):
    ws = await websockets.connect(vllm_node.url)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="dropper")))
    assert isinstance(decode(await ws.recv()), Hello)
    await ws.send(msgpack.packb({"type": "generate", "id": "drop", "messages": STORY, "params": LONG.model_dump()}))
    async with asyncio.timeout(60):
        assert isinstance(decode(await ws.recv()), Token)
    await ws.close()
    before = await wait_until_idle(vllm_node.url)
    await asyncio.sleep(1.0)
    assert (await wait_until_idle(vllm_node.url)).tokens_generated == before.tokens_generated


async def test_concurrent_requests_are_served_together(vllm_node):
    questions = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Peru"]
    async with await PeerClient.connect(vllm_node.url) as client:
        results = await asyncio.gather(
            *(
                client.complete(
                    messages=[{"role": "user", "content": f"What is the capital of {q}?"}],
                    params=SamplingParams(max_tokens=24),
                )
                for q in questions
            )
        )
    assert all(r.done.finish_reasons[0] in ("stop", "length") and r.text for r in results)
    assert "Paris" in results[0].text


GEN = {"type": "generate", "id": "bad", "messages": FRANCE}
BAD_INPUT = {
    "malformed msgpack": (b"\x92\xc1\xff\x00", ErrorCode.BAD_FRAME),
    "unknown type": (msgpack.packb({"type": "explode", "id": "bad"}), ErrorCode.UNKNOWN_TYPE),
    "missing field": (msgpack.packb({"type": "generate", "id": "bad"}), ErrorCode.INVALID_MESSAGE),
    "wrong type": (msgpack.packb({**GEN, "messages": [{"role": "user", "content": 42}]}), ErrorCode.INVALID_MESSAGE),
    "max_tokens 0": (msgpack.packb({**GEN, "params": {"max_tokens": 0}}), ErrorCode.INVALID_PARAMS),
    "max_tokens beyond context": (msgpack.packb({**GEN, "params": {"max_tokens": 4096}}), ErrorCode.INVALID_PARAMS),
    "temperature < 0": (msgpack.packb({**GEN, "params": {"temperature": -0.5}}), ErrorCode.INVALID_PARAMS),
    "n < 1": (msgpack.packb({**GEN, "params": {"n": 0}}), ErrorCode.INVALID_PARAMS),
    "n > 16": (msgpack.packb({**GEN, "params": {"n": 17}}), ErrorCode.INVALID_PARAMS),
    "prompt beyond context": (
        msgpack.packb({**GEN, "messages": [{"role": "user", "content": "lighthouse " * 3000}]}),
        ErrorCode.PROMPT_TOO_LONG,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_gets_error_frame_and_node_keeps_serving(vllm_node, case):
    frame, code = BAD_INPUT[case]
    async with await PeerClient.connect(vllm_node.url) as bystander:
        ws = await websockets.connect(vllm_node.url)
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="fuzzer")))
        assert isinstance(decode(await ws.recv()), Hello)
        await ws.send(frame)
        async with asyncio.timeout(30):
            reply = decode(await ws.recv())
        assert isinstance(reply, Error) and reply.code == code, reply
        # The same connection still serves a valid request ...
        await ws.send(msgpack.packb({"type": "generate", "id": "ok", "messages": FRANCE, "params": {"max_tokens": 4}}))
        async with asyncio.timeout(30):
            while not isinstance(reply := decode(await ws.recv()), Done):
                assert isinstance(reply, Token)
        await ws.close()
        # ... and so does every other connection.
        assert (await bystander.complete(messages=FRANCE, params=SamplingParams(max_tokens=4))).text


async def test_frame_over_size_limit_closes_with_1009(vllm_node):
    ws = await websockets.connect(vllm_node.url, max_size=None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="big")))
    assert isinstance(decode(await ws.recv()), Hello)
    await ws.send(msgpack.packb({**GEN, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}))
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        async with asyncio.timeout(30):
            await ws.recv()
    assert info.value.rcvd.code == 1009
    async with await PeerClient.connect(vllm_node.url) as client:
        assert "Paris" in (await client.complete(messages=FRANCE, params=SamplingParams(max_tokens=16))).text


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dellm_p2p.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_generate_streams_answer(vllm_node):
    done = run_cli("generate", "--peer", vllm_node.url, "What is the capital of France?")
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "first token" in done.stderr


def test_cli_stats_json(vllm_node):
    done = run_cli("stats", "--peer", vllm_node.url, "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["model"] == "SmolLM2-135M-Instruct" and stats["rtt_ms"] > 0
