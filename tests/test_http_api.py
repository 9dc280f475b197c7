"""The OpenAI-compatible HTTP API of a node, with a SIMULATED engine (fast).

A real in-process :class:`~dellm_p2p.node.Node` (server, membership,
fitness, HTTP API on 127.0.0.1, mDNS off) whose engine is the simulated
one, so the engine records every prompt and abort. The real ``openai``
client talks to it; error cases use raw ``httpx``.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import openai
import pytest

from dellm_p2p import node as node_module
from dellm_p2p.config import ConfigError, load_config
from dellm_p2p.http.app import ApiSettings, create_app
from dellm_p2p.http.gateway import Gateway
from dellm_p2p.http.server import HttpServer, load_api_key
from dellm_p2p.node import Node
from dellm_p2p.security import SecurityConfigError

from .simulated_engine import SimulatedEngine

REPLIES = {
    "Question:": "Ten percent of 1000 is 100, and high-yield savings accounts pay that much.",
    "Calculate": "10% of 1000 is 100. Answer: 100",
    "savings": "Accounts paying 100 a year exist at many banks. Answer: high-yield savings accounts",
    "capital": "The capital of France is Paris.",
    "river": "The Seine flows through Paris.",
}


async def start_node(tmp_path, monkeypatch, engine: SimulatedEngine | None, **config) -> Node:
    """An in-process node on 127.0.0.1 with the HTTP API on a free port; ``engine=None`` serves no model."""
    if monkeypatch is not None:  # this node's engine (None: no model), whatever an earlier start patched in
        monkeypatch.setattr(node_module, "build_engine", lambda config, progress: engine)
    settings = dict(name="sim-http", host="127.0.0.1", port=0, mdns=False, state_dir=tmp_path, http_port=0)
    settings |= config
    if engine is None:
        settings["engine"] = "none"
    node = Node(load_config(**settings))
    await node.start()
    return node


@pytest.fixture
async def sim(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.002, max_model_len=4096)
    engine.replies = dict(REPLIES)
    node = await start_node(tmp_path, monkeypatch, engine)
    yield node, engine
    await node.close(0)


@contextlib.asynccontextmanager
async def serve(node: Node, **settings):
    """A second API app over the same node with other settings (key, limits)."""
    server = HttpServer(create_app(Gateway.for_node(node), ApiSettings(**settings)), "127.0.0.1", 0)
    url = await server.start()
    try:
        yield url
    finally:
        await server.close(1.0)


_clients: list[openai.AsyncOpenAI] = []


def client(node: Node, key: str = "unused") -> openai.AsyncOpenAI:
    """An async openai client for the node's API, closed after the test (in its loop)."""
    api = openai.AsyncOpenAI(base_url=node.http_url + "/v1", api_key=key, max_retries=0, timeout=30)
    _clients.append(api)
    return api


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while _clients:
        await _clients.pop().close()


async def test_models_list_the_pipeline_and_the_network_models(sim):
    node, _ = sim
    models = await client(node).models.list()
    assert [m.id for m in models.data] == ["dellm", "simulated"]
    assert node.http_url.startswith("http://127.0.0.1:")


async def test_chat_through_the_pipeline_with_usage_and_trace(sim):
    node, _ = sim
    reply = await client(node).chat.completions.create(
        model="dellm", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert reply.choices[0].message.content == "The capital of France is Paris."
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    # Every sample from the only peer counts (n = 3, plus any the pipeline adds).
    trace = reply.model_extra["dellm"]
    samples = len(trace["chunks"][0]["candidates"])
    assert samples >= 3 and reply.usage.completion_tokens == samples * len(REPLIES["capital"].split())
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert trace["chunks"][0]["vote"]["agreement"] == 1.0
    assert trace["chunks"][0]["candidates"][0]["peer_id"] == node.node_id  # the node answered itself
    assert "rewards" in trace and trace["usage"]["completion_tokens"] == reply.usage.completion_tokens


async def test_streaming_chat_through_the_pipeline_synthesizes_and_ends_with_usage(sim):
    node, _ = sim
    stream = await client(node).chat.completions.create(
        model="dellm",
        messages=[{"role": "user", "content": "Calculate 10% of 1000, then find savings accounts paying that much"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLIES["Question:"]
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finals) == 1 and len(finals[0].model_extra["dellm"]["chunks"]) == 2
    assert finals[0].model_extra["dellm"]["synthesizer"] == node.node_id
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


async def test_peer_model_goes_straight_to_one_peer(sim):
    node, engine = sim
    before = len(engine.prompts)
    reply = await client(node).chat.completions.create(
        model="simulated", messages=[{"role": "user", "content": "Which river?"}], n=2, max_tokens=3
    )
    assert [c.message.content for c in reply.choices] == ["The Seine flows"] * 2
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6 and "dellm" not in (reply.model_extra or {})
    assert len(engine.prompts) == before + 1  # one request, no decomposition, no vote
    stream = await client(node).chat.completions.create(
        model="simulated", messages=[{"role": "user", "content": "Which river?"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLIES["river"]


async def test_completions_endpoint_both_ways(sim):
    node, _ = sim
    api = client(node)
    reply = await api.completions.create(model="dellm", prompt="What is the capital of France?")
    assert reply.choices[0].text == "The capital of France is Paris." and reply.usage.total_tokens > 0
    stream = await api.completions.create(model="simulated", prompt="Which river?", stream=True, max_tokens=2)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "The Seine"


async def test_sync_client_works_too(sim):
    node, _ = sim

    def ask() -> str:  # the sync client blocks its thread: run it off the node's loop
        with openai.OpenAI(base_url=node.http_url + "/v1", api_key="x", max_retries=0, timeout=30) as api:
            stream = api.chat.completions.create(
                model="dellm", messages=[{"role": "user", "content": "What is the capital of France?"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert await asyncio.to_thread(ask) == "The capital of France is Paris."


async def test_two_turn_conversation_reaches_the_peers(sim):
    node, engine = sim
    api = client(node)
    first = [{"role": "user", "content": "What is the capital of France?"}]
    reply = await api.chat.completions.create(model="dellm", messages=first)
    answer = reply.choices[0].message.content
    engine.prompts.clear()
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Which river runs there?"}]
    await api.chat.completions.create(model="dellm", messages=second)
    # Node side: every prompt of the second question carried the first turn, question and answer.
    assert engine.prompts
    for prompt in engine.prompts:
        assert "What is the capital of France?" in prompt and answer in prompt and "Which river" in prompt


async def test_client_disconnect_mid_stream_aborts_the_generations(tmp_path, monkeypatch):
    engine = SimulatedEngine(" ".join(f"word{i}" for i in range(400)), token_interval_s=0.02, max_model_len=4096)
    node = await start_node(tmp_path, monkeypatch, engine)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"model": "dellm", "stream": True, "messages": [{"role": "user", "content": "Tell a story"}]}
            async with http.stream("POST", node.http_url + "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                async with asyncio.timeout(5):
                    while not engine.running:
                        await asyncio.sleep(0.02)
        # Disconnected: the question is cancelled and the peer aborts (stats show nothing running).
        async with asyncio.timeout(5):
            while engine.running or node.server.in_flight:
                await asyncio.sleep(0.02)
        assert engine.aborted
        stats = await (await node.gateway.pool.get(node.url)).stats()
        assert stats.in_flight == 0 and stats.engine_running == 0 and stats.requests_cancelled >= 1
        async with httpx.AsyncClient(timeout=10) as http:  # and the API's slot was given back
            assert (await http.get(node.http_url + "/health")).json()["in_flight"] == {"node": 0, "api": 0}
        # Not streaming: a client that gives up waiting cancels the question too.
        aborted = len(engine.aborted)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=1.0)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(node.http_url + "/v1/chat/completions", json=body | {"stream": False})
        async with asyncio.timeout(5):
            while engine.running or node.server.in_flight:
                await asyncio.sleep(0.02)
        assert len(engine.aborted) > aborted
    finally:
        await node.close(0)


# Errors, in OpenAI's shape.


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code, error
    return error


async def test_bad_requests_get_400_404_413(sim):
    node, _ = sim
    url = node.http_url + "/v1/chat/completions"
    ok = {"model": "dellm", "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(timeout=10) as http:
        assert_error(await http.post(url, content=b"{not json"), 400, "invalid_json")
        assert_error(await http.post(url, content=b"[1, 2]"), 400, "invalid_json")
        # Nested 100,000 deep: the JSON decoder's recursion limit is bad input, not a 500 (issue 24).
        assert_error(await http.post(url, content=b"[" * 100_000 + b"]" * 100_000), 400, "invalid_json")
        deep = b'{"model": "dellm", "messages": [{"role": "user", "content": "Hi"}], "x": ' + b"[" * 100_000
        assert_error(await http.post(url, content=deep + b"]" * 100_000 + b"}"), 400, "invalid_json")
        error = assert_error(await http.post(url, json=ok | {"temperature": 5}), 400, "invalid_parameter")
        assert error["param"] == "temperature"
        assert_error(await http.post(url, json={"model": "dellm"}), 400)  # no messages
        assert_error(await http.post(url, json=ok | {"messages": [{"role": "user", "content": " "}]}), 400)
        assert_error(await http.post(url, json=ok | {"messages": [{"role": "assistant", "content": "x"}]}), 400)
        assert_error(await http.post(url, json=ok | {"dellm": {"strategy": "coin-flip"}}), 400)
        assert_error(await http.post(url, json=ok | {"n": 2}), 400)
        parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        assert_error(await http.post(url, json=ok | {"messages": parts}), 400)
        # Unknown fields are ignored, as OpenAI does.
        assert (await http.post(url, json=ok | {"frequency_penalty": 0.5, "seed": 3})).status_code == 200
        assert_error(await http.post(url, json=ok | {"model": "gpt-7"}), 404, "model_not_found")
        assert_error(await http.get(node.http_url + "/v1/nothing"), 404)
        big = ok | {"messages": [{"role": "user", "content": "x" * (2 << 20)}]}
        assert_error(await http.post(url, json=big), 413, "request_too_large")
        # The node keeps serving.
        assert (await http.post(url, json=ok)).status_code == 200


async def test_api_key_is_required_and_checked(sim):
    node, _ = sim
    async with serve(node, api_key="s3cret-key") as url, httpx.AsyncClient(timeout=10) as http:
        assert_error(await http.get(url + "/v1/models"), 401, "missing_api_key")
        bad = {"Authorization": "Bearer wrong"}
        assert_error(await http.get(url + "/v1/models", headers=bad), 401, "invalid_api_key")
        assert_error(await http.get(url + "/metrics", headers=bad), 401)
        good = {"Authorization": "Bearer s3cret-key"}
        assert (await http.get(url + "/v1/models", headers=good)).status_code == 200
        assert (await http.get(url + "/health")).status_code == 200  # open for load balancers
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) as api:
            with pytest.raises(openai.AuthenticationError):
                await api.models.list()
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0) as api:
            models = await api.models.list()
        assert models.data[0].id == "dellm"


async def test_too_many_requests_get_429_with_retry_after(tmp_path, monkeypatch):
    engine = SimulatedEngine(" ".join(["word"] * 200), token_interval_s=0.02, max_model_len=4096)
    node = await start_node(tmp_path, monkeypatch, engine)
    try:
        async with serve(node, max_concurrent=1) as url, httpx.AsyncClient(timeout=10) as http:
            body = {"model": "simulated", "stream": True, "messages": [{"role": "user", "content": "Go"}]}
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as first:
                assert first.status_code == 200
                second = await http.post(url + "/v1/chat/completions", json=body)
                assert_error(second, 429, "rate_limit_exceeded")
                assert second.headers["retry-after"] == "1"
            async with asyncio.timeout(5):  # the closed stream gave its slot back
                while (await http.get(url + "/health")).json()["in_flight"]["api"]:
                    await asyncio.sleep(0.05)
            body["stream"], body["max_tokens"] = False, 2
            assert (await http.post(url + "/v1/chat/completions", json=body)).status_code == 200
    finally:
        await node.close(0)


async def test_deadline_gets_504(tmp_path, monkeypatch):
    engine = SimulatedEngine(" ".join(["word"] * 200), token_interval_s=0.02, max_model_len=4096)
    node = await start_node(tmp_path, monkeypatch, engine)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            body = {"model": "dellm", "messages": [{"role": "user", "content": "Go"}], "dellm": {"timeout_s": 0.3}}
            assert_error(await http.post(node.http_url + "/v1/chat/completions", json=body), 504, "timeout")
            async with asyncio.timeout(5):  # and the peers stopped
                while engine.running:
                    await asyncio.sleep(0.02)
    finally:
        await node.close(0)


async def test_no_peer_gets_503_and_health_says_so(tmp_path):
    node = await start_node(tmp_path, None, None)  # a coordinator-only node alone: nobody serves a model
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            health = await http.get(node.http_url + "/health")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            body = {"model": "dellm", "messages": [{"role": "user", "content": "Hi"}]}
            assert_error(await http.post(node.http_url + "/v1/chat/completions", json=body), 503, "no_peers")
            models = (await http.get(node.http_url + "/v1/models")).json()
            assert [m["id"] for m in models["data"]] == ["dellm"]
    finally:
        await node.close(0)


async def test_health_and_metrics(sim):
    node, _ = sim
    reply = await client(node).chat.completions.create(
        model="dellm", messages=[{"role": "user", "content": "capital?"}]
    )
    samples = len(reply.model_extra["dellm"]["chunks"][0]["candidates"])
    strategy = reply.model_extra["dellm"]["chunks"][0]["vote"]["strategy"]
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(node.http_url + "/health")).json()
        assert health["status"] == "ok" and health["models"] == {"simulated": 1}
        assert health["peers"][0]["node_id"] == node.node_id and health["in_flight"] == {"node": 0, "api": 0}
        await http.post(node.http_url + "/v1/chat/completions", content=b"{")
        text = (await http.get(node.http_url + "/metrics")).text
    for line in (
        'dellm_questions_total{kind="dellm",outcome="answered"} 1.0',
        "dellm_chunks_total 1.0",
        f"dellm_candidates_total {samples:.1f}",
        f'dellm_votes_total{{strategy="{strategy}"}} 1.0',
        "dellm_agreement_count 1.0",
        'dellm_api_errors_total{status="400"} 1.0',
        'dellm_peers{state="alive"} 1.0',
        "dellm_api_in_flight_requests 0.0",
        "dellm_node_in_flight_requests 0.0",
        'dellm_request_latency_seconds_count{kind="dellm"} 1.0',
        'dellm_time_to_first_token_seconds_count{kind="dellm"} 1.0',
    ):
        assert line in text, line
    assert "dellm_rewards_applied_total" in text and 'dellm_rewards_rejected_total{reason="signature"}' in text


def test_an_open_api_beyond_loopback_needs_a_key_or_insecure(tmp_path):
    with pytest.raises(ConfigError, match="api_key_file"):
        load_config(http_port=0, http_host="0.0.0.0")
    load_config(http_port=0, http_host="0.0.0.0", http_insecure=True)
    load_config(http_port=0, http_host="0.0.0.0", api_key_file=tmp_path / "key")
    load_config(http_port=0, http_host="::1")
    key = tmp_path / "key"
    key.write_text("abc123\n")
    assert load_api_key(key) == "abc123"
    key.write_text("\n")
    with pytest.raises(SecurityConfigError):
        load_api_key(key)


async def test_peer_model_fails_over_to_the_next_peer(tmp_path, monkeypatch):
    # The gateway node ranks itself first (no network hop); its engine refuses every prompt (context of 2 words).
    small = SimulatedEngine(token_interval_s=0.001, max_model_len=2)
    gateway = await start_node(tmp_path / "a", monkeypatch, small, name="sim-a")
    other = SimulatedEngine(token_interval_s=0.001)
    other.replies = dict(REPLIES)
    helper = await start_node(tmp_path / "b", monkeypatch, other, name="sim-b", http_port=None, peers=[gateway.url])
    try:
        async with asyncio.timeout(10):
            while len(gateway.gateway.serving()) < 2:
                await asyncio.sleep(0.05)
        reply = await client(gateway).chat.completions.create(
            model="simulated", messages=[{"role": "user", "content": "Which river flows there?"}], max_tokens=1
        )
        assert reply.choices[0].message.content == "The" and other.prompts == ["Which river flows there?"]
        assert gateway.server.counters.requests_failed == 1  # it was tried first and refused the prompt
    finally:
        await helper.close(0)
        await gateway.close(0)


async def test_an_app_around_a_swarm(sim):
    from dellm_p2p.swarm import Swarm

    node, _ = sim
    async with Swarm(peers=[node.url], mdns=False) as swarm:
        server = HttpServer(create_app(Gateway.for_swarm(swarm)), "127.0.0.1", 0)
        url = await server.start()
        try:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as api:
                reply = await api.chat.completions.create(
                    model="dellm", messages=[{"role": "user", "content": "What is the capital of France?"}]
                )
            assert reply.choices[0].message.content == REPLIES["capital"]
        finally:
            await server.close()


def test_dellm_node_prints_where_the_api_listens(tmp_path):
    from dellm_p2p.local import NodeProcess

    node = NodeProcess(["--no-model", "--no-mdns", "--state-dir", str(tmp_path), "--http-port", "0"])
    try:
        node.wait_ready(timeout_s=60)
        assert node.http_url.startswith("http://127.0.0.1:")
        health = httpx.get(node.http_url + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["models"] == {}
    finally:
        assert node.stop(timeout_s=30) == 0, node.stderr_tail()
    refused = NodeProcess(["--no-model", "--no-mdns", "--http-port", "0", "--http-host", "0.0.0.0"])
    assert refused.proc.wait(30) == 2 and "api_key_file" in refused.stderr_tail()


async def test_a_no_model_node_is_a_gateway_to_its_peers(tmp_path, monkeypatch):
    engine = SimulatedEngine(token_interval_s=0.001)
    engine.replies = dict(REPLIES)
    worker = await start_node(tmp_path / "worker", monkeypatch, engine, name="sim-worker", http_port=None)
    gateway = await start_node(tmp_path / "gateway", monkeypatch, None, name="gateway", peers=[worker.url])
    try:
        async with asyncio.timeout(10):
            while not gateway.gateway.serving():
                await asyncio.sleep(0.05)
        api = client(gateway)
        assert [m.id for m in (await api.models.list()).data] == ["dellm", "simulated"]
        reply = await api.chat.completions.create(
            model="dellm", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert reply.choices[0].message.content == REPLIES["capital"]
        assert {c["peer_id"] for c in reply.model_extra["dellm"]["chunks"][0]["candidates"]} == {worker.node_id}
    finally:
        await gateway.close(0)
        await worker.close(0)


def test_http_settings_come_from_toml_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "node.toml"
    path.write_text('[node]\nname = "n"\nhttp_port = 8080\nhttp_host = "0.0.0.0"\nhttp_insecure = true\n')
    config = load_config(path)
    assert (config.http_port, config.http_host, config.http_insecure) == (8080, "0.0.0.0", True)
    monkeypatch.setenv("DELLM_API_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("DELLM_HTTP_PORT", "0")
    config = load_config(path)
    assert config.api_key_file == tmp_path / "key" and config.http_port == 0


async def test_peer_model_caps_max_tokens_and_a_prompt_too_long_is_400(sim):
    node, _ = sim
    url = node.http_url + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=10) as http:
        body = {"model": "simulated", "max_tokens": 100_000, "messages": [{"role": "user", "content": "river?"}]}
        reply = await http.post(url, json=body)  # more than the 4,096-token window: capped, not refused
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == REPLIES["river"]
        body["messages"][0]["content"] = "word " * 5000
        error = assert_error(await http.post(url, json=body), 400)
        assert "prompt_too_long" in error["message"]
