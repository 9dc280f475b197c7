"""The dashboard's data endpoints on a real node with SIMULATED engines (fast; the page itself: test_dashboard_browser).

Three in-process nodes on 127.0.0.1 (mDNS off): ``gw`` serves the HTTP API
and the dashboard, ``b`` and ``c`` join through it. The stream is read with
raw ``httpx``, as the page reads it with ``fetch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import httpx
import pytest

from dellm_p2p.http import dashboard as dashboard_module
from dellm_p2p.http.dashboard import Dashboard
from dellm_p2p.node import Node

from .simulated_engine import SimulatedEngine
from .test_http_api import REPLIES, serve, start_node

QUESTION = "Calculate 10% of 1000, then find savings accounts paying that much"


def sim_engine(sampled: dict[str, str] | None = None) -> SimulatedEngine:
    engine = SimulatedEngine(token_interval_s=0.002, max_model_len=4096)
    engine.replies = dict(REPLIES)
    engine.sampled_replies = dict(sampled or {})
    return engine


async def start_swarm(tmp_path, monkeypatch, names=("gw", "b", "c"), **config) -> list[Node]:
    """Three nodes; the first serves the HTTP API, the others join through it. Returns once all see each other."""
    first = await start_node(tmp_path / names[0], monkeypatch, sim_engine(), name=names[0], **config)
    nodes = [first]
    for name in names[1:]:
        engine = sim_engine()
        nodes.append(
            await start_node(tmp_path / name, monkeypatch, engine, name=name, http_port=None, peers=[first.url])
        )
    async with asyncio.timeout(10):
        while not all(len(n.table.alive()) == len(nodes) - 1 for n in nodes):
            await asyncio.sleep(0.05)
    return nodes


@pytest.fixture
async def swarm3(tmp_path, monkeypatch):
    nodes = await start_swarm(tmp_path, monkeypatch)
    yield nodes
    for node in reversed(nodes):
        await node.close(0)


def dashboard_of(node: Node) -> Dashboard:
    return node.http._app.state.api.dashboard


async def sse(response: httpx.Response):
    """(event, data) per server-sent event of a streaming response."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def test_state_lists_the_network_with_fitness_series(swarm3):
    gw = swarm3[0]
    async with httpx.AsyncClient(base_url=gw.http_url) as http:
        state = (await http.get("/dashboard/api/state")).json()
    assert state["node"]["node_id"] == gw.node_id and state["node"]["name"] == "gw"
    rows = {p["name"]: p for p in state["peers"]}
    assert set(rows) == {"gw", "b", "c"}
    assert rows["gw"]["role"] == "self" and rows["b"]["role"] == "peer"
    assert all(p["state"] == "alive" and p["model"] == "simulated" for p in rows.values())
    assert rows["b"]["capacity"] > 0 and rows["b"]["silent_s"] is None
    # Every peer has a series starting at its fitness now (no reward yet).
    assert {p["node_id"] for p in state["peers"]} <= set(state["fitness"])
    assert all(points[0][2] is None for points in state["fitness"].values())
    assert state["questions"] == []


async def test_a_question_is_recorded_with_its_trace_and_rewards_on_the_stream(swarm3):
    gw = swarm3[0]
    async with (
        httpx.AsyncClient(base_url=gw.http_url, timeout=30) as http,
        http.stream("GET", "/dashboard/api/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse(stream)
        kind, first = await anext(events)
        assert kind == "state" and len(first["peers"]) == 3
        reply = await http.post(
            "/v1/chat/completions", json={"model": "dellm", "messages": [{"role": "user", "content": QUESTION}]}
        )
        assert reply.status_code == 200
        rid = reply.json()["id"]
        seen: dict[str, list] = {}
        started = time.monotonic()
        async with asyncio.timeout(10):
            async for kind, data in events:
                seen.setdefault(kind, []).append((time.monotonic() - started, data))
                if kind == "question" and data["status"] == "answered" and "fitness" in seen:
                    break
    questions = [d for _, d in seen["question"]]
    assert all(q["id"] == rid for q in questions)
    final = questions[-1]
    assert final["question"] == QUESTION and final["answer"] == REPLIES["Question:"]
    assert [c["operation"] for c in final["chunks"]] == ["MATH", "LOOKUP"]
    math = final["chunks"][0]
    assert math["vote"]["answer"] == "100" and math["vote"]["agreement"] == 1.0
    assert {a["peer"] for a in math["asked"]} == {"gw", "b", "c"}
    assert sum(c["winner"] for c in math["candidates"]) == 1
    assert all(c["latency_ms"] > 0 and c["confidence"] is not None for c in math["candidates"])
    assert math["rewards"] and math["elapsed_ms"] > 0 and final["total_ms"] > 0
    if math["stragglers_cancelled"] == 0:  # else some requests were cut once the vote was decided
        assert len(math["candidates"]) == sum(a["samples"] for a in math["asked"])
    assert final["synthesizer_name"] in {"gw", "b", "c"}
    # Reward points arrive in batches, one per tick at most.
    points = [p for _, d in seen["fitness"] for p in d["points"]]
    assert points and all(p[3] is not None for p in points)
    # Batched, not one event per point or per pipeline event (how many ticks passed depends on the machine's load).
    assert len(seen["fitness"]) <= len(points)
    assert seen["question"]
    # The snapshot has it too, with the reward markers in the series.
    async with httpx.AsyncClient(base_url=gw.http_url) as http:
        state = (await http.get("/dashboard/api/state")).json()
    assert state["questions"][0]["id"] == rid and state["questions"][0]["status"] == "answered"
    assert any(point[2] is not None for points in state["fitness"].values() for point in points)
    # The stream closed with the client: nothing is left running for it.
    async with asyncio.timeout(3):
        while dashboard_of(gw).streams:
            await asyncio.sleep(0.05)


async def test_streamed_question_and_failures_are_recorded(tmp_path, monkeypatch):
    node = await start_node(tmp_path / "alone", None, None, name="alone")  # serves no model: 503
    try:
        async with httpx.AsyncClient(base_url=node.http_url, timeout=30) as http:
            reply = await http.post(
                "/v1/chat/completions",
                json={"model": "dellm", "stream": True, "messages": [{"role": "user", "content": "Hi?"}]},
            )
            assert reply.status_code == 503
            state = (await http.get("/dashboard/api/state")).json()
        assert state["peers"] == []
        (question,) = state["questions"]
        assert question["status"] == "failed" and "no alive peer" in question["error"]
    finally:
        await node.close(0)


async def test_data_endpoints_need_the_key_and_the_page_is_open(swarm3):
    gw = swarm3[0]
    async with serve(gw, api_key="s3cret") as url, httpx.AsyncClient(base_url=url) as http:
        for path in ("/dashboard/api/state", "/dashboard/api/events"):
            assert (await http.get(path)).status_code == 401
            wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        ok = await http.get("/dashboard/api/state", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["peers"]) == 3
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<title>dellm swarm</title>" in page.text
        for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            asset = await http.get(f"/dashboard/static/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
        missing = await http.get("/dashboard/static/nope.js")
        assert missing.status_code == 404 and "error" in missing.json()
        script = (await http.get("/dashboard/static/app.js")).text
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", script)


async def test_closing_the_server_ends_open_streams_at_once(tmp_path, monkeypatch):
    node = await start_node(tmp_path / "one", monkeypatch, sim_engine(), name="one")
    async with httpx.AsyncClient(base_url=node.http_url, timeout=30) as http:
        async with http.stream("GET", "/dashboard/api/events") as stream:
            events = sse(stream)
            assert (await anext(events))[0] == "state"
            started = time.monotonic()
            await node.close(0)
            with contextlib.suppress(httpx.HTTPError):
                async for _ in events:
                    pass
    assert time.monotonic() - started < 1.5  # not uvicorn's 2 s grace, nor the node's 5 s


async def test_a_stream_that_falls_behind_gets_a_snapshot_not_a_backlog(swarm3):
    dash = Dashboard(swarm3[0].gateway, tick_s=60)
    stream = dash.open_stream()
    for i in range(dashboard_module.QUEUE_SIZE * 3):
        dash._publish(f"event: x\ndata: {i}\n\n")
    assert stream.queue.qsize() <= dashboard_module.QUEUE_SIZE
    lines = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert any(line.startswith("event: state") for line in lines)
    dash.close_stream(stream)
    assert not dash.streams
    await asyncio.sleep(0)


async def test_a_question_closed_early_is_recorded_as_cancelled_and_its_pipeline_closed(swarm3):
    from dellm_p2p.coordinator.events import ChunkPlanned
    from dellm_p2p.coordinator.types import Chunk, Operation

    dash = Dashboard(swarm3[0].gateway)
    closed = asyncio.Event()

    async def pipeline():
        try:
            yield ChunkPlanned(Chunk("c1", "What is <b>2</b> plus 2?", Operation.MATH))
            await asyncio.Event().wait()  # a question still running
            yield None
        finally:
            closed.set()

    events = dash.track("chatcmpl-x", "What is <b>2</b> plus 2?", pipeline())
    await anext(events)
    (log,) = dash.state()["questions"]
    assert log["status"] == "running" and log["chunks"][0]["state"] == "planned"
    await events.aclose()  # the client went away
    assert closed.is_set()
    (log,) = dash.state()["questions"]
    assert log["status"] == "cancelled" and log["chunks"][0]["text"] == "What is <b>2</b> plus 2?"


async def test_state_and_stream_show_model_fitness_by_chunk_kind(swarm3):
    gw = swarm3[0]
    async with httpx.AsyncClient(base_url=gw.http_url) as http:
        assert (await http.get("/dashboard/api/state")).json()["models"] == []
        # Records naming model and kind (as a coordinator of a mixed swarm issues them) teach the node.
        dashboard = dashboard_of(gw)
        book = dashboard.gateway.fitness
        records = book.issue("c1", {swarm3[1].node_id: 0.05, swarm3[2].node_id: -0.05},
                             models={swarm3[1].node_id: "gemma", swarm3[2].node_id: "smol"}, kind="LOOKUP")  # fmt: skip
        for record in records:
            book.apply(record)
        models = (await http.get("/dashboard/api/state")).json()["models"]
    assert [(m["model"], m["kind"], m["agreed"], m["rewards"]) for m in models] == [
        ("gemma", "LOOKUP", 1, 1),
        ("smol", "LOOKUP", 0, 1),
    ]
    assert models[0]["reliability"] > models[1]["reliability"]
