"""Rewards, the fitness rule, persistence, and epidemic gossip among many in-process peers."""

from __future__ import annotations

import asyncio
import json

import pytest

from dellm_p2p.coordinator.reward import AGREE, DISAGREE, SPEED_BONUS, chunk_rewards, reward_records
from dellm_p2p.coordinator.types import Candidate, VoteResult
from dellm_p2p.fitness import FitnessBook, apply_reward
from dellm_p2p.membership import Membership, PeerPool
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.protocol import MemberEntry, RewardRecord
from dellm_p2p.server import NodeServer


def cand(peer, answer, latency):
    return Candidate(peer_id=peer, text=str(answer), answer=answer, latency_ms=latency)


def test_reward_rule_agree_speed_bonus_disagree():
    candidates = [cand("fast", "paris", 100), cand("slow", "paris", 300), cand("wrong", "lyon", 50)]
    result = VoteResult("majority", "paris", candidates[0], agreement=2 / 3)
    rewards = chunk_rewards(candidates, result)
    assert rewards == {"fast": AGREE + SPEED_BONUS, "slow": AGREE, "wrong": DISAGREE}


def test_peer_with_several_samples_agrees_if_any_sample_does():
    candidates = [cand("a", "paris", 200), cand("a", "lyon", 200), cand("b", "lyon", 100)]
    rewards = chunk_rewards(candidates, VoteResult("majority", "paris", candidates[0], agreement=1 / 3))
    assert rewards == {"a": AGREE + SPEED_BONUS, "b": DISAGREE}


def test_no_winner_no_rewards():
    assert chunk_rewards([cand("a", None, 10)], VoteResult("majority", None, None, 0.0)) == {}
    assert chunk_rewards([], VoteResult("majority", "x", None, 0.0)) == {}


def test_fitness_rule_is_bounded_ewma():
    assert apply_reward(0.5, 0.07) == pytest.approx(0.9 * 0.5 + 0.1 * 0.57)
    assert apply_reward(0.5, -0.05) == pytest.approx(0.495)
    assert apply_reward(1.0, 0.07) == 1.0 and apply_reward(0.0, -0.05) == 0.0
    good = bad = 0.5
    for _ in range(50):
        good, bad = apply_reward(good, AGREE), apply_reward(bad, DISAGREE)
    assert good > 0.5 > bad


def test_records_have_unique_ids_and_issuer():
    records = reward_records("coord", "c1", {"a": 0.06, "b": -0.05})
    assert len({r.id for r in records}) == 2 and all(r.issuer == "coord" and r.hops == 0 for r in records)


def test_book_dedupes_persists_and_restores(tmp_path):
    path = tmp_path / "fitness.json"
    table = PeerTable("me", "ws://127.0.0.1:1")
    book = FitnessBook("me", table, path=path)
    table.observe(MemberEntry(node_id="a", url="ws://127.0.0.1:2", heartbeat=1))
    record = RewardRecord(id="r1", issuer="c", node_id="a", reward=0.07)
    assert book.apply(record) and not book.apply(record)
    assert book.duplicates == 1
    book.apply(RewardRecord(id="r2", issuer="c", node_id="me", reward=-0.05))
    book.apply(RewardRecord(id="r3", issuer="c", node_id="stranger", reward=0.05))
    book.save()
    saved = json.loads(path.read_text())["fitness"]
    assert saved == pytest.approx({"a": 0.507, "me": 0.495, "stranger": 0.505})

    table2 = PeerTable("me", "ws://127.0.0.1:1")
    book2 = FitnessBook("me", table2, path=path)
    assert book2.self_fitness == pytest.approx(0.495)
    table2.observe(MemberEntry(node_id="a", url="ws://127.0.0.1:2", heartbeat=1))
    assert table2.get("a").fitness == pytest.approx(0.507), "a rejoining peer gets its saved fitness"


def test_corrupt_fitness_file_is_ignored(tmp_path):
    path = tmp_path / "fitness.json"
    path.write_text("{not json")
    assert FitnessBook("me", PeerTable("me"), path=path).self_fitness == 0.5


async def test_gossip_converges_and_dedupes_among_many_peers():
    """30 in-process nodes, each knowing every other: records injected at one reach all, once each.

    Push gossip (fanout 3) alone misses about e^-3 of the nodes; membership's
    anti-entropy exchanges must close the gap.
    """
    n = 30
    servers, books, members = [], [], []
    for i in range(n):
        server = NodeServer(None, node_id=f"n{i:02d}")
        await server.start("127.0.0.1", 0)
        servers.append(server)
    try:
        for server in servers:
            table = PeerTable(server.node_id, server.url)
            for other in servers:
                table.observe(MemberEntry(node_id=other.node_id, url=other.url, heartbeat=1))
            pool = PeerPool(node_id=server.node_id, name=server.node_id, url=server.url)
            server.fitness = FitnessBook(server.node_id, table, pool=pool, fanout=3, max_hops=8)
            server.membership = Membership(
                node_id=server.node_id, name=server.node_id, url=server.url, model=None, capacity=0,
                table=table, pool=pool, gossip_interval_s=0.2,
            )  # fmt: skip
            server.membership.fitness = server.fitness
            books.append(server.fitness)
            members.append(server.membership)
        for membership in members:
            await membership.start()
        records = [RewardRecord(id=f"r{i}", issuer="coord", node_id=f"n{i % 5:02d}", reward=0.06) for i in range(10)]
        books[0].receive(records)

        async def converged():
            while not all(b.applied == len(records) for b in books):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(converged(), 10)
        for i in range(5):
            values = {round(b.fitness(f"n{i:02d}"), 9) for b in books}
            assert len(values) == 1, f"fitness of n{i:02d} differs across peers: {values}"
            assert values.pop() == pytest.approx(apply_reward(apply_reward(0.5, 0.06), 0.06))
        assert sum(b.duplicates for b in books) > 0, "epidemic gossip should hit already-informed peers"
    finally:
        for membership in members:
            await membership.close(goodbye_timeout_s=0.1)
        for book in books:
            await book.close()
        for server in servers:
            await server.shutdown(0)
