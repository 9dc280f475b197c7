"""Routing: the DELLM score, capacity, spreading, samples when peers are few; load and exploration (issue 17)."""

from __future__ import annotations

from collections import Counter

import pytest

from dellm_p2p.coordinator.errors import NoPeersError
from dellm_p2p.coordinator.route import RouteWeights, eligible_peers, route, score_peers
from dellm_p2p.coordinator.types import Chunk
from dellm_p2p.peer_table import PeerRecord, PeerState

CHUNK = Chunk("c1", "What is the capital of France?")
DELLM = RouteWeights.dellm()  # the deterministic rule before load and exploration


def peer(node_id, rtt=10.0, fitness=0.5, capacity=4, in_flight=0, model="m", state=PeerState.ALIVE):
    return PeerRecord(
        node_id=node_id, url=f"ws://127.0.0.1:{1000 + ord(node_id[-1])}", model=model, capacity=capacity,
        in_flight=in_flight, rtt_ms=rtt, fitness=fitness, state=state,
    )  # fmt: skip


def test_score_is_the_dellm_rule():
    peers = [peer("a", rtt=10, fitness=0.9), peer("b", rtt=20, fitness=0.5), peer("c", rtt=None, fitness=1.0)]
    scores = score_peers(peers, DELLM)
    assert scores["a"] == pytest.approx(0.7 * 0.5 + 0.3 * 0.1)
    assert scores["b"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.5)
    assert scores["c"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.0), "an unmeasured peer counts as the slowest"


def test_weights_are_configurable():
    peers = [peer("a", rtt=1, fitness=0.0), peer("b", rtt=10, fitness=1.0)]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, weights=DELLM)] == ["a"]
    fitness_only = RouteWeights.dellm(rtt=0.0, fitness=1.0)
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, weights=fitness_only)] == ["b"]


def test_orders_by_score_and_takes_k():
    peers = [peer("a", rtt=30), peer("b", rtt=10), peer("c", rtt=20), peer("d", rtt=40)]
    chosen = route(CHUNK, peers, redundancy=3, weights=DELLM)
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
    chosen = route(CHUNK, [peer("a", rtt=1), peer("b", rtt=2)], redundancy=5, weights=DELLM)
    assert [(a.peer_id, a.samples) for a in chosen] == [("a", 3), ("b", 2)]
    (only,) = route(CHUNK, [peer("a")], redundancy=3)
    assert only.samples == 3


def test_spreads_chunks_over_peers():
    peers = [peer("a", rtt=10), peer("b", rtt=11), peer("c", rtt=12)]
    first = route(CHUNK, peers, redundancy=1, weights=DELLM)
    again = route(Chunk("c2", "x"), peers, redundancy=1, assigned={first[0].peer_id: 1}, weights=DELLM)
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
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=3, weights=DELLM)] == ["a", "b", "c"]


def test_member_without_url_is_never_routed_to():
    coordinator = peer("z", rtt=0.1, fitness=1.0)
    coordinator.url = None  # a coordinator-only member (a Swarm), even one claiming a model
    assert eligible_peers([coordinator, peer("a")]) == [peer("a")]
    assert [a.peer_id for a in route(CHUNK, [coordinator, peer("a")], redundancy=2)] == ["a"]
    with pytest.raises(NoPeersError):
        route(CHUNK, [coordinator])


# Load-aware routing and exploration (issue 17): the default RouteWeights.


def seeded(seed=7):
    import random

    return random.Random(seed)


def test_default_score_normalizes_rtt_by_at_least_the_scale():
    peers = [peer("a", rtt=30.0, fitness=0.5), peer("b", rtt=60.0, fitness=0.5), peer("c", rtt=None, fitness=0.5)]
    scores = score_peers(peers)  # RouteWeights(): rtt_scale_ms = 3000
    assert scores["a"] == pytest.approx(0.7 * 0.01 + 0.3 * 0.5)
    assert scores["b"] == pytest.approx(0.7 * 0.02 + 0.3 * 0.5)
    assert scores["c"] == pytest.approx(0.7 * 0.015 + 0.3 * 0.5), "an unmeasured peer counts as a typical one"
    outlier = [*peers, peer("d", rtt=30.0), peer("e", rtt=2900.0)]
    assert score_peers(outlier)["c"] == pytest.approx(0.7 * 0.015 + 0.3 * 0.5), "typical: the median, not the mean"
    assert score_peers(peers, DELLM)["c"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.5), "the DELLM rule: as the slowest"
    assert score_peers([peer("x", rtt=None)])["x"] == pytest.approx(0.7 + 0.3 * 0.5), "nobody measured"
    far = [peer("a", rtt=3000.0), peer("b", rtt=12000.0)]
    assert score_peers(far)["a"] == pytest.approx(0.7 * 0.25 + 0.3 * 0.5), "beyond the scale: the largest RTT"


def test_load_term_sends_work_to_the_idle_peer():
    # Equal otherwise: with the load term the busy peer loses the first slot and every draw.
    weights = RouteWeights(explore=0.0, near=0.0)
    peers = [peer("a", capacity=10, in_flight=6), peer("b", capacity=10, in_flight=0)]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, weights=weights)] == ["b"]
    assert [a.peer_id for a in route(CHUNK, peers, redundancy=1, weights=weights, load={"b": 8})] == ["a"]
    second = route(CHUNK, peers, redundancy=2, weights=weights)[1]
    assert second.peer_id == "a" and second.score == pytest.approx(0.7 * 10 / 3000 + 0.3 * 0.5, abs=1e-6), "the base"


def test_never_a_peer_at_capacity_while_others_have_room():
    peers = [peer("a", rtt=0.1, fitness=1.0, capacity=2, in_flight=2, **{}), peer("b", rtt=50, fitness=0.0)]
    peers[0].rewards, peers[0].agreed = 100, 100  # the best peer by far, but full
    for seed in range(50):
        assert [a.peer_id for a in route(CHUNK, peers, redundancy=3, rng=seeded(seed))] == ["b"]
    assert {a.peer_id for a in route(CHUNK, peers, redundancy=1, load={"b": 3}, exclude=set())} == {"b"}
    with pytest.raises(NoPeersError):
        route(CHUNK, peers, load={"b": 4})


def test_first_slot_is_least_loaded_of_the_near_best_and_spreads():
    peers = [peer(x, rtt=1.0, fitness=0.9) for x in "abcd"] + [peer("e", rtt=1.0, fitness=0.2)]
    firsts = {route(CHUNK, peers, redundancy=1, rng=seeded(s))[0].peer_id for s in range(40)}
    assert firsts == {"a", "b", "c", "d"}, "near-equal best peers share the first slot; the unfit one never gets it"
    peers[0].in_flight = peers[1].in_flight = peers[2].in_flight = 1
    assert {route(CHUNK, peers, redundancy=1, rng=seeded(s))[0].peer_id for s in range(20)} == {"d"}


def test_exploration_is_seeded_and_tries_peers_without_evidence():
    proven = [peer(x, rtt=1.0, fitness=0.8) for x in "abc"]
    for p in proven:
        p.rewards, p.agreed = 40, 36
    newcomers = [peer(x, rtt=1.0) for x in "defghij"]
    peers = proven + newcomers
    runs = [[a.peer_id for a in route(CHUNK, peers, redundancy=3, rng=seeded(s))] for s in range(200)]
    assert runs[:5] == [[a.peer_id for a in route(CHUNK, peers, redundancy=3, rng=seeded(s))] for s in range(5)]
    assert all(r[0] in "abc" for r in runs), "the first slot stays with the proven, best-scored peers"
    later = Counter(x for r in runs for x in r[1:])
    assert set(later) >= set("defghij"), "every newcomer is drawn sometimes"
    assert sum(later[x] for x in "abc") > sum(later[x] for x in "defghij") / 2


def test_exploration_avoids_peers_that_often_disagreed():
    good = [peer(x, rtt=1.0, fitness=0.6) for x in "ab"]
    bad = [peer(x, rtt=1.0, fitness=0.45) for x in "cdefgh"]
    for p in good:
        p.rewards, p.agreed = 30, 27
    for p in bad:
        p.rewards, p.agreed = 30, 9
    picks = Counter(a.peer_id for s in range(300) for a in route(CHUNK, good + bad, redundancy=2, rng=seeded(s)))
    assert picks["a"] + picks["b"] > 0.9 * 600
    # Equal fitness (a coordinator that copied none): the first slot spreads, the draws still find the good.
    for p in good + bad:
        p.fitness = 0.5
    picks = Counter(a.peer_id for s in range(300) for a in route(CHUNK, good + bad, redundancy=2, rng=seeded(s)))
    assert picks["a"] + picks["b"] > 0.5 * 600


def with_evidence(p, agreed, rewards):
    p.agreed, p.rewards = agreed, rewards
    return p


def test_first_slot_takes_the_posterior_mean_of_agreement_once_a_peer_has_rewards():
    # Fitness after ~30 rewards barely separates them (DELLM moves it 0.005 a reward); the counts do.
    good = with_evidence(peer("g", rtt=60.0, fitness=0.56), 29, 30)
    bad = with_evidence(peer("b", rtt=0.3, fitness=0.54), 20, 30)
    firsts = Counter(route(CHUNK, [good, bad], redundancy=1, rng=seeded(s))[0].peer_id for s in range(50))
    assert firsts == {"g": 50}
    # The previous rule (fitness, RTT scale 100 ms): the 60 ms ping estimate decided.
    before = RouteWeights(greedy="fitness", rtt_scale_ms=100.0)
    assert {route(CHUNK, [good, bad], redundancy=1, weights=before)[0].peer_id for _ in range(5)} == {"b"}
    # Without rewards the fitness stands for it (the network's view a coordinator copied, or neutral).
    fresh = [peer("x", fitness=0.7), peer("y", fitness=0.5)]
    assert {route(CHUNK, fresh, redundancy=1, rng=seeded(s))[0].peer_id for s in range(20)} == {"x"}
    assert route(CHUNK, [good, bad], redundancy=1)[0].score == pytest.approx(0.7 * 0.02 + 0.3 * 0.44)
    with pytest.raises(ValueError, match="greedy"):
        RouteWeights(greedy="best")


def test_noisy_rtt_estimates_do_not_decide_who_gets_the_work():
    # One ping each at join, on a busy machine: estimates spread over 0.2-150 ms whatever the path (all
    # loopback). The two proven accurate peers happened to measure slow; they still get most of the work
    # (at most two of the three requests of a chunk can go to them).
    import random

    rng = random.Random(3)
    accurate = [with_evidence(peer(x, rtt=rng.uniform(100, 150)), 95, 100) for x in "ab"]
    rest = [with_evidence(peer(x, rtt=rng.uniform(0.2, 10)), 6, 10) for x in "cdefghij"]
    peers = accurate + rest
    runs = [[a.peer_id for a in route(CHUNK, peers, rng=seeded(s))] for s in range(300)]
    assert all(r[0] in "ab" for r in runs), "the first slot (the greedy anchor) goes by the evidence"
    picks = Counter(x for r in runs for x in r)
    assert picks["a"] + picks["b"] > 0.4 * 900, picks  # twice their fair share; the rest, uncertain, are explored
    before = RouteWeights(greedy="fitness", rtt_scale_ms=100.0)
    old = [[a.peer_id for a in route(CHUNK, peers, weights=before, rng=seeded(s))] for s in range(300)]
    assert not any(x in "ab" for r in old for x in r), "the previous rule: the RTT noise decided"


def test_explore_zero_ranks_later_slots_by_posterior_mean():
    peers = [peer("a", rtt=1.0, fitness=0.9), peer("c", rtt=1.0, fitness=0.5), peer("b", rtt=1.0, fitness=0.7)]
    for p, agreed in zip(peers, (18, 2, 10), strict=True):
        p.rewards, p.agreed = 20, agreed
    weights = RouteWeights(explore=0.0, near=0.0)
    for seed in range(10):
        assert [a.peer_id for a in route(CHUNK, peers, redundancy=3, weights=weights, rng=seeded(seed))] == [
            "a",
            "b",
            "c",
        ]
    assert RouteWeights().adaptive and not DELLM.adaptive
