"""Server and client behaviour over real websockets on 127.0.0.1, with a simulated engine."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import websockets

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.protocol import (
    PROTOCOL_VERSION,
    Done,
    Error,
    ErrorCode,
    Hello,
    SamplingParams,
    Token,
    decode,
    encode,
)
from dellm_p2p.server import NodeServer

from .simulated_engine import SimulatedEngine

REPLY = "The capital of France is Paris."
HELLO = Hello(protocol=PROTOCOL_VERSION, node_id="tester", name="tester")
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def served():
    """A NodeServer with a simulated engine; yields (server, url, engine)."""
    engine = SimulatedEngine(REPLY)
    server = NodeServer(engine, node_id="node-a", name="a", max_concurrency=8, max_frame_bytes=64 * 1024)
    url = await server.start("127.0.0.1", 0)
    yield server, url, engine
    await server.shutdown(0)


async def raw_connect(url: str, hello: bool = True):
    ws = await websockets.connect(url, max_size=None)
    if hello:
        await ws.send(encode(HELLO))
        assert isinstance(decode(await ws.recv()), Hello)
    return ws


async def recv(ws, timeout_s: float = 5.0):
    async with asyncio.timeout(timeout_s):
        return decode(await ws.recv())


async def assert_still_serves(url: str) -> None:
    async with await PeerClient.connect(url) as client:
        result = await client.complete(messages=ASK, timeout_s=5)
        assert result.text == REPLY


async def test_handshake_reports_node(served):
    _, url, _ = served
    async with await PeerClient.connect(url) as client:
        assert client.remote.node_id == "node-a"
        assert client.remote.model == "simulated"
        assert client.remote.capacity == 8
        assert client.remote.max_model_len == 512
        assert await client.ping() > 0


async def test_message_before_hello_is_refused_but_connection_survives(served):
    _, url, _ = served
    ws = await raw_connect(url, hello=False)
    await ws.send(msgpack.packb({"type": "ping", "nonce": 1}))
    reply = await recv(ws)
    assert isinstance(reply, Error) and reply.code == ErrorCode.HANDSHAKE_REQUIRED
    await ws.send(encode(HELLO))
    assert isinstance(await recv(ws), Hello)
    await ws.close()


async def test_unsupported_version_closes_with_4001(served):
    _, url, _ = served
    ws = await raw_connect(url, hello=False)
    await ws.send(msgpack.packb({"type": "hello", "protocol": 99, "node_id": "x"}))
    reply = await recv(ws)
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd.code == 4001


async def test_generate_streams_tokens_then_done(served):
    _, url, _ = served
    async with await PeerClient.connect(url) as client:
        items = [item async for item in client.generate(messages=ASK, params=SamplingParams(logprobs=True))]
    tokens, done = items[:-1], items[-1]
    assert all(isinstance(t, Token) for t in tokens) and isinstance(done, Done)
    assert "".join(t.text for t in tokens) == REPLY
    assert all(t.logprobs == [-0.5] for t in tokens)
    assert done.finish_reasons == ["stop"]
    assert done.usage.completion_tokens == len(tokens) == len(REPLY.split())
    assert done.usage.prompt_tokens == len(ASK[0]["content"].split())
    assert done.timings.total_ms >= done.timings.first_token_ms > 0
    assert done.timings.queued_ms == pytest.approx(0.1)


async def test_several_choices_and_raw_prompt(served):
    _, url, _ = served
    async with await PeerClient.connect(url) as client:
        result = await client.complete(
            prompt="Capital of France:", params=SamplingParams(n=3, max_tokens=2, temperature=0.7)
        )
    assert result.texts == ["The capital"] * 3
    assert result.done.finish_reasons == ["length"] * 3


async def test_many_requests_multiplex_on_one_connection(served):
    server, url, _ = served
    async with await PeerClient.connect(url) as client:
        results = await asyncio.gather(*(client.complete(messages=ASK, request_id=f"r{i}") for i in range(8)))
    assert [r.text for r in results] == [REPLY] * 8
    assert server.counters.requests_total == 8
    assert server.in_flight == 0


async def test_cancel_aborts_inside_engine(served):
    _, url, engine = served
    engine.reply = ("word " * 500).split(" ")
    engine.token_interval_s = 0.02
    async with await PeerClient.connect(url) as client:
        seen = 0
        async for item in client.generate(messages=ASK, request_id="long", params=SamplingParams(max_tokens=500)):
            if isinstance(item, Token):
                seen += 1
                if seen == 3:
                    await client.cancel("long")
            else:
                done = item
        assert done.finish_reasons == ["cancelled"]
        assert 3 <= done.usage.completion_tokens < 50
        stats = await client.stats()
    assert stats.requests_cancelled == 1 and stats.in_flight == 0 and stats.engine_running == 0
    assert any(rid.endswith("-long") for rid in engine.aborted)


async def test_leaving_the_stream_early_cancels(served):
    _, url, engine = served
    engine.reply = ("word " * 500).split(" ")
    engine.token_interval_s = 0.02
    async with await PeerClient.connect(url) as client:
        async for _ in client.generate(messages=ASK, request_id="early", params=SamplingParams(max_tokens=500)):
            break
        await asyncio.sleep(0.2)
        assert (await client.stats()).in_flight == 0
    assert any(rid.endswith("-early") for rid in engine.aborted)


async def test_dropped_connection_aborts_its_requests(served):
    server, url, engine = served
    engine.reply = ("word " * 500).split(" ")
    engine.token_interval_s = 0.02
    ws = await raw_connect(url)
    await ws.send(msgpack.packb({"type": "generate", "id": "orphan", "prompt": "x", "params": {"max_tokens": 500}}))
    assert isinstance(await recv(ws), Token)
    await ws.close()
    async with asyncio.timeout(5):
        while server.in_flight or engine.running:
            await asyncio.sleep(0.01)
    assert any(rid.endswith("-orphan") for rid in engine.aborted)


async def test_over_capacity_is_refused_at_once(served):
    server, url, engine = served
    server.max_concurrency = 2
    engine.token_interval_s = 0.05
    async with await PeerClient.connect(url) as client:
        first = [asyncio.create_task(client.complete(messages=ASK)) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(PeerError) as info:
            await client.complete(messages=ASK)
        assert info.value.code == ErrorCode.OVERLOADED
        assert [r.text for r in await asyncio.gather(*first)] == [REPLY, REPLY]


async def test_duplicate_request_id_is_refused(served):
    _, url, engine = served
    engine.token_interval_s = 0.05
    ws = await raw_connect(url)
    frame = msgpack.packb({"type": "generate", "id": "same", "prompt": "x"})
    await ws.send(frame)
    await ws.send(frame)
    replies = [await recv(ws) for _ in range(len(REPLY.split()) + 2)]
    errors = [r for r in replies if isinstance(r, Error)]
    assert [e.code for e in errors] == [ErrorCode.DUPLICATE_ID] and errors[0].id == "same"
    assert isinstance(replies[-1], Done) and replies[-1].finish_reasons == ["stop"]
    await ws.close()


GENERATE = {"type": "generate", "id": "bad", "messages": ASK}
BAD_FRAMES = [
    (b"\xc1\x00garbage", ErrorCode.BAD_FRAME),
    (msgpack.packb([1, 2, 3]), ErrorCode.BAD_FRAME),
    ("a text frame", ErrorCode.BAD_FRAME),
    (msgpack.packb({"type": "launch_missiles", "id": "bad"}), ErrorCode.UNKNOWN_TYPE),
    (msgpack.packb({"id": "bad"}), ErrorCode.UNKNOWN_TYPE),
    (msgpack.packb({"type": "generate", "id": "bad"}), ErrorCode.INVALID_MESSAGE),
    (msgpack.packb({"type": "generate", "id": 7, "prompt": "x"}), ErrorCode.INVALID_MESSAGE),
    (msgpack.packb({**GENERATE, "messages": "hello"}), ErrorCode.INVALID_MESSAGE),
    (msgpack.packb({**GENERATE, "params": {"max_tokens": 0}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "params": {"max_tokens": "many"}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "params": {"max_tokens": 513}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "params": {"temperature": -1}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "params": {"n": 0}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "params": {"n": 17}}), ErrorCode.INVALID_PARAMS),
    # Several samples at temperature 0 are refused before the engine (vLLM raised: a traceback, issue 24).
    (msgpack.packb({**GENERATE, "params": {"n": 3, "temperature": 0}}), ErrorCode.INVALID_PARAMS),
    (msgpack.packb({**GENERATE, "messages": [{"role": "user", "content": "w " * 600}]}), ErrorCode.PROMPT_TOO_LONG),
    (msgpack.packb({"type": "token", "id": "bad", "text": "x"}), ErrorCode.INVALID_MESSAGE),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD_FRAMES)])
async def test_bad_frame_gets_error_and_connection_stays_usable(served, frame, code):
    server, url, _ = served
    ws = await raw_connect(url)
    await ws.send(frame)
    reply = await recv(ws)
    assert isinstance(reply, Error), reply
    assert reply.code == code, reply.message
    assert reply.message and "\n" not in reply.message
    if isinstance(frame, bytes) and b"bad" in frame and code != ErrorCode.INVALID_MESSAGE:
        assert reply.id == "bad"
    await ws.send(msgpack.packb({"type": "generate", "id": "good", "prompt": "x", "params": {"max_tokens": 2}}))
    replies = [await recv(ws) for _ in range(3)]
    assert isinstance(replies[-1], Done) and replies[-1].id == "good"
    await ws.close()
    assert server.in_flight == 0


async def test_oversized_frame_closes_with_1009_and_node_keeps_serving(served):
    _, url, _ = served
    ws = await raw_connect(url)
    await ws.send(msgpack.packb({**GENERATE, "messages": [{"role": "user", "content": "x" * 100_000}]}))
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd.code == 1009
    await assert_still_serves(url)


async def test_engine_failure_costs_one_request(served):
    server, url, _ = served
    async with await PeerClient.connect(url) as client:
        with pytest.raises(PeerError) as info:
            await client.complete(prompt="please FAIL now")
        assert info.value.code == ErrorCode.ENGINE_ERROR
        assert (await client.complete(messages=ASK)).text == REPLY
    assert server.counters.requests_failed == 1


async def test_node_without_model_refuses_generate():
    server = NodeServer(None, node_id="coordinator-only")
    url = await server.start("127.0.0.1", 0)
    try:
        async with await PeerClient.connect(url) as client:
            assert client.remote.model is None and client.remote.capacity == 0
            with pytest.raises(PeerError) as info:
                await client.complete(messages=ASK)
            assert info.value.code == ErrorCode.NO_MODEL
    finally:
        await server.shutdown(0)


async def test_client_deadline_cancels_on_the_node(served):
    server, url, engine = served
    engine.reply = ("word " * 500).split(" ")
    engine.token_interval_s = 0.02
    async with await PeerClient.connect(url) as client:
        with pytest.raises(PeerError) as info:
            await client.complete(messages=ASK, params=SamplingParams(max_tokens=500), timeout_s=0.2)
        assert info.value.code == ErrorCode.TIMEOUT
        async with asyncio.timeout(5):
            while server.in_flight:
                await asyncio.sleep(0.01)


async def test_node_deadline_ends_request_with_timeout(served):
    server, url, engine = served
    server.request_timeout_s = 0.1
    engine.reply = ("word " * 500).split(" ")
    engine.token_interval_s = 0.02
    async with await PeerClient.connect(url) as client:
        with pytest.raises(PeerError) as info:
            await client.complete(messages=ASK, params=SamplingParams(max_tokens=500))
    assert info.value.code == ErrorCode.TIMEOUT


async def test_graceful_shutdown_finishes_in_flight_work():
    engine = SimulatedEngine(REPLY, token_interval_s=0.05)
    server = NodeServer(engine, node_id="n")
    url = await server.start("127.0.0.1", 0)
    client = await PeerClient.connect(url)
    pending = asyncio.create_task(client.complete(messages=ASK))
    await asyncio.sleep(0.05)
    await server.shutdown(grace_s=5)
    assert (await pending).text == REPLY
    with pytest.raises(PeerError):
        await PeerClient.connect(url, timeout_s=1)
    await client.close()


async def test_shutdown_without_grace_cancels_and_client_learns_at_once():
    engine = SimulatedEngine(("word " * 500).strip(), token_interval_s=0.02)
    server = NodeServer(engine, node_id="n")
    url = await server.start("127.0.0.1", 0)
    client = await PeerClient.connect(url)
    pending = asyncio.create_task(client.complete(messages=ASK, params=SamplingParams(max_tokens=500)))
    await asyncio.sleep(0.1)
    await server.shutdown(grace_s=0)
    with pytest.raises(PeerError) as info:
        async with asyncio.timeout(5):
            await pending
    assert info.value.code == ErrorCode.CONNECTION_LOST
    assert engine.aborted and not engine.running
    await client.close()
