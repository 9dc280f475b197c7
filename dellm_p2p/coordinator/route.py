"""Route: pick the peers that answer a chunk.

Base score (the DELLM routing rule, lower is better)::

    base = w_rtt × normalized RTT + w_fitness × (1 − fitness)

with weights 0.7 and 0.3 and normalized RTT = RTT / max(largest RTT among
the candidates, ``rtt_scale_ms``); a peer not yet measured counts as a
typical one, the median measured RTT (see :func:`_rtt_normalization`). The
scale (default 3 s, about one answer of the default 160 tokens at the 27 ms
a decode step takes on this project's CPU nodes, docs/results.md) weighs an
RTT by the share of a request's time it is. Divided by the largest RTT
alone, 0.3 ms against 3 ms counts as much as 30 ms against 300 ms; and RTT
estimates are noisy: a coordinator measures a peer by a ping or two (at
join, then a probe ack every N × 0.5 s under SWIM), and a ping that waits on
a busy event loop reads 100 ms or more where the path takes 0.2 ms. With a
100 ms scale, the live coordinator's estimates (0.2–184 ms, all loopback,
``scripts/bench_scale.py`` at N = 100) decided the routing; replayed
route-level with estimates drawn from 0.2–150 ms (``--sim-rtt-ms``) it used
39 of 100 peers, the accurate ones took 34 % of the last 200 questions'
requests in the worst of 3 seeds. Scales of 300 ms / 1 s / 3 s: 63 / 100 /
100 peers, worst seed 60 / 78 / 82 %; with 0.2–450 ms, 1 s used 68 peers
(63 %) and 3 s all 100 (83 %); with 0.2–5 ms estimates the scale made no
difference (82–84 %; docs/results.md, issue 17).

Load and spreading (:class:`RouteWeights`)::

    ρ = (in_flight + load) / capacity                  (in [0, 1): peers at capacity are not candidates)
    score = base + w_load × ρ / (1 − ρ) + spread × chunks already given

``in_flight`` is what the peer last reported in membership gossip, ``load``
what this coordinator has in flight there. ρ / (1 − ρ) is the extra
response time, in service times, of a processor-sharing server at
utilization ρ (M/G/1-PS: E[T] = E[S] / (1 − ρ); Kleinrock 1976, "Queueing
Systems", vol. 2, ch. 4), which is how a batching engine shares its slots:
a request or two in flight barely count (and gossip reports ``in_flight``
up to a few rounds late, our own finished requests included), a peer near
capacity counts as much slower. Peers at capacity are never chosen
(:func:`eligible_peers`). The first assignment (the pipeline sends
its greedy request there) goes to the least-loaded peer among those whose
greedy score is within ``near`` of the best, ties at random — the greedy rule
"least loaded of the best choices" that the power of two choices
generalizes (Mitzenmacher 2001, "The power of two choices in randomized
load balancing", IEEE TPDS 12(10)): it keeps a queue from building at the
one best peer while the near-equal others idle. The greedy score is the
score above with the posterior mean μ of the peer's agreement (below) in
place of its fitness once it has rewards (``greedy="posterior"``; without
any, its fitness: the network's view it copied, or the neutral 0.5, which
is also the uniform prior's mean). Both estimate how often the peer agrees
with the vote, but DELLM's fitness moves 0.005 a reward: after 1,000
questions at N = 100 the accurate peers' fitness averaged 0.59 against 0.53
for the rest (live, bench_scale), while their shares of agreeing rewards
were 95 % against 69 %, and the first slot — a third of the requests, and
the anchor that breaks ties — followed RTT noise. Route-level (N = 100, 3
seeds, 3 s scale) the posterior mean raised the accurate peers' share of the
last 200 questions' requests from 80 % to 85 % and the swarm's accuracy over
the first 200 from 58 % to 73 %. ``RouteWeights.dellm()`` and
``greedy="fitness"`` keep the fitness.

Exploration for the other assignments: Thompson sampling (Thompson 1933,
Biometrika 25; Chapelle and Li 2011, "An empirical evaluation of Thompson
sampling", NIPS) on each peer's posterior of agreeing with the vote. With
``s`` agreeing and ``f`` disagreeing rewards (counted by
:class:`~dellm_p2p.membership.fitness.FitnessBook`) and a Beta(α₀, β₀) prior the
posterior is Beta(α₀ + s, β₀ + f), mean μ = α/(α+β) and standard deviation
σ = sqrt(μ(1 − μ)/(α + β + 1)). Each route draws, per candidate::

    θ = μ + explore × σ × z,   z ~ N(0, 1)
    explore score = w_rtt × normalized RTT + w_fitness × (1 − θ) + the same load and spread terms

and takes the lowest explore scores: a peer with little evidence has a wide
posterior and often draws high, so every serving peer gets tried; one that
often agreed draws high every time and takes most of the work; one that
often disagreed rarely wins a draw. The draw is the Gaussian with the
posterior's mean and variance (Gaussian Thompson sampling keeps its regret
bound, Agrawal and Goyal 2013, "Further optimal regret bounds for Thompson
sampling", AISTATS), z from a table of 1,024 normal quantiles: an exact
Beta draw (``random.betavariate``, ~1.3 µs) for 500 peers would spend most
of the 1 ms routing budget. ``explore`` scales the posterior's spread
(1 = plain Thompson sampling, 0 = none: the other slots by the posterior
mean μ).

``RouteWeights.dellm()`` is the rule before load and exploration (no load
term, no near-equal spreading, no exploration, normalized by the largest
RTT), kept for comparison (``scripts/bench_scale.py`` runs both). When fewer
peers than the redundancy k remain, the best peers are asked for several
samples in one request (vLLM's ``n``) instead of duplicate requests.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

from ..peer_table import PeerRecord, PeerState
from .errors import NoPeersError
from .types import Assignment, Chunk

_ROUTABLE = frozenset((PeerState.ALIVE, PeerState.SUSPECT))
# Standard normal quantiles at (i + ½) / 1024: z = table[int(u × 1024)] with u uniform in [0, 1) is a
# normal draw to within the table's resolution, for the price of one random() call.
_NORMAL_QUANTILES = tuple(statistics.NormalDist().inv_cdf((i + 0.5) / 1024) for i in range(1024))
_RNG = random.Random()


@dataclass(frozen=True)
class RouteWeights:
    """Parameters of the routing rule (see the module docstring for the formulas).

    Attributes:
        rtt, fitness: DELLM weights of normalized RTT and of (1 − fitness) (0.7, 0.3).
        spread: added per chunk of this question the peer already has.
        load: weight of the load term ρ / (1 − ρ), ρ = in-flight requests / capacity.
        near: score margin within which peers count as equally good for the
            first assignment, which goes to the least loaded of them.
        rtt_scale_ms: RTT [ms] that normalizes to 1 at least (0: the largest
            candidate RTT alone, as the DELLM rule had it).
        greedy: what stands for fitness in the first slot's score:
            ``posterior`` (the posterior mean of agreement once the peer has
            rewards, else its fitness) or ``fitness`` (DELLM's, always).
        explore: scale of the Thompson draw's spread (0: no exploration).
        prior_agree, prior_disagree: Beta prior (α₀, β₀) of a peer's
            agreement rate before any reward.

    The defaults were measured with ``scripts/bench_scale.py`` (docs/results.md).
    """

    rtt: float = 0.7
    fitness: float = 0.3
    spread: float = 0.1
    load: float = 0.1
    near: float = 0.02
    rtt_scale_ms: float = 3000.0
    explore: float = 1.0
    prior_agree: float = 1.0
    prior_disagree: float = 1.0
    greedy: str = "posterior"

    def __post_init__(self) -> None:
        if self.greedy not in ("posterior", "fitness"):
            raise ValueError(f"greedy must be 'posterior' or 'fitness', not {self.greedy!r}")

    @classmethod
    def dellm(cls, rtt: float = 0.7, fitness: float = 0.3, spread: float = 0.1) -> RouteWeights:
        """The routing rule before load and exploration: the DELLM score, best first, ties by node id."""
        return cls(
            rtt=rtt, fitness=fitness, spread=spread, load=0.0, near=0.0, rtt_scale_ms=0.0, explore=0.0, greedy="fitness"
        )

    @property
    def adaptive(self) -> bool:
        """True when load, near-equal spreading or exploration is on (else the DELLM rule, deterministic)."""
        return self.load > 0 or self.near > 0 or self.explore > 0


def score_peers(peers: Sequence[PeerRecord], weights: RouteWeights = RouteWeights()) -> dict[str, float]:
    """Base score per node id (lower is better): the DELLM rule, see the module docstring."""
    scale, unmeasured = _rtt_normalization(peers, weights)
    w_rtt, w_fitness = weights.rtt, weights.fitness
    return {
        p.node_id: w_rtt * (unmeasured if p.rtt_ms is None else p.rtt_ms / scale) + w_fitness * (1.0 - p.fitness)
        for p in peers
    }


def _rtt_normalization(peers: Sequence[PeerRecord], weights: RouteWeights) -> tuple[float, float]:
    """``(scale [ms], normalized RTT of an unmeasured peer)``: normalized RTT = RTT / scale, in [0, 1].

    scale = max(largest measured RTT, ``rtt_scale_ms``). A peer not measured yet counts as the slowest
    in the DELLM rule, and as a typical one (the median measured RTT) when routing is adaptive: a
    coordinator pings one gossip partner a round in a large network, so at N = 500 most peers are
    never measured, and counting them as the slowest kept them from ever getting work (bench_scale).
    The median, not the mean: one ping that waited on a busy event loop (180 ms among 2 ms ones)
    made every unmeasured peer look slow and routing avoided them (bench_scale, N = 100).
    """
    measured = [p.rtt_ms for p in peers if p.rtt_ms is not None and p.rtt_ms > 0]
    if not measured:
        return max(weights.rtt_scale_ms, 1e-9), 1.0
    slowest = max(measured)
    scale = max(slowest, weights.rtt_scale_ms)
    return scale, (statistics.median(measured) if weights.adaptive else slowest) / scale


def eligible_peers(
    peers: Sequence[PeerRecord], load: Mapping[str, int] | None = None, exclude: set[str] | frozenset[str] = frozenset()
) -> list[PeerRecord]:
    """Peers that may take a request now: alive or suspect, with a URL, serving a model, below capacity, not excluded.

    ``load`` is what this coordinator already has in flight per peer; it adds
    to the in-flight count the peer last reported.
    """
    load = load or {}
    routable = _ROUTABLE
    return [
        p
        for p in peers
        if p.model
        and p.url
        and p.state in routable
        and p.node_id not in exclude
        and p.in_flight + load.get(p.node_id, 0) < (p.capacity or 1)
    ]


def route(
    chunk: Chunk,
    peers: Sequence[PeerRecord],
    *,
    redundancy: int = 3,
    weights: RouteWeights = RouteWeights(),
    load: Mapping[str, int] | None = None,
    assigned: Mapping[str, int] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    rng: random.Random | None = None,
) -> list[Assignment]:
    """Choose up to ``redundancy`` peers for ``chunk``, best first.

    The first assignment is the best-scored peer (least loaded among the
    near-equal best, see the module docstring); the others are chosen by
    Thompson sampling, so exploration never takes the first slot.

    Args:
        chunk: the chunk to route.
        peers: candidate peers (usually ``PeerTable.alive()``).
        redundancy: answers wanted (k); samples are spread over
            ``min(k, eligible peers)`` peers, the first ones taking the extra.
        weights: routing parameters (``RouteWeights.dellm()``: the rule
            without load and exploration, deterministic).
        load: requests this coordinator has in flight per node id.
        assigned: chunks of this question already routed per node id.
        exclude: node ids not to use (e.g. peers that failed this chunk).
        rng: random source of the tie-breaks and draws (default: a module-wide one).

    Returns:
        Assignments whose ``samples`` add up to ``redundancy``; ``score`` is
        each peer's base (DELLM) score.

    Raises:
        NoPeersError: no eligible peer.
        ValueError: ``redundancy`` < 1.
    """
    if redundancy < 1:
        raise ValueError("redundancy must be at least 1")
    candidates = eligible_peers(peers, load, exclude)
    if not candidates:
        raise NoPeersError(f"no alive peer with a model can take chunk {chunk.id}")
    if weights.adaptive:
        chosen, base = _choose_adaptive(candidates, min(redundancy, len(candidates)), weights, load, assigned, rng)
    else:
        chosen, base = _choose_dellm(candidates, min(redundancy, len(candidates)), weights, assigned)
    per, extra = divmod(redundancy, len(chosen))
    return [
        Assignment(
            chunk_id=chunk.id,
            peer_id=p.node_id,
            url=p.url,
            samples=per + (1 if i < extra else 0),
            score=round(base[i], 6),
        )
        for i, p in enumerate(chosen)
    ]


def _choose_dellm(
    candidates: list[PeerRecord], k: int, weights: RouteWeights, assigned: Mapping[str, int] | None
) -> tuple[list[PeerRecord], list[float]]:
    """The k lowest base scores (+ spread), ties by node id; returns the peers and their base scores."""
    # One pass and a partial sort (k is small): this runs for every chunk over every known peer
    # (bench_scale: N = 500 peers, target p99 < 1 ms).
    scores = score_peers(candidates, weights)
    if assigned:
        spread = weights.spread
        totals = {node_id: score + spread * assigned.get(node_id, 0) for node_id, score in scores.items()}
    else:
        totals = scores
    # The k-th smallest total (a C-level partial sort of floats), then an exact sort of the few
    # at or below it, ties by node id.
    kth = heapq.nsmallest(k, totals.values())[-1]
    best = sorted((total, node_id) for node_id, total in totals.items() if total <= kth)[:k]
    wanted = {node_id for _, node_id in best}
    by_id = {p.node_id: p for p in candidates if p.node_id in wanted}
    chosen = [by_id[node_id] for _, node_id in best]
    return chosen, [scores[p.node_id] for p in chosen]


def _choose_adaptive(
    candidates: list[PeerRecord],
    k: int,
    weights: RouteWeights,
    load: Mapping[str, int] | None,
    assigned: Mapping[str, int] | None,
    rng: random.Random | None,
) -> tuple[list[PeerRecord], list[float]]:
    """Load-aware choice with Thompson sampling (module docstring); returns the peers and their base scores."""
    load = load or {}
    assigned = assigned or {}
    rand = (rng or _RNG).random
    scale, unmeasured = _rtt_normalization(candidates, weights)
    w_rtt, w_fit, w_load, spread = weights.rtt, weights.fitness, weights.load, weights.spread
    a0, b0, explore = weights.prior_agree, weights.prior_disagree, weights.explore
    posterior = weights.greedy == "posterior"
    table, size = _NORMAL_QUANTILES, len(_NORMAL_QUANTILES)
    sqrt = math.sqrt
    # One pass over the candidates (N = 500 in bench_scale, budget 1 ms), a comprehension without method
    # calls: per peer (explore score, greedy score, load and spread terms, base score, peer) with
    # greedy = latency + w_fit × (1 − μ or fitness) + load and spread terms, explore = the same with the
    # draw θ in place of μ, base = latency + w_fit × (1 − fitness) (the DELLM score, reported).
    rows = [
        (
            (latency := w_rtt * (unmeasured if (rtt := p.rtt_ms) is None else rtt / scale))
            + (
                extra := w_load
                * (
                    (busy := (p.in_flight + (load[node] if (node := p.node_id) in load else 0)) / (p.capacity or 1))
                    / (1.0 - busy)
                )
                + (spread * assigned[node] if node in assigned else 0.0)
            )
            + w_fit
            * (
                1.0
                - (mean := (alpha := a0 + p.agreed) / (total := alpha + b0 + p.rewards - p.agreed))
                - explore * sqrt(mean * (1.0 - mean) / (total + 1.0)) * table[int(rand() * size)]
            ),
            latency + w_fit * (1.0 - (mean if posterior and p.rewards else p.fitness)) + extra,
            extra,
            latency + w_fit * (1.0 - p.fitness),
            p,
        )
        for p in candidates
    ]
    best_greedy = min(rows, key=itemgetter(1))[1]
    # First slot: the least loaded of the near-best by greedy score, ties at random.
    limit = best_greedy + weights.near
    near = [row for row in rows if row[1] <= limit]
    least = min(row[2] for row in near)
    ties = [row for row in near if row[2] == least]
    first = ties[int(rand() * len(ties))]
    best = heapq.nsmallest(k, rows, key=itemgetter(0)) if k > 1 else []
    chosen = [first, *[row for row in best if row is not first][: k - 1]]
    return [row[4] for row in chosen], [row[3] for row in chosen]
