"""Routing: the DELLM score, capacity, spreading, samples when peers are few."""

from __future__ import annotations

import pytest

from dellm_p2p.coordinator.errors import NoPeersError
from dellm_p2p.coordinator.route import RouteWeights, eligible_peers, route, score_peers
from dellm_p2p.coordinator.types import Chunk
from dellm_p2p.peer_table import PeerRecord, PeerState

CHUNK = Chunk("c1", "What is the capital of France?")


def peer(node_id, rtt=10.0, fitness=0.5, capacity=4, in_flight=0, model="m", state=PeerState.ALIVE):
    return PeerRecord(
        node_id=node_id, url=f"ws://127.0.0.1:{1000 + ord(node_id[-1])}", model=model, capacity=capacity,
        in_flight=in_flight, rtt_ms=rtt, fitness=fitness, state=state,
    )  # fmt: skip


def test_score_is_the_dellm_rule():
    peers = [peer("a", rtt=10, fitness=0.9), peer("b", rtt=20, fitness=0.5), peer("c", rtt=None, fitness=1.0)]
    scores = score_peers(peers)
    assert scores["a"] == pytest.approx(0.7 * 0.5 + 0.3 * 0.1)
    assert scores["b"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.5)
    assert scores["c"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.0), "an unmeasured peer counts as the slowest"


def test_weights_are_configurable():
    peers = [peer("a", rtt=1, fitness=0.0), peer("b", rtt=10, fitness=1.0)]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1)] == ["a"]
    fitness_only = RouteWeights(rtt=0.0, fitness=1.0)
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, weights=fitness_only)] == ["b"]


def test_orders_by_score_and_takes_k():
    peers = [peer("a", rtt=30), peer("b", rtt=10), peer("c", rtt=20), peer("d", rtt=40)]
    chosen = route(CHUNK, peers, redundancy=3)
    assert [a.peer_id for a in chosen] == ["b", "c", "a"]
    assert all(a.samples == 1 for a in chosen)
    assert chosen[0].score < chosen[1].score < chosen[2].score


def test_skips_peers_at_capacity_dead_or_without_model():
    peers = [
        peer("a", in_flight=4, capacity=4),
        peer("b", model=None),
        peer("c", state=PeerState.DEAD),
        peer("d", state=PeerState.LEFT),
        peer("e", state=PeerState.SUSPECT),
        peer("f"),
    ]
    assert [p.node_id for p in eligible_peers(peers)] == ["e", "f"]
    assert {a.peer_id for a in route(CHUNK, peers, redundancy=2)} == {"e", "f"}


def test_coordinator_load_counts_against_capacity():
    peers = [peer("a", rtt=1, capacity=2, in_flight=1), peer("b", rtt=5)]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, load={"a": 1})] == ["b"]


def test_fewer_peers_than_k_asks_for_several_samples():
    chosen = route(CHUNK, [peer("a", rtt=1), peer("b", rtt=2)], redundancy=5)
    assert [(a.peer_id, a.samples) for a in chosen] == [("a", 3), ("b", 2)]
    (only,) = route(CHUNK, [peer("a")], redundancy=3)
    assert only.samples == 3


def test_spreads_chunks_over_peers():
    peers = [peer("a", rtt=10), peer("b", rtt=11), peer("c", rtt=12)]
    first = route(CHUNK, peers, redundancy=1)
    again = route(Chunk("c2", "x"), peers, redundancy=1, assigned={first[0].peer_id: 1})
    assert first[0].peer_id == "a" and again[0].peer_id == "b"


def test_exclude_and_no_peers():
    peers = [peer("a"), peer("b")]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=2, exclude={"a"})] == ["b"]
    with pytest.raises(NoPeersError, match="c1"):
        route(CHUNK, peers, exclude={"a", "b"})
    with pytest.raises(NoPeersError):
        route(CHUNK, [])
    with pytest.raises(ValueError):
        route(CHUNK, peers, redundancy=0)


def test_ties_break_deterministically_by_node_id():
    peers = [peer("b"), peer("a"), peer("c")]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=3)] == ["a", "b", "c"]


def test_member_without_url_is_never_routed_to():
    coordinator = peer("z", rtt=0.1, fitness=1.0)
    coordinator.url = None  # a coordinator-only member (a Swarm), even one claiming a model
    assert eligible_peers([coordinator, peer("a")]) == [peer("a")]
    assert [a.peer_id for a in route(CHUNK, [coordinator, peer("a")], redundancy=2)] == ["a"]
    with pytest.raises(NoPeersError):
        route(CHUNK, [coordinator])
