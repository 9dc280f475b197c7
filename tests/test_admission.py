"""The admission queue, adaptive redundancy and per-client rate limits (no model, no network: fast).

The HTTP side (429 when the queue is full, many questions queued on a
one-slot node, k in the trace and /metrics) runs against an in-process node
with a SIMULATED engine.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dellm_p2p.coordinator.admission import Admission, QueueFullError, adaptive_redundancy
from dellm_p2p.coordinator.errors import NoPeersError
from dellm_p2p.coordinator.types import Assignment
from dellm_p2p.http.limits import Limiter, RateLimited, RateLimits, TokenBucket, client_key
from dellm_p2p.peer_table import PeerRecord, PeerState

from .simulated_engine import SimulatedEngine
from .test_http_api import serve, start_node


class Table:
    """A peer table stand-in: ``alive()`` returns the records as set."""

    def __init__(self, *capacities: int):
        self.records = [
            PeerRecord(node_id=f"p{i}", url=f"ws://127.0.0.1:{9000 + i}", model="m", capacity=c, state=PeerState.ALIVE)
            for i, c in enumerate(capacities)
        ]

    def alive(self) -> list[PeerRecord]:
        return list(self.records)

    def get(self, node_id: str) -> PeerRecord | None:
        return next((p for p in self.records if p.node_id == node_id), None)


def test_adaptive_redundancy_shares_free_slots_and_keeps_one():
    assert adaptive_redundancy(32, 1, 5) == 5  # quiet: the configured k
    assert adaptive_redundancy(32, 6, 5) == 5
    assert adaptive_redundancy(32, 8, 5) == 4
    assert adaptive_redundancy(32, 40, 5) == 1  # overloaded: the greedy anchor alone
    assert adaptive_redundancy(0, 3, 5) == 1
    assert adaptive_redundancy(3, 0, 5) == 3
    with pytest.raises(ValueError):
        adaptive_redundancy(3, 1, 0)


async def _hold(ticket, peer: str, answers: int) -> asyncio.Future:
    """Route a granted chunk: its answers count as in flight at ``peer`` until the returned future is set."""
    done = asyncio.get_running_loop().create_future()
    ticket.hold(done, Assignment("c1", peer, "ws://x", samples=answers))
    return done


async def test_quiet_load_gets_the_full_k_at_once():
    adm = Admission(Table(32))
    ticket = adm.ticket()
    assert await ticket.admit(5) == 5
    assert adm.reserved == 5 and adm.free_slots() == 27
    done = await _hold(ticket, "p0", 5)
    assert adm.reserved == 0 and adm.load["p0"] == 5 and adm.free_slots() == 27
    done.set_result(None)
    await asyncio.sleep(0)
    assert not adm.load and adm.free_slots() == 32
    ticket.close()
    assert adm.queued_questions == 0 and adm.k_used == {5: 1}


async def test_chunks_wait_in_arrival_order_and_k_shrinks_then_grows_back():
    adm = Admission(Table(2), poll_s=10)  # releases wake the queue, not the poll
    first = adm.ticket()
    assert await first.admit(5) == 2  # only two slots exist
    running = await _hold(first, "p0", 2)
    tickets = [adm.ticket() for _ in range(3)]
    order: list[tuple[int, int]] = []

    async def ask(i: int) -> None:
        k = await tickets[i].admit(5)
        order.append((i, k))
        await _hold(tickets[i], "p0", k)  # held until the test ends

    tasks = [asyncio.create_task(ask(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert adm.queued_chunks == 3 and adm.queued_questions == 3 and not order
    running.set_result(None)  # two slots free, three chunks queued: k = 1 for the first two
    await asyncio.sleep(0.01)
    assert order == [(0, 1), (1, 1)]
    assert adm.queued_chunks == 1
    for t in tasks[:2]:
        await t
    adm.load.clear()  # the first two finished
    adm.held.clear()
    adm.pump()
    await tasks[2]
    assert order[2] == (2, 2)  # alone in the queue: k grows back to what the slots allow
    for t in tickets:
        t.close()


async def test_fair_across_keys_a_flood_does_not_starve_another_client():
    adm = Admission(Table(2), poll_s=10)
    running = []
    for _ in range(2):  # the flooding client's first two questions take both slots
        busy = adm.ticket("flood")
        assert await busy.admit(1) == 1
        running.append(await _hold(busy, "p0", 1))
    flood = [adm.ticket("flood") for _ in range(5)]
    granted: list[str] = []

    async def ask(ticket) -> None:
        await ticket.admit(1)
        granted.append(ticket.key)

    tasks = [asyncio.create_task(ask(t)) for t in flood]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(ask(adm.ticket("other"))))  # arrives last
    await asyncio.sleep(0.01)
    running[0].set_result(None)  # one slot frees: the flood still holds one, the other client none
    await asyncio.sleep(0.01)
    assert granted == ["other"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert adm.queued_chunks == 0


async def test_one_key_keeps_arrival_order_and_a_question_s_later_chunk_goes_first():
    adm = Admission(Table(1), poll_s=10)
    old, new = adm.ticket(), adm.ticket()
    assert await old.admit(1) == 1
    running = await _hold(old, "p0", 1)
    granted: list[str] = []

    async def ask(ticket, name: str) -> None:
        await ticket.admit(1)
        granted.append(name)
        await _hold(ticket, "p0", 1)

    waiting = asyncio.create_task(ask(new, "new question"))
    await asyncio.sleep(0.01)
    later = asyncio.create_task(ask(old, "old question, chunk 2"))  # queued after the new question
    await asyncio.sleep(0.01)
    running.set_result(None)
    await asyncio.sleep(0.01)
    assert granted == ["old question, chunk 2"]
    waiting.cancel()
    await asyncio.gather(waiting, later, return_exceptions=True)


async def test_a_waiting_chunk_leaves_the_queue_at_its_deadline():
    adm = Admission(Table(1), poll_s=0.01)
    held = adm.ticket()
    await held.admit(1)
    await _hold(held, "p0", 1)
    late = adm.ticket()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await late.admit(3)
    assert adm.queued_chunks == 0 and adm.reserved == 0
    late.close()
    assert adm.queued_questions == 0


async def test_a_full_queue_refuses_with_retry_after():
    adm = Admission(Table(1), max_queue=2)
    a, b = adm.ticket(), adm.ticket()
    with pytest.raises(QueueFullError) as refused:
        adm.ticket()
    assert refused.value.retry_after_s >= 1 and adm.refused == 1
    await a.admit(1)  # a started: it no longer counts as waiting
    c = adm.ticket()
    for t in (a, b, c):
        t.close()
    assert adm.queued_questions == 0


async def test_no_serving_peer_fails_waiters_at_once():
    table = Table(1)
    adm = Admission(table, poll_s=0.01)
    first = adm.ticket()
    await first.admit(1)
    await _hold(first, "p0", 1)
    waiting = asyncio.create_task(adm.ticket().admit(2))
    await asyncio.sleep(0.02)
    table.records.clear()  # the only peer left
    with pytest.raises(NoPeersError):
        async with asyncio.timeout(2):
            await waiting


async def test_a_grant_to_a_cancelled_question_is_given_back():
    adm = Admission(Table(2), poll_s=10)
    first = adm.ticket()
    await first.admit(2)
    running = await _hold(first, "p0", 2)
    second = adm.ticket()
    task = asyncio.create_task(second.admit(2))
    await asyncio.sleep(0.01)
    running.set_result(None)
    task.cancel()  # granted by the release's pump, cancelled before it ran
    await asyncio.gather(task, return_exceptions=True)
    second.close()
    assert adm.reserved == 0 and adm.free_slots() == 2 and not adm.held


# Rate limits.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_per_minute():
    clock = Clock()
    bucket = TokenBucket(60, clock)  # one a second
    assert bucket.take(60) and not bucket.take(1)
    assert bucket.wait_s(1) == pytest.approx(1.0)
    clock.now += 2.5
    assert bucket.take(2) and not bucket.take(1)
    assert bucket.wait_s(61) == float("inf")


def test_requests_per_minute_per_client():
    clock = Clock()
    limiter = Limiter(RateLimits(requests_per_minute=2), clock=clock)
    limiter.admit("a", 100)
    limiter.admit("a", 100)
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 100)
    assert refused.value.retry_after_s == 30
    limiter.admit("b", 100)  # another client has its own bucket
    clock.now += 30
    limiter.admit("a", 100)
    assert limiter.refused == 1


def test_tokens_per_minute_charges_the_estimate_then_what_was_used():
    clock = Clock()
    limiter = Limiter(RateLimits(tokens_per_minute=1000), clock=clock)
    charged = limiter.admit("a", 400)
    assert charged == 400
    limiter.settle("a", charged, 900)  # the swarm's answers cost more than estimated
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a", 400)  # 100 left
    assert refused.value.retry_after_s == 18  # 300 tokens at 1000 a minute
    with pytest.raises(RateLimited, match="lower max_tokens"):
        limiter.admit("a", 5000)  # never fits
    clock.now += 18
    limiter.admit("a", 400)
    with pytest.raises(ValueError):
        Limiter(RateLimits(tokens_per_minute=0))


def test_client_key_prefers_user_then_a_hashed_key_then_the_address():
    assert client_key("alice", "Bearer s3cret", "1.2.3.4") == "user:alice"
    hashed = client_key(None, "Bearer s3cret", "1.2.3.4")
    assert hashed.startswith("key:") and "s3cret" not in hashed
    assert client_key(None, None, "1.2.3.4") == "addr:1.2.3.4"


# Through the HTTP API (SIMULATED engine).


async def test_api_queues_what_a_one_slot_node_cannot_take_and_reports_k(tmp_path, monkeypatch):
    engine = SimulatedEngine("The capital of France is Paris.", token_interval_s=0.01, max_model_len=4096)
    node = await start_node(tmp_path, monkeypatch, engine, max_concurrency=2)
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"model": "dellm", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
            replies = await asyncio.gather(
                *(http.post(node.http_url + "/v1/chat/completions", json=body) for _ in range(6))
            )
            assert [r.status_code for r in replies] == [200] * 6  # queued, none refused
            ks = [r.json()["dellm"]["chunks"][0]["redundancy"] for r in replies]
            assert all(1 <= k <= 2 for k in ks)  # two slots: never the default 5
            assert all(
                r.json()["choices"][0]["message"]["content"] == "The capital of France is Paris." for r in replies
            )
            metrics = (await http.get(node.http_url + "/metrics")).text
            assert "dellm_admission_queued_questions 0.0" in metrics
            assert 'dellm_redundancy_used_total{k="' in metrics and "dellm_admission_wait_seconds_count" in metrics
    finally:
        await node.close(0)


async def test_api_answers_429_with_retry_after_only_when_the_queue_is_full(tmp_path, monkeypatch):
    engine = SimulatedEngine(" ".join(["word"] * 100), token_interval_s=0.02, max_model_len=4096)
    node = await start_node(tmp_path, monkeypatch, engine, max_concurrency=1)
    try:
        async with serve(node, max_queue=1) as url, httpx.AsyncClient(timeout=30) as http:
            body = {"model": "dellm", "messages": [{"role": "user", "content": "Go"}], "dellm": {"redundancy": 1}}
            first = asyncio.create_task(http.post(url + "/v1/chat/completions", json=body))
            async with asyncio.timeout(5):
                while not engine.running:
                    await asyncio.sleep(0.01)
            second = asyncio.create_task(http.post(url + "/v1/chat/completions", json=body))  # waits in the queue
            await asyncio.sleep(0.3)
            third = await http.post(url + "/v1/chat/completions", json=body)
            assert third.status_code == 429 and third.json()["error"]["code"] == "queue_full"
            assert int(third.headers["retry-after"]) >= 1
            assert (await first).status_code == 200 and (await second).status_code == 200
    finally:
        await node.close(0)


async def test_api_rate_limit_per_client(tmp_path, monkeypatch):
    node = await start_node(tmp_path, monkeypatch, SimulatedEngine("Hello there.", token_interval_s=0.002))
    async with serve(node, limits=RateLimits(requests_per_minute=1)) as url, httpx.AsyncClient(timeout=30) as http:
        body = {"model": "simulated", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
        assert (await http.post(url + "/v1/chat/completions", json=body | {"user": "a"})).status_code == 200
        refused = await http.post(url + "/v1/chat/completions", json=body | {"user": "a"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) > 1
        assert (await http.post(url + "/v1/chat/completions", json=body | {"user": "b"})).status_code == 200
    await node.close(0)


def test_queue_and_limits_are_node_settings():
    from dellm_p2p.config import load_config

    config = load_config(http_max_queue=10, http_requests_per_minute=30, http_tokens_per_minute=20_000)
    assert (config.http_max_queue, config.http_requests_per_minute, config.http_tokens_per_minute) == (10, 30, 20_000)
    assert load_config().http_requests_per_minute is None  # off by default


async def test_a_stale_report_of_our_own_requests_does_not_block_their_slots():
    table = Table(4)
    adm = Admission(table)
    ticket = adm.ticket()
    assert await ticket.admit(4) == 4
    done = await _hold(ticket, "p0", 4)
    table.records[0].in_flight = 4  # the peer reports our four requests ...
    assert adm.free_slots() == 0
    done.set_result(None)
    await asyncio.sleep(0)
    assert adm.free_slots() == 4  # ... and still does after they ended: ours, not another's
    assert ticket.load == {"p0": -4}  # routing sees the peer idle too
    ticket.close()


def test_another_coordinators_requests_take_slots():
    table = Table(4)
    table.records[0].in_flight = 3  # never ours
    adm = Admission(table)
    assert adm.free_slots() == 1
    me = Table(4).records[0]
    me.source, me.in_flight = "self", 2  # a gateway's own node, read live
    table.records[0] = me
    adm.load["p0"] = 2
    assert adm.free_slots() == 2  # its two in flight are ours
