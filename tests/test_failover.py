"""Failover with SIMULATED engines (fast): busy connections survive gossip timeouts, synthesis fails over.

The real-process counterparts (SIGKILL of a node mid-stream, of a
coordinator mid-generation) are in ``test_swarm_vllm.py``.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from dellm_p2p import server as server_module
from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.coordinator.events import Final, PeerFailed, SynthesisToken
from dellm_p2p.coordinator.synthesize import fallback_answer
from dellm_p2p.engine import EngineError
from dellm_p2p.membership import Membership
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import Done, Members, Ping, ProtocolError, SamplingParams, Token, decode
from dellm_p2p.server import NodeServer
from dellm_p2p.swarm import Swarm

from .simulated_engine import SimulatedEngine
from .test_swarm import QUESTION, REPLIES, cluster  # noqa: F401  (cluster is a fixture)

SYNTHESIS_MARK = "Answers to its parts"  # in every synthesis prompt (synthesize.synthesis_messages)
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def served():
    """One NodeServer with a simulated engine; yields (server, url, engine)."""
    engine = SimulatedEngine("The capital of France is Paris.")
    server = NodeServer(engine, node_id="node-a", name="a", max_concurrency=8)
    url = await server.start("127.0.0.1", 0)
    yield server, url, engine
    await server.shutdown(0)


@pytest.fixture
def deaf(monkeypatch):
    """While ``deaf["on"]`` is true, nodes ignore ping and members frames (as if swamped); generate still works."""
    state = {"on": False}
    original = server_module._Session._on_frame

    async def on_frame(self, frame, requests):
        if state["on"] and self.peer is not None:
            try:
                if isinstance(decode(frame), Ping | Members):
                    return
            except ProtocolError:
                pass
        await original(self, frame, requests)

    monkeypatch.setattr(server_module._Session, "_on_frame", on_frame)
    return state


# Gossip timeouts and the shared connection.


async def test_gossip_timeout_on_a_busy_connection_keeps_its_stream(served, deaf, caplog):
    _, url, engine = served
    engine.reply = ["word"] * 40
    engine.token_interval_s = 0.05  # a 2 s stream, ~8 gossip rounds with a 0.2 s deadline
    table = PeerTable("observer")
    pool = PeerPool(node_id="observer", name="observer", url=None)
    membership = Membership(
        node_id="observer", name="observer", url=None, model=None, capacity=0, table=table, pool=pool,
        bootstrap=[url], gossip_interval_s=0.05, rpc_timeout_s=0.2,
    )  # fmt: skip
    await membership.start()
    try:
        async with asyncio.timeout(5):
            while table.get("node-a") is None or table.get("node-a").rtt_ms is None:
                await asyncio.sleep(0.02)
        client = await pool.get(url)
        caplog.set_level(logging.INFO, logger="dellm_p2p.membership")
        deaf["on"] = True
        tokens, done = 0, None
        async for item in client.generate(messages=ASK, params=SamplingParams(max_tokens=100), timeout_s=10):
            if isinstance(item, Token):
                tokens += 1
            else:
                done = item
        assert isinstance(done, Done) and tokens == 40, "the stream survived the gossip timeouts"
        kept = [r for r in caplog.records if "timed out on a busy connection" in r.getMessage()]
        assert len(kept) >= 3, "gossip did time out during the stream"
        assert pool.connection(url) is client and not client.closed
        # Once idle, a connection that does not answer gossip is dropped, with an honest reason.
        async with asyncio.timeout(5):
            while not client.closed:
                await asyncio.sleep(0.02)
        assert "closed by this side: gossip exchange failed" in client.close_reason
    finally:
        deaf["on"] = False
        await membership.close(goodbye_timeout_s=0.2)


async def test_close_reasons_say_who_closed(served):
    server, url, engine = served
    engine.reply = ("word " * 200).split(" ")
    engine.token_interval_s = 0.02
    client = await PeerClient.connect(url)
    stream = client.generate(messages=ASK, params=SamplingParams(max_tokens=200))
    await anext(stream)
    await client.close("test is done with it")
    with pytest.raises(PeerError, match="closed by this side: test is done with it"):
        await anext(stream)
    await stream.aclose()
    async with asyncio.timeout(5):  # the node aborted it and counts it cancelled
        while server.in_flight or engine.running:
            await asyncio.sleep(0.01)
    assert server.counters.requests_cancelled == 1

    client = await PeerClient.connect(url)
    stream = client.generate(messages=ASK, params=SamplingParams(max_tokens=200))
    await anext(stream)
    await server.shutdown(0)
    with pytest.raises(PeerError, match=r"closed by the peer \(1001 node shutting down\)"):
        async for _ in stream:
            pass
    await client.close()


# Synthesis failover.


def on_synthesis(node, behaviour):
    """Wrap ``node``'s engine: synthesis prompts go to ``behaviour(node, original, request, rid)`` (async gen)."""
    original = node.engine.generate

    def generate(request, request_id):
        text = " ".join(m.content for m in request.messages or [])
        if SYNTHESIS_MARK in text:
            return behaviour(node, original, request, request_id)
        return original(request, request_id)

    node.engine.generate = generate


async def stream_all(bootstrap: str, **options) -> list:
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:
        async with asyncio.timeout(30):
            return [e async for e in swarm.stream(QUESTION, **options)]


async def test_synthesizer_dying_mid_stream_hands_over_to_another_peer(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    first: list[str] = []

    async def dies_once(node, original, request, rid):
        if not first:  # whichever peer is asked first dies after one token
            first.append(node.server.node_id)
            async for delta in original(request, rid):
                yield delta
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(node.server.shutdown(0)))
                await asyncio.sleep(10)
        async for delta in original(request, rid):
            yield delta

    for node in nodes:
        on_synthesis(node, dies_once)
    events = await stream_all(bootstrap)
    answer = events[-1].answer
    failed = [e for e in events if isinstance(e, PeerFailed) and e.chunk_id == "synthesis"]
    assert [f.peer_id for f in failed] == first and "connection_lost" in failed[0].reason
    assert answer.synthesizer not in (None, first[0])
    assert answer.text == REPLIES["Question:"] and not answer.notes
    # The void partial text came first; the new synthesizer's tokens then carry the whole answer.
    after = [e.text for e in events[events.index(failed[0]) :] if isinstance(e, SynthesisToken)]
    assert "".join(after).strip() == answer.text


async def test_synthesizer_error_falls_through_to_the_next_best_peer(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    asked: list[str] = []

    async def errors_but_last(node, original, request, rid):
        asked.append(node.server.node_id)
        if len(asked) < 3:
            raise EngineError("simulated synthesis failure")
        async for delta in original(request, rid):
            yield delta

    for node in nodes:
        on_synthesis(node, errors_but_last)
    events = await stream_all(bootstrap)
    answer = events[-1].answer
    failed = [e.peer_id for e in events if isinstance(e, PeerFailed) and e.chunk_id == "synthesis"]
    assert failed == asked[:2] and len(set(asked)) == 3, "three different peers, in turn"
    assert answer.synthesizer == asked[2] and answer.text == REPLIES["Question:"]


async def test_every_synthesizer_failing_returns_the_chunk_winners_with_a_note(cluster):  # noqa: F811
    nodes, bootstrap = cluster

    async def always_fails(node, original, request, rid):
        raise EngineError("simulated synthesis failure")
        yield  # an async generator

    for node in nodes:
        on_synthesis(node, always_fails)
    events = await stream_all(bootstrap)
    answer = events[-1].answer
    failed = [e for e in events if isinstance(e, PeerFailed) and e.chunk_id == "synthesis"]
    assert len({f.peer_id for f in failed}) == 3
    assert answer.synthesizer is None
    votes = {t.chunk.id: t.vote for t in answer.chunks}
    assert answer.text == fallback_answer([t.chunk for t in answer.chunks], votes)
    assert "100" in answer.text and "high-yield" in answer.text
    assert len(answer.notes) == 1 and answer.notes[0].startswith("synthesis failed (")
    assert "simulated synthesis failure" in answer.notes[0]


async def test_hanging_synthesizer_cannot_outlive_the_question_deadline(cluster):  # noqa: F811
    nodes, bootstrap = cluster

    async def hangs(node, original, request, rid):
        await asyncio.sleep(3600)
        yield  # an async generator

    for node in nodes:
        on_synthesis(node, hangs)
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await stream_all(bootstrap, timeout_s=3.0)
    elapsed = loop.time() - started
    answer = events[-1].answer
    assert isinstance(events[-1], Final) and elapsed < 4.5
    assert answer.synthesizer is None and "100" in answer.text
    assert answer.notes and "no synthesis within" in answer.notes[0]


async def test_the_pool_does_not_evict_a_connection_it_just_handed_out(served, monkeypatch):
    """Over max_connections, an idle connection just returned by get() stays open: its request is coming."""
    from dellm_p2p import pool as pool_module

    _, url, _ = served
    other = NodeServer(SimulatedEngine("x"), node_id="node-b", name="b", max_concurrency=8)
    url_b = await other.start("127.0.0.1", 0)
    pool = PeerPool(node_id="c", name="c", url=None, max_connections=1)
    try:
        first = await pool.get(url)  # handed out; its caller has not sent anything yet
        await pool.get(url_b)  # over the limit: something idle is evicted, but not what was just handed out
        assert not first.closed and pool.connection(url) is first
        monkeypatch.setattr(pool_module, "EVICT_GRACE_S", 0.0)  # once the grace is over, LRU eviction applies
        third = NodeServer(SimulatedEngine("y"), node_id="node-c", name="c3", max_concurrency=8)
        url_c = await third.start("127.0.0.1", 0)
        await pool.get(url_c)
        assert pool.connection(url) is None and len(pool) == 1
        await third.shutdown(0)
    finally:
        await pool.close()
        await other.shutdown(0)
