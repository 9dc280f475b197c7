"""Rewards, the fitness rule, persistence, epidemic gossip among many in-process peers, and its trust checks."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.coordinator.reward import AGREE, DISAGREE, SPEED_BONUS, chunk_rewards, reward_records
from dellm_p2p.coordinator.types import Candidate, VoteResult
from dellm_p2p.identity import Identity, verify_reward
from dellm_p2p.membership import Membership
from dellm_p2p.membership.fitness import FitnessBook, apply_reward
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import (
    CLOSE_IDENTITY_MISMATCH,
    PROTOCOL_VERSION,
    Hello,
    MemberEntry,
    RewardRecord,
    encode,
    reward_signing_bytes,
)
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


def test_no_consensus_no_rewards():
    # All answers distinct: the greedy anchor decided, nobody agreed with a consensus.
    candidates = [cand("a", "paris", 10), cand("b", "lyon", 20)]
    kept = VoteResult("majority", "paris", candidates[0], agreement=0.5, anchored=True)
    assert chunk_rewards(candidates, kept) == {}


def test_fitness_rule_is_bounded_ewma():
    assert apply_reward(0.5, 0.07) == pytest.approx(0.9 * 0.5 + 0.1 * 0.57)
    assert apply_reward(0.5, -0.05) == pytest.approx(0.495)
    assert apply_reward(1.0, 0.07) == 1.0 and apply_reward(0.0, -0.05) == 0.0
    good = bad = 0.5
    for _ in range(50):
        good, bad = apply_reward(good, AGREE), apply_reward(bad, DISAGREE)
    assert good > 0.5 > bad


def member(identity: Identity, url: str | None = "ws://127.0.0.1:2", heartbeat: int = 1) -> MemberEntry:
    return MemberEntry(node_id=identity.node_id, url=url, public_key=identity.public_key, heartbeat=heartbeat)


def test_records_have_unique_ids_issuer_increasing_seqs_and_signatures():
    coord = Identity.generate()
    records = reward_records(coord, "c1", {"a": 0.06, "b": -0.05})
    assert len({r.id for r in records}) == 2 and all(r.issuer == coord.node_id and r.hops == 0 for r in records)
    assert records[0].seq < records[1].seq and records[0].seq > (time.time() - 60) * 1e6, "seq: microseconds"
    assert all(verify_reward(coord.public_key, r) for r in records)
    assert verify_reward(coord.public_key, records[0].model_copy(update={"hops": 3})), "hops is not signed"
    assert not verify_reward(coord.public_key, records[0].model_copy(update={"reward": 0.07}))
    assert not verify_reward(Identity.generate().public_key, records[0])


def test_book_dedupes_persists_and_restores(tmp_path):
    me, a = Identity.generate(), Identity.generate()
    path = tmp_path / "fitness.json"
    table = PeerTable(me.node_id, "ws://127.0.0.1:1")
    book = FitnessBook(me.node_id, table, path=path)
    table.observe(member(a))
    record = RewardRecord(id="r1", issuer="c", node_id=a.node_id, reward=0.07)
    assert book.apply(record) and not book.apply(record)
    assert book.duplicates == 1
    book.apply(RewardRecord(id="r2", issuer="c", node_id=me.node_id, reward=-0.05))
    book.apply(RewardRecord(id="r3", issuer="c", node_id="stranger", reward=0.05))
    book.save()
    saved = json.loads(path.read_text())["fitness"]
    assert saved == pytest.approx({a.node_id: 0.507, me.node_id: 0.495, "stranger": 0.505})

    table2 = PeerTable(me.node_id, "ws://127.0.0.1:1")
    book2 = FitnessBook(me.node_id, table2, path=path)
    assert book2.self_fitness == pytest.approx(0.495)
    table2.observe(member(a))
    assert table2.get(a.node_id).fitness == pytest.approx(0.507), "a rejoining peer gets its saved fitness"


def test_book_counts_the_rewards_fitness_rests_on_and_persists_them(tmp_path):
    me, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    path = tmp_path / "fitness.json"
    table = PeerTable(me.node_id, "ws://127.0.0.1:1")
    book = FitnessBook(me.node_id, table, path=path)
    table.observe(member(a))
    for i, reward in enumerate([0.06, 0.05, -0.05, 0.07]):
        book.apply(RewardRecord(id=f"a{i}", issuer="c", node_id=a.node_id, reward=reward))
    book.apply(RewardRecord(id="m", issuer="c", node_id=me.node_id, reward=-0.05))
    book.apply(RewardRecord(id="b", issuer="c", node_id=b.node_id, reward=0.05))  # not in the table yet
    assert (table.get(a.node_id).agreed, table.get(a.node_id).rewards) == (3, 4)
    assert book.counts(a.node_id) == (3, 4) and book.counts(me.node_id) == (0, 1) and book.counts(b.node_id) == (1, 1)
    assert book.counts("unknown") == (0, 0)
    table.observe(member(b))
    assert (table.get(b.node_id).agreed, table.get(b.node_id).rewards) == (1, 1), "counts follow a peer into the table"
    book.save()
    assert json.loads(path.read_text())["counts"] == {a.node_id: [3, 4], me.node_id: [0, 1], b.node_id: [1, 1]}

    table2 = PeerTable(me.node_id, "ws://127.0.0.1:1")
    book2 = FitnessBook(me.node_id, table2, path=path)
    assert book2.self_counts == (0, 1)
    table2.add_candidate(a.node_id, "ws://127.0.0.1:2", "mdns", public_key=a.public_key)
    assert (table2.get(a.node_id).agreed, table2.get(a.node_id).rewards) == (3, 4), "restored with the fitness"
    # A file from before counts existed still loads (everyone's evidence starts at zero).
    path.write_text(json.dumps({"fitness": {a.node_id: 0.6}}))
    table3 = PeerTable(me.node_id, "ws://127.0.0.1:1")
    FitnessBook(me.node_id, table3, path=path)
    table3.observe(member(a))
    assert table3.get(a.node_id).fitness == pytest.approx(0.6) and table3.get(a.node_id).rewards == 0


def test_corrupt_fitness_file_is_ignored(tmp_path):
    path = tmp_path / "fitness.json"
    path.write_text("{not json")
    assert FitnessBook("me", PeerTable("me"), path=path).self_fitness == 0.5


# Trust: signatures, membership of the issuer, freshness, replay.


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trust(tmp_path):
    """A receiving book whose table knows the coordinator ``coord`` (a url-less member) and a peer ``a``."""
    me, coord, a = Identity.generate(), Identity.generate(), Identity.generate()
    table = PeerTable(me.node_id, "ws://127.0.0.1:1")
    table.observe(member(coord, url=None))
    table.observe(member(a))
    clock = Clock()
    book = FitnessBook(me.node_id, table, path=tmp_path / "fitness.json", identity=me, clock=clock, window_s=120)
    return book, coord, a, clock


def signed(issuer: Identity, node_id: str, reward: float = 0.05, **fields) -> RewardRecord:
    fields.setdefault("ts", time.time())
    record = RewardRecord(
        id=fields.pop("id", f"r{issuer.next_seq()}"), issuer=issuer.node_id, seq=fields.pop("seq", issuer.next_seq()),
        node_id=node_id, reward=reward, chunk="c1", **fields,
    )  # fmt: skip
    return issuer.sign_reward(record)


def test_valid_record_from_a_member_is_applied(trust):
    book, coord, a, _ = trust
    assert book.receive([signed(coord, a.node_id, 0.07)])
    assert book.fitness(a.node_id) == pytest.approx(0.507) and book.applied == 1
    assert book.counters() == {
        "rewards_applied": 1, "rewards_duplicate": 0, "rewards_duplicate_max": 0, "rewards_rejected_signature": 0,
        "rewards_rejected_replay": 0, "rewards_rejected_stale": 0, "rewards_rejected_non_member": 0,
    }  # fmt: skip


def test_forged_signature_is_rejected_and_counted(trust, caplog):
    book, coord, a, _ = trust
    genuine = signed(coord, a.node_id, -0.05)
    tampered = genuine.model_copy(update={"reward": 0.5})  # the signature covers the reward
    forger = Identity.generate()  # signs the very bytes, with the wrong key
    by_other_key = genuine.model_copy(
        update={"id": "by-other", "signature": forger.sign(reward_signing_bytes(genuine))}
    )
    unsigned = genuine.model_copy(update={"id": "unsigned", "signature": b""})
    with caplog.at_level(logging.WARNING):
        assert book.receive([tampered, by_other_key, unsigned]) == []
    assert book.rejected["signature"] == 3 and book.applied == 0 and book.fitness(a.node_id) == 0.5
    assert len([r for r in caplog.records if "bad signature" in r.message]) == 1, "one log line, then only counted"
    assert book.recent() == [], "a rejected record is never passed on"
    assert book.receive([genuine]), "a forged copy does not block the genuine record"


def test_replayed_record_is_rejected(trust, tmp_path):
    book, coord, a, clock = trust
    record = signed(coord, a.node_id)
    assert book.receive([record])
    assert book.receive([record.model_copy(update={"hops": 0})]) == [], "hops is not signed: still a duplicate"
    assert book.duplicates == 1 and book.applied == 1
    # Same issuer and sequence number under a new id (as if the id memory had forgotten it): a replay.
    again = coord.sign_reward(record.model_copy(update={"id": "other-id"}))
    assert book.receive([again]) == [] and book.rejected["replay"] == 1
    # After a restart the id memory is empty, but the persisted replay memory is not.
    book.save()
    restarted = FitnessBook(book.node_id, book.table, path=book.path, identity=book.identity, clock=clock)
    assert restarted.receive([record]) == [] and restarted.rejected["replay"] == 1
    assert restarted.fitness(a.node_id) == pytest.approx(apply_reward(0.5, 0.05)), "applied once, not twice"
    assert restarted.receive([signed(coord, a.node_id)]), "newer records still pass"


def test_replay_memory_is_bounded_per_issuer(trust):
    book, coord, a, _ = trust
    book.max_seqs_per_issuer = 4
    records = [signed(coord, a.node_id) for _ in range(6)]
    assert len(book.receive(records[1:])) == 5
    assert len(book._windows[coord.node_id].seqs) == 4, "the oldest seq was forgotten..."
    assert book.receive(records[:1]) == [] and book.rejected["replay"] == 1, "...so every seq up to it counts as seen"


def test_stale_and_future_records_are_rejected(trust):
    book, coord, a, clock = trust
    old = signed(coord, a.node_id, ts=clock.now - 121)
    future = signed(coord, a.node_id, ts=clock.now + 121)
    nan = signed(coord, a.node_id, ts=float("nan"))
    assert book.receive([old, future, nan]) == [] and book.rejected["stale"] == 3
    assert book.receive([signed(coord, a.node_id, ts=clock.now - 119)])
    clock.now += 200  # the same record later: stale, whatever the replay memory holds
    assert book.receive([signed(coord, a.node_id, ts=clock.now - 200)]) == [] and book.rejected["stale"] == 4


def test_record_from_a_non_member_is_rejected_until_the_issuer_is_known(trust):
    book, _, a, _ = trust
    stranger = Identity.generate()
    record = signed(stranger, a.node_id)
    assert book.receive([record]) == [] and book.rejected["non_member"] == 1
    book.table.observe(member(stranger, url=None))  # its member entry arrives later
    assert book.receive([record]), "anti-entropy re-sends it: now accepted"


def test_own_records_echoed_back_are_accepted_once(trust):
    book, _, a, _ = trust
    (own,) = book.issue("c1", {a.node_id: 0.05})
    assert own.issuer == book.node_id and verify_reward(book.identity.public_key, own)
    assert book.receive([own]) and book.receive([own]) == []


def test_member_entry_with_mismatched_key_does_not_make_its_issuer_a_member(trust):
    book, coord, a, _ = trust
    impostor = Identity.generate()
    forged = MemberEntry(node_id=impostor.node_id, url=None, public_key=coord.public_key, heartbeat=1)
    book.table.observe(forged)
    assert book.table.get(impostor.node_id) is None and book.table.identity_rejected == 1
    assert book.receive([signed(impostor, a.node_id)]) == [] and book.rejected["non_member"] == 1


async def test_rejections_are_counted_in_stats_and_checked_in_members_exchanges_too():
    me, coord, a = Identity.generate(), Identity.generate(), Identity.generate()
    server = NodeServer(None, node_id=me.node_id, identity=me)
    url = await server.start("127.0.0.1", 0)
    table = PeerTable(me.node_id, url)
    pool = PeerPool(node_id=me.node_id, name="me", url=url, identity=me)
    server.fitness = FitnessBook(me.node_id, table, pool=pool, identity=me)
    server.membership = Membership(
        node_id=me.node_id, name="me", url=url, model=None, capacity=0, table=table, pool=pool, identity=me
    )
    server.membership.fitness = server.fitness
    try:
        async with await PeerClient.connect(url, node_id=coord.node_id, public_key=coord.public_key) as client:
            assert client.remote.public_key == me.public_key
            good = signed(coord, a.node_id)
            # The hello made the coordinator a member: its records pass, forged ones do not.
            await client.rewards([good, good.model_copy(update={"id": "forged", "reward": 1.0})])
            # Anti-entropy in a members exchange goes through the same checks.
            reply = await client.members(
                [member(a, url="ws://127.0.0.1:9")],
                rewards=[signed(Identity.generate(), a.node_id), signed(coord, a.node_id, ts=time.time() - 500)],
            )
            assert [r.id for r in reply.rewards] == [good.id], "only the applied record is passed on"
            stats = await client.stats()
        assert stats.rewards_applied == 1 and stats.rewards_rejected_signature == 1
        assert stats.rewards_rejected_non_member == 1 and stats.rewards_rejected_stale == 1
        assert stats.rewards_rejected_replay == 0 and stats.identity_rejected == 0
    finally:
        await server.membership.close(goodbye_timeout_s=0.1)
        await server.shutdown(0)


async def test_hello_with_mismatched_node_id_is_refused_and_counted():
    me = Identity.generate()
    server = NodeServer(None, node_id=me.node_id, identity=me)
    url = await server.start("127.0.0.1", 0)
    try:
        impostor, victim = Identity.generate(), Identity.generate()
        with pytest.raises(PeerError, match="identity_mismatch"):
            await PeerClient.connect(url, node_id=victim.node_id, public_key=impostor.public_key, timeout_s=3)
        assert server.identity_rejected == 1
        async with await PeerClient.connect(url) as client:  # a plain client (no key) is fine
            assert (await client.stats()).identity_rejected == 1
    finally:
        await server.shutdown(0)


async def test_connecting_to_a_node_whose_hello_lies_about_its_id_fails():
    import websockets

    liar, victim = Identity.generate(), Identity.generate()

    async def lying_node(ws):
        await ws.recv()
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id=victim.node_id, public_key=liar.public_key)))
        await ws.wait_closed()

    async with websockets.serve(lying_node, "127.0.0.1", 0) as fake:
        port = next(iter(fake.sockets)).getsockname()[1]
        pool = PeerPool(node_id="observer", name="observer", url=None)
        with pytest.raises(PeerError, match="identity_mismatch") as info:
            await pool.get(f"ws://127.0.0.1:{port}")
        assert info.value.code == "identity_mismatch" and pool.identity_rejected == 1
        assert CLOSE_IDENTITY_MISMATCH == 4005


async def test_gossip_converges_and_dedupes_among_many_peers():
    """30 in-process nodes, each knowing every other: records injected at one reach all, once each.

    Push gossip (fanout 3) alone misses about e^-3 of the nodes; membership's
    anti-entropy exchanges must close the gap.
    """
    n = 30
    coord = Identity.generate()  # the issuer: a coordinator-only member every node knows
    servers, books, members = [], [], []
    for _ in range(n):
        identity = Identity.generate()
        server = NodeServer(None, node_id=identity.node_id, identity=identity)
        await server.start("127.0.0.1", 0)
        servers.append(server)
    ids = [s.node_id for s in servers]
    try:
        for server in servers:
            table = PeerTable(server.node_id, server.url)
            table.observe(member(coord, url=None))
            for other in servers:
                table.observe(member(other.identity, url=other.url))
            pool = PeerPool(node_id=server.node_id, name=server.node_id, url=server.url, identity=server.identity)
            server.fitness = FitnessBook(server.node_id, table, pool=pool, fanout=3, max_hops=8)
            server.membership = Membership(
                node_id=server.node_id, name=server.node_id, url=server.url, model=None, capacity=0,
                table=table, pool=pool, gossip_interval_s=0.2, identity=server.identity,
            )  # fmt: skip
            server.membership.fitness = server.fitness
            books.append(server.fitness)
            members.append(server.membership)
        for membership in members:
            await membership.start()
        records = [signed(coord, ids[i % 5], 0.06, id=f"r{i}") for i in range(10)]
        books[0].receive(records)

        async def converged():
            while not all(b.applied == len(records) for b in books):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(converged(), 10)
        for i in range(5):
            values = {round(b.fitness(ids[i]), 9) for b in books}
            assert len(values) == 1, f"fitness of {ids[i]} differs across peers: {values}"
            assert values.pop() == pytest.approx(apply_reward(apply_reward(0.5, 0.06), 0.06))
        assert sum(b.duplicates for b in books) > 0, "epidemic gossip should hit already-informed peers"
        assert not any(sum(b.rejected.values()) for b in books), "valid records are never rejected"
    finally:
        for membership in members:
            await membership.close(goodbye_timeout_s=0.1)
        for book in books:
            await book.close()
        for server in servers:
            await server.shutdown(0)


async def test_forward_widens_to_log_n_over_pooled_connections_only():
    """ln N + 2 copies go to pooled peers; without enough pooled peers only ``fanout`` are reached."""
    me = Identity.generate()
    table = PeerTable(me.node_id)
    urls = [f"ws://127.0.0.1:{30000 + i}" for i in range(100)]
    for url in urls:
        peer = Identity.generate()
        table.observe(member(peer, url))
    sent: list[str] = []

    class Client:
        def __init__(self, url: str):
            self.url = url

        async def rewards(self, records):
            sent.append(self.url)

    class Pool:
        def __init__(self, open_urls: set[str]):
            self._open = open_urls

        def open_urls(self) -> set[str]:
            return self._open

        async def get(self, url: str) -> Client:
            return Client(url)

    book = FitnessBook(me.node_id, table, pool=Pool(set(urls[:50])), fanout=3)  # type: ignore[arg-type]
    assert await book.forward([], 3) == 7  # ceil(ln 101 + 2)
    assert set(sent) <= set(urls[:50])
    sent.clear()
    book.pool = Pool(set(urls[:1]))  # type: ignore[assignment]
    assert await book.forward([], 3) == 3 and urls[0] in sent
