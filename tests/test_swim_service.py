"""SWIM membership's asyncio layer (dellm_p2p.membership.service) with in-process nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from dellm_p2p.config import NodeConfig
from dellm_p2p.identity import Identity
from dellm_p2p.membership import SwimMembership, service
from dellm_p2p.membership.service import push_pull_scale, udp_address
from dellm_p2p.membership.swim import SYNC_BUCKETS, SignedEntry, Swim, sync_bucket
from dellm_p2p.node import Node
from dellm_p2p.peer_table import PeerState
from dellm_p2p.protocol import Sync


def config(tmp_path, i: int, peers: list[str]) -> NodeConfig:
    return NodeConfig(
        name=f"s{i}", engine="none", mdns=False, port=0, state_dir=tmp_path / f"s{i}", peers=peers, membership="swim"
    )


async def until(check, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)


@pytest.fixture
async def nodes(tmp_path):
    first = Node(config(tmp_path, 0, []))
    await first.start()
    started = [first]
    try:
        for i in range(1, 4):
            node = Node(config(tmp_path, i, [first.url]))
            await node.start()
            started.append(node)
        yield started
    finally:
        for node in started:
            await node.close(0)


def alive_everywhere(nodes: list[Node]) -> bool:
    return all(
        sum(1 for p in n.table.records() if p.state is PeerState.ALIVE) == len(nodes) - 1 for n in nodes if n.table
    )


async def test_nodes_converge_and_a_crashed_one_turns_dead_then_forged_datagrams_are_dropped(nodes):
    assert all(isinstance(n.membership, SwimMembership) for n in nodes)
    await until(lambda: alive_everywhere(nodes))
    victim = nodes[3]
    membership = victim.membership
    membership._transport.abort()  # a crash: no goodbye, no more acks
    for task in list(membership._tasks):
        task.cancel()
    others = nodes[:3]
    await until(lambda: all(n.table.get(victim.node_id).state is PeerState.DEAD for n in others), 15)
    assert all(victim.node_id not in {p.node_id for p in n.table.alive()} for n in others)
    # A forged entry for node 1 (its id, another URL, someone else's signature) pushed to node 0 is dropped.
    target, liar = nodes[0], Identity.generate()
    real = nodes[1].membership.core.me
    fake = SignedEntry.signed(liar, url="ws://127.0.0.1:9", name="x", model=None, capacity=0,
                              incarnation=real.incarnation + 9, left=False)  # fmt: skip
    forged = [fake.to_wire()[0], real.node_id, *fake.to_wire()[2:4], real.public_key, *fake.to_wire()[5:]]
    sock = udp_address(target.url)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=sock)
    transport.sendto(msgpack.packb({"t": "gossip", "from": liar.node_id, "c": [forged]}, use_bin_type=True))
    transport.sendto(b"\xc1 not msgpack")
    transport.close()
    await until(lambda: target.membership.counters()["member_forged"] >= 1)
    assert target.table.get(real.node_id).url == real.url
    stats = target.server.stats()
    assert stats.member_forged >= 1 and stats.swim_bad_datagrams >= 1 and stats.swim_probes > 0


async def test_clean_stop_is_left_and_a_restart_is_alive_again(tmp_path, nodes):
    await until(lambda: alive_everywhere(nodes))
    leaver = nodes.pop()
    old_incarnation = leaver.membership.incarnation
    await leaver.close(0)
    await until(lambda: all(n.table.get(leaver.node_id).state is PeerState.LEFT for n in nodes))
    again = Node(config(tmp_path, 3, [nodes[0].url]))
    await again.start()
    nodes.append(again)
    assert again.node_id == leaver.node_id and again.membership.incarnation > old_incarnation
    await until(lambda: alive_everywhere(nodes))


async def test_reward_records_ride_on_swim_with_few_duplicates(nodes):
    await until(lambda: alive_everywhere(nodes))
    issuer = nodes[3]
    records = issuer.fitness.issue("c1", {nodes[1].node_id: 0.05})
    for record in records:
        issuer.fitness.apply(record)
    # The issuer pushes to one node only; the others get it from piggybacked dissemination.
    client = await issuer.membership.pool.get(nodes[0].url)
    await client.rewards(records)
    await until(lambda: all(n.fitness.applied >= 1 for n in nodes), 10)
    await asyncio.sleep(3)  # let the retransmissions run out
    assert all(n.fitness.duplicates_max <= 2 * 4 for n in nodes)  # about retransmit_mult copies, not N
    assert all(n.server.stats().rewards_duplicate_max == n.fitness.duplicates_max for n in nodes)


def test_push_pull_interval_grows_with_log_n():
    assert push_pull_scale(30, 10) == 30
    assert push_pull_scale(30, 50) == 60
    assert push_pull_scale(30, 500) == 150


async def test_push_pull_between_equal_views_sends_bucket_hashes_only_and_old_peers_get_digests(nodes, monkeypatch):
    monkeypatch.setattr(service, "SUMMARY_MIN_MEMBERS", 0)  # summaries pay off from ~24 members; force them
    await until(lambda: alive_everywhere(nodes))
    a, b = nodes[0].membership, nodes[1].membership
    await until(lambda: not a.core.differing_buckets(b.core.bucket_hashes()), 10)
    client = await a.pool.get(nodes[1].url)
    frames = []
    real_sync = client.sync

    async def sync(digest, changes, timeout_s=5.0, buckets=None):
        frames.append((len(digest), len(changes), len(buckets or [])))
        return await real_sync(digest, changes, timeout_s, buckets)

    monkeypatch.setattr(client, "sync", sync)
    assert await a.push_pull(nodes[1].url)
    assert frames == [(0, 0, SYNC_BUCKETS)], "equal views: one frame of bucket hashes, no rows"
    # A difference in one bucket: the second frame carries that bucket's rows only.
    victim = nodes[3].node_id
    a.core.on_suspect(victim, a.core.members[victim].incarnation, a.node_id, asyncio.get_running_loop().time())
    frames.clear()
    assert await a.push_pull(nodes[1].url)
    in_bucket = sum(sync_bucket(n) == sync_bucket(victim) for n in [a.node_id, *a.core.members])
    assert frames[0] == (0, 0, SYNC_BUCKETS) and frames[1][0] == in_bucket and frames[1][1] >= 1
    assert b.core.state_of(victim) == "suspect"
    # An initiator without bucket summaries (digest only) still gets the full digest and what it lacks.
    fresh = Swim(Identity.generate(), url="ws://127.0.0.1:9", incarnation=1)
    reply = b.on_sync(Sync(nonce=7, digest=fresh.digest()))
    assert reply.reply and reply.nonce == 7 and not reply.buckets
    assert {row[0] for row in reply.digest} == {b.node_id} | set(b.core.members)
    fresh.apply_changes(reply.changes, 0.0, sync=True)
    assert set(fresh.members) == {b.node_id} | set(b.core.members) - {fresh.node_id}


async def test_any_datagram_from_a_member_refreshes_its_last_seen(nodes):
    await until(lambda: alive_everywhere(nodes))
    watcher = nodes[0]
    for task in list(watcher.membership._tasks):
        if task.get_name() == "dellm-swim":
            task.cancel()  # no probes of our own from now on: no acks to refresh anything
    row = watcher.table.get(nodes[1].node_id)
    row.last_seen = watcher.table.clock() - 100
    await until(lambda: watcher.table.clock() - row.last_seen < 5, 10)  # node 1's own probes of us


async def test_a_late_joiner_gets_recent_reward_records_in_its_join_push_pull(tmp_path, nodes):
    await until(lambda: alive_everywhere(nodes))
    issuer = nodes[0]
    records = issuer.fitness.issue("c1", {nodes[1].node_id: 0.05})
    for record in records:
        issuer.fitness.apply(record)  # applied at the issuer only: no push, no piggybacked copy
    late = Node(config(tmp_path, 9, [issuer.url]))
    await late.start()
    nodes.append(late)
    await until(lambda: late.fitness.applied == len(records))
    assert late.fitness.fitness(nodes[1].node_id) == issuer.fitness.fitness(nodes[1].node_id)


async def goodbye_checked(membership: SwimMembership) -> None:
    """Until the membership's check of an mDNS goodbye is over."""
    await until(lambda: not any(t.get_name() == "dellm-swim-goodbye" for t in membership._tasks))


async def test_an_mdns_goodbye_is_a_hint_checked_by_push_pull_never_proof(nodes):
    await until(lambda: alive_everywhere(nodes))
    watcher = nodes[0].membership
    for task in list(watcher._tasks):
        if task.get_name() == "dellm-swim":
            task.cancel()  # no probes of our own: what changes below comes from the goodbye's check
    # A goodbye for a node that still answers (forged: mDNS is unsigned) changes nothing.
    watcher.on_removed(nodes[1].node_id)
    await goodbye_checked(watcher)
    assert watcher.core.state_of(nodes[1].node_id) == "alive"
    # A node gone without its signed left entry (a crash right after its goodbye) is suspected at once.
    gone = nodes.pop()
    gone.membership._transport.abort()
    for task in list(gone.membership._tasks):
        task.cancel()
    await gone.server.shutdown(0)
    watcher.on_removed(gone.node_id)
    await goodbye_checked(watcher)
    assert watcher.core.state_of(gone.node_id) == "suspect"
    await gone.close(0)
