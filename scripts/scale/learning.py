"""bench_scale's routing that learns: SIMULATED answers with a hidden accuracy per node.

The route-level simulation (no network, no clock), the figures both it and
the live phase report (Spearman against the hidden accuracy and an
oracle's bound, accurate peers' share, accuracy per block), and the live
phase's diagnosis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import time
from collections import Counter
from typing import Any

from harness.report import make_progress
from harness.simulated import SIM_MODEL, SIM_WRONG_ANSWERS, sim_right_answer
from harness.stats import pct

from dellm_p2p.coordinator.errors import SwarmError
from dellm_p2p.coordinator.pipeline import AskOptions, with_anchor
from dellm_p2p.coordinator.reward import chunk_rewards
from dellm_p2p.coordinator.route import RouteWeights, route
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation
from dellm_p2p.coordinator.vote import apply_anchor, is_decided, majority, vote
from dellm_p2p.membership.fitness import apply_reward
from dellm_p2p.peer_table import PeerRecord
from dellm_p2p.swarm import Swarm
from scale.nodes import HOST
from scale.workers import WorkerHandle, call_all, stats_summary

progress = make_progress("bench_scale")

# Routing that learns: SIMULATED answers with a hidden accuracy per node (issue 17)

POLICIES = {
    "dellm": RouteWeights.dellm(),
    "adaptive": RouteWeights(),
    # The default of the first issue-17 run (docs/results.md): DELLM fitness in the first slot, RTT scale 100 ms.
    "adaptive-v1": RouteWeights(greedy="fitness", rtt_scale_ms=100.0),
}
POLICY_TEXT = {
    "dellm": "before: DELLM score only",
    "adaptive": "now: + load, near-equal spreading, Thompson sampling",
    "adaptive-v1": "first issue-17 rule: fitness first slot, RTT scale 100 ms",
}


def hidden_accuracies(
    n: int,
    good_share: float,
    good: float,
    other: float,
    seed: int,
    spread: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> dict[int, float]:
    """SIMULATION: node index -> hidden accuracy; round(good_share × n) random nodes (at least one) are the accurate.

    Two levels (the issue's example): the accurate get ``good``, the rest ``other``. With ``spread``
    ``((good_lo, good_hi), (other_lo, other_hi))`` every node draws its own accuracy uniformly from its
    class's range instead (``--accuracy-spread``): without ties Spearman's rho can reach 1, while with two
    levels even a perfect ordering scores its ceiling (0.52 at 10 %).
    """
    rng = random.Random(seed)
    picked = set(rng.sample(range(n), max(1, round(good_share * n))))
    if spread is None:
        return {i: good if i in picked else other for i in range(n)}
    (good_lo, good_hi), (other_lo, other_hi) = spread
    return {i: rng.uniform(good_lo, good_hi) if i in picked else rng.uniform(other_lo, other_hi) for i in range(n)}


def accurate_nodes(accuracy: dict[Any, float], good_share: float) -> set[Any]:
    """The accurate class: the round(good_share × n) nodes (at least one) of highest hidden accuracy."""
    ranked = sorted(accuracy, key=accuracy.__getitem__, reverse=True)
    return set(ranked[: max(1, round(good_share * len(accuracy)))])


def sim_accuracies(n: int, args: argparse.Namespace, seed: int) -> dict[int, float]:
    """:func:`hidden_accuracies` as the command line sets them (``--accuracy-spread`` or two levels)."""
    spread = (args.good_range, args.other_range) if args.accuracy_spread else None
    return hidden_accuracies(n, args.good_share, args.good_accuracy, args.other_accuracy, seed, spread)


def ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their average rank (for Spearman's rho)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks); ``None`` when a side is constant."""
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def spearman_bound(accuracy: list[float], answers: list[int], draws: int = 100, seed: int = 0) -> float | None:
    """The Spearman(estimate, hidden accuracy) an oracle reaches with ``answers[i]`` graded answers of peer i.

    Each peer's accuracy is estimated as its share of right answers among ``answers[i]`` drawn from its
    hidden accuracy, graded against the truth (routing only sees agreement with a vote, a noisier grade);
    mean over ``draws`` draws, ties broken at random. An upper bound, in expectation, for any fitness
    learnt from that many answers per peer.
    """
    if len(accuracy) < 2:
        return None
    rng = random.Random(seed)
    rhos = []
    for _ in range(draws):
        estimate = [
            (sum(rng.random() < a for _ in range(m)) / m if m else 0.5) + 1e-9 * rng.random()
            for a, m in zip(accuracy, answers, strict=True)
        ]
        rho = spearman(estimate, accuracy)
        if rho is not None:
            rhos.append(rho)
    return statistics.fmean(rhos) if rhos else None


def learning_figures(
    questions: list[dict[str, Any]],
    fitness: dict[str, float],
    accuracy: dict[str, float],
    peaks: dict[str, int],
    capacity: int,
    answer_ms: float,
    window: int,
    good: set[str] | None = None,
    evidence: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The figures of issue 17 for one routing policy.

    Args:
        questions: per question in the order asked: ``requests`` (node id -> samples asked), ``correct``
            (the vote's answer is the right one), ``latency_ms``, ``failures`` (reasons), ``error``.
        fitness: the coordinator's final fitness per node id.
        accuracy: hidden accuracy per node id (the SIMULATION's; every node serves).
        peaks: most requests each node's engine ran at once.
        capacity: requests a node serves at once.
        answer_ms: the simulated answer time [ms].
        window: questions in the "first" and "last" windows (200 for 1,000 questions).
        good: the accurate class (default: the nodes of the highest accuracy).
        evidence: the coordinator's final ``(agreed, rewards)`` per node id: adds Spearman of the
            posterior mean of agreement (Beta(1, 1) prior), the estimate routing's exploration draws around.
    """
    n = len(accuracy)
    per_peer: Counter[str] = Counter()
    for q in questions:
        per_peer.update(q["requests"])
    total = sum(per_peer.values())
    if good is None:
        best = max(accuracy.values())
        good = {node for node, acc in accuracy.items() if acc == best}
    last = questions[-window:]
    last_total = sum(sum(q["requests"].values()) for q in last)
    last_good = sum(c for q in last for node, c in q["requests"].items() if node in good)
    latencies = sorted(q["latency_ms"] for q in questions if q["error"] is None)
    nodes = sorted(accuracy)
    acc_list = [accuracy[node] for node in nodes]
    fit_list = [fitness.get(node, 0.5) for node in nodes]
    # With tied hidden accuracies (two levels) even a perfect ordering of fitness gives Spearman < 1: the
    # ceiling is Spearman against any tie-free ordering that agrees with the accuracies (0.52 at 10 % / 90 %).
    ceiling = spearman(acc_list, [a + 1e-9 * i for i, a in enumerate(acc_list)])
    is_good = [node in good for node in nodes]
    pairs = [
        (fg, fb)
        for fg, g in zip(fit_list, is_good, strict=True)
        if g
        for fb, b in zip(fit_list, is_good, strict=True)
        if not b
    ]
    auc = sum(1.0 if fg > fb else 0.5 if fg == fb else 0.0 for fg, fb in pairs) / len(pairs) if pairs else None
    reasons: Counter[str] = Counter(why.split(":", 1)[0] for q in questions for why in q["failures"])

    def accuracy_of(part: list[dict[str, Any]]) -> float | None:
        return sum(q["correct"] for q in part) / len(part) if part else None

    p99 = pct(latencies, 99)
    return {
        "questions": len(questions),
        "errors": sum(q["error"] is not None for q in questions),
        "requests": total,
        "serving_peers": n,
        "distinct_peers_used": len(per_peer),
        "busiest_peer_share": round(max(per_peer.values()) / total, 4) if total else None,
        "fair_share": round(1 / n, 4),
        "latency_ms_p50": pct(latencies, 50),
        "latency_ms_p99": p99,
        "latency_p99_over_answer": round(p99 / answer_ms, 2) if p99 is not None else None,
        "spearman_fitness_accuracy": spearman(fit_list, acc_list),
        "spearman_ceiling": ceiling,
        "auc_good_over_rest": auc,
        "good_peers": len(good),
        "good_share_last": round(last_good / last_total, 4) if last_total else None,
        "accuracy_first": accuracy_of(questions[:window]),
        "accuracy_last": accuracy_of(last),
        # Per block of window / 4 questions (50 of 1,000), in order: how fast the accuracy climbs.
        "accuracy_curve": [
            round(accuracy_of(questions[i : i + max(1, window // 4)]), 3)
            for i in range(0, len(questions), max(1, window // 4))
        ],
        "window": window,
        "peak_in_flight": max(peaks.values(), default=0),
        "capacity": capacity,
        "peer_failures": dict(reasons),
        "slowest": [  # what the tail was made of
            {k: q[k] for k in ("latency_ms", "requests", "failures", "error", "at_s")}
            for q in sorted(questions, key=lambda q: -q["latency_ms"])[:3]
        ],
        "fitness_good_mean": statistics.fmean(f for f, g in zip(fit_list, is_good, strict=True) if g),
        "fitness_rest_mean": statistics.fmean(f for f, g in zip(fit_list, is_good, strict=True) if not g)
        if n > len(good)
        else None,
        "spearman_posterior_accuracy": spearman(
            [(1 + evidence.get(node, (0, 0))[0]) / (2 + evidence.get(node, (0, 0))[1]) for node in nodes], acc_list
        )
        if evidence is not None
        else None,
        "rewards_per_peer_median": statistics.median(evidence.get(node, (0, 0))[1] for node in nodes)
        if evidence is not None
        else None,
        # The best any estimate could do with as many answers per peer as it asked of each (oracle grading).
        "spearman_bound": spearman_bound(acc_list, [per_peer.get(node, 0) for node in nodes], draws=40),
    }


def learning_verdicts(f: dict[str, Any]) -> dict[str, bool]:
    """Issue 17's targets (set at N = 100) against one policy's figures."""
    gain = (
        f["accuracy_last"] - f["accuracy_first"]
        if f["accuracy_last"] is not None and f["accuracy_first"] is not None
        else None
    )
    p99x, rho, share = f["latency_p99_over_answer"], f["spearman_fitness_accuracy"], f["good_share_last"]
    return {
        "every serving peer got a request": f["distinct_peers_used"] == f["serving_peers"],
        "no peer over capacity": f["peak_in_flight"] <= f["capacity"] and not f["peer_failures"].get("overloaded"),
        "latency p99 <= 3 x answer time": p99x is not None and p99x <= 3.0,
        "Spearman(fitness, accuracy) >= 0.8": rho is not None and rho >= 0.8,
        f"accurate peers take >= 50 % of the last {f['window']}": share is not None and share >= 0.5,
        f"accuracy, last {f['window']} >= first {f['window']} + 10 points": gain is not None and gain >= 0.10 - 1e-9,
    }


def simulate_routing(n: int, args: argparse.Namespace, policy: str, seed: int) -> dict[str, Any]:
    """The same learning loop without the network: ``route`` -> SIMULATED answers -> vote -> rewards -> fitness.

    No sockets, processes or clocks: N peer records (capacity ``--capacity``, RTT estimate drawn once per peer from
    ``--sim-rtt-ms``, default 0.2-5 ms like a loopback or LAN ping), the questions asked in rounds of
    ``--learn-concurrency`` (each round routed with the previous rounds' rewards applied and its own requests
    counted in flight, as concurrent questions see each other), answers drawn from the hidden accuracies, and the
    pipeline's decisions replayed: the first assignment is the greedy anchor (:func:`with_anchor`), the answers
    arrive in random order (equal answer times), the vote stops waiting once :func:`is_decided` says the outstanding
    answers cannot change the winner, the default vote (``AskOptions().strategy``) with the anchor rule decides, and
    :func:`chunk_rewards` rewards the answers in the vote; stragglers are rewarded against the decided vote when
    ``--straggler-grace`` > 0 (with equal answer times they all finish within it), else never. ``FitnessBook``'s
    update and counts. It isolates the routing rule from the machine: the live phase's latency is this machine's,
    its learning is the rule's.
    """
    rng = random.Random(seed)
    accuracy = sim_accuracies(n, args, seed)
    strategy = AskOptions().strategy
    peers = [
        PeerRecord(
            node_id=f"sim-{i:04d}", url=f"ws://{HOST}:{20000 + i}", model=SIM_MODEL, capacity=args.capacity,
            rtt_ms=rng.uniform(*args.sim_rtt_ms),
        )
        for i in range(n)
    ]  # fmt: skip
    index = {p.node_id: i for i, p in enumerate(peers)}
    route_rng = random.Random(seed + 1)
    questions: list[dict[str, Any]] = []
    peak = 0
    for start in range(0, args.learn_questions, args.learn_concurrency):
        batch = []
        for q in range(start, min(start + args.learn_concurrency, args.learn_questions)):
            chosen = with_anchor(
                route(
                    Chunk(f"q{q}", "simulated", Operation.MATH),
                    peers,
                    redundancy=3,
                    weights=POLICIES[policy],
                    rng=route_rng,
                )
            )
            for a in chosen:
                peers[index[a.peer_id]].in_flight += 1
            peak = max(peak, max(p.in_flight for p in peers))
            batch.append((q, chosen))
        for q, chosen in batch:
            right = str(sim_right_answer(q))
            arrivals = []
            for a in chosen:
                p = peers[index[a.peer_id]]
                p.in_flight -= 1
                answers = []
                for sample in range(a.samples):
                    good = rng.random() < accuracy[index[a.peer_id]]
                    answer = right if good else str(int(right) + 1 + rng.randrange(SIM_WRONG_ANSWERS))
                    answers.append(
                        Candidate(
                            peer_id=p.node_id, text=answer, answer=answer, logprobs=[-0.1], fitness=p.fitness,
                            latency_ms=100.0 + rng.random(), sample=sample, greedy=a.greedy,
                        )
                    )  # fmt: skip
                arrivals.append((a.samples, answers))
            rng.shuffle(arrivals)
            candidates: list[Candidate] = []
            stragglers: list[Candidate] = []
            for i, (_, answers) in enumerate(arrivals):
                candidates += answers
                outstanding = sum(samples for samples, _ in arrivals[i + 1 :])
                if outstanding and is_decided(majority(candidates).scores, outstanding):
                    stragglers = [c for _, late in arrivals[i + 1 :] for c in late]
                    break
            result = apply_anchor(vote(candidates, strategy), candidates)
            rewards = chunk_rewards(candidates, result)
            if stragglers and args.straggler_grace > 0 and rewards:
                late = chunk_rewards(candidates + stragglers, result)
                rewards |= {
                    c.peer_id: late[c.peer_id]
                    for c in stragglers
                    if c.peer_id not in rewards and peers[index[c.peer_id]].rewards < args.straggler_evidence
                }
            for node_id, reward in rewards.items():
                p = peers[index[node_id]]
                p.fitness = apply_reward(p.fitness, reward)
                p.rewards, p.agreed = p.rewards + 1, p.agreed + (reward > 0)
            requests: Counter[str] = Counter()
            for a in chosen:
                requests[a.peer_id] += a.samples
            questions.append(
                {"requests": dict(requests), "correct": result.answer == right, "latency_ms": 0.0, "failures": [],
                 "error": None, "at_s": 0.0}
            )  # fmt: skip
    window = min(200, max(1, args.learn_questions // 5))
    by_id = {p.node_id: accuracy[i] for i, p in enumerate(peers)}
    figures = learning_figures(
        questions,
        {p.node_id: p.fitness for p in peers},
        by_id,
        {"max": peak},
        args.capacity,
        1.0,
        window,
        good=accurate_nodes(by_id, args.good_share),
        evidence={p.node_id: (p.agreed, p.rewards) for p in peers},
    )
    figures.update(policy=policy, seed=seed, concurrency=args.learn_concurrency)
    for key in ("latency_ms_p50", "latency_ms_p99", "latency_p99_over_answer", "slowest", "peer_failures"):
        figures.pop(key, None)
    return figures


def simulate_routing_seeds(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`simulate_routing` for both policies over ``--offline-seeds`` seeds: the mean of each figure."""
    out: dict[str, Any] = {}
    for policy in args.policies_list:
        runs = [simulate_routing(n, args, policy, args.seed + s) for s in range(args.offline_seeds)]
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
        mean = {k: statistics.fmean(r[k] for r in runs if r[k] is not None) for k in keys if runs[0][k] is not None}
        out[policy] = {"seeds": len(runs), "mean": mean, "min_good_share_last": min(r["good_share_last"] for r in runs)}
    return out


async def bench_learning(
    workers: list[WorkerHandle], boot_url: str, n: int, ids: dict[int, str], args: argparse.Namespace, policy: str
) -> dict[str, Any]:
    """One routing policy on the live network: a fresh coordinator asks ``--learn-questions`` SIMULATED questions.

    The coordinator (a :class:`Swarm`) starts from neutral fitness and no evidence for every node (its
    table is reset after joining: the nodes' tables carry the earlier phases' rewards), asks
    ``--learn-concurrency`` questions at once with the product's default vote at
    redundancy 3, and is closed at the end. Every node answers like its hidden accuracy says.
    """
    accuracy = sim_accuracies(n, args, args.seed)
    await call_all(workers, "set_accuracy", accuracy=accuracy, seed=args.seed + len(policy))
    options = AskOptions(
        redundancy=3, max_tokens=args.tokens + 8, timeout_s=60, chunk_timeout_s=30, decompose="none",
        synthesize=False, weights=POLICIES[policy], straggler_grace=args.straggler_grace,
        straggler_evidence=args.straggler_evidence,
    )  # fmt: skip
    swarm = Swarm(peers=[boot_url], mdns=False, options=options, discover_timeout_s=args.join_timeout_s)
    questions: list[dict[str, Any]] = [{} for _ in range(args.learn_questions)]
    try:
        await swarm.start()
        for _ in range(int(args.join_timeout_s / 0.05)):
            if len(swarm.table.alive()) >= n:
                break
            await asyncio.sleep(0.05)
        for record in swarm.table.records():  # neutral start: no fitness, no evidence
            record.fitness, record.agreed, record.rewards = 0.5, 0, 0
        probe = _CoordinatorProbe(swarm)
        await call_all(workers, "stats")  # the workers' counters start here
        probe.start()
        next_q = 0
        started = time.monotonic()

        async def asker() -> None:
            nonlocal next_q
            while next_q < args.learn_questions:
                q = next_q
                next_q += 1
                t0 = time.monotonic()
                entry: dict[str, Any] = {"requests": {}, "correct": False, "failures": [], "error": None}
                try:
                    answer = await swarm.ask(f"What is 6 times 7? (question {q})")
                    chunk = answer.chunks[0]
                    requests: Counter[str] = Counter()
                    for a in chunk.assignments:
                        requests[a.peer_id] += a.samples
                    entry["requests"] = dict(requests)
                    entry["failures"] = [why for _, why in chunk.failures]
                    entry["correct"] = chunk.vote is not None and chunk.vote.answer == str(sim_right_answer(q))
                    # Diagnosis (docs/results.md, issue 17): who got the greedy first slot, who was rewarded
                    # with which sign, in which order the answers arrived, how many were cancelled.
                    entry["first"] = next((a.peer_id for a in chunk.assignments if a.greedy), None)
                    entry["rewards"] = dict(chunk.rewards)
                    entry["arrivals"] = [(c.peer_id, c.latency_ms, c.first_token_ms) for c in chunk.candidates]
                    entry["stragglers"] = chunk.stragglers_cancelled
                    entry["chunk_ms"] = chunk.elapsed_ms
                except SwarmError as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["latency_ms"] = (time.monotonic() - t0) * 1000
                entry["at_s"] = round(t0 - started, 3)
                questions[q] = entry
                if (q + 1) % max(1, args.learn_questions // 5) == 0:
                    progress(f"N={n} {policy}: {q + 1}/{args.learn_questions} questions")

        await asyncio.gather(*(asker() for _ in range(args.learn_concurrency)))
        elapsed = time.monotonic() - started
        coordinator = probe.stop()
        worker_stats = stats_summary(await call_all(workers, "stats"))
        await asyncio.sleep(1.0)  # the last questions' stragglers finish (grace) and are rewarded
        fitness = {p.node_id: p.fitness for p in swarm.table.records()}
        evidence = {p.node_id: (p.agreed, p.rewards) for p in swarm.table.records()}
        rtts = sorted(p.rtt_ms for p in swarm.table.alive() if p.rtt_ms is not None)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(swarm.close(), 10)
    peaks: dict[str, int] = {}
    for reply in await call_all(workers, "peaks"):
        peaks.update({ids[int(i)]: peak for i, peak in reply["peaks"].items()})
    window = min(200, max(1, args.learn_questions // 5))
    answer_ms = args.first_token_ms + args.tokens * args.token_ms
    by_id = {ids[i]: a for i, a in accuracy.items()}
    good = accurate_nodes(by_id, args.good_share)
    figures = learning_figures(
        questions, fitness, by_id, peaks, args.capacity, answer_ms, window, good=good, evidence=evidence
    )
    figures.update(
        policy=policy,
        weights=POLICIES[policy].__dict__,
        concurrency=args.learn_concurrency,
        load_of_capacity=round(args.learn_concurrency * 3 / (n * args.capacity), 4),
        questions_per_s=round(len(questions) / elapsed, 2),
        # The coordinator's RTT EWMAs at the end (the base score's other half): on a busy machine they
        # measure the simulated nodes' event-loop lag more than the loopback network.
        rtt_ms={
            "measured": len(rtts),
            "p10": pct(rtts, 10),
            "p50": pct(rtts, 50),
            "p90": pct(rtts, 90),
            "max": pct(rtts, 100),
        },
    )
    figures["coordinator"] = coordinator
    figures["workers"] = worker_stats
    figures["diagnosis"] = learning_diagnosis(questions, good, by_id, probe.rtt_mean())
    figures["targets"] = learning_verdicts(figures)
    return figures


class _CoordinatorProbe:
    """Measures a live coordinator while it learns: its own event-loop lag, the connections its pool opens,
    and every peer's RTT estimate over time (sampled every ``period_s``), for the diagnosis of the live run.
    """

    def __init__(self, swarm: Swarm, period_s: float = 0.05):
        self.swarm, self.period_s = swarm, period_s
        self.lags: list[float] = []
        self.connects = 0
        self.rtt_sums: Counter[str] = Counter()
        self.rtt_counts: Counter[str] = Counter()
        self.task: asyncio.Task | None = None
        self.cpu0 = self.t0 = 0.0
        original = swarm.pool._connect

        async def connect(url: str):
            client = await original(url)
            self.connects += 1
            return client

        swarm.pool._connect = connect  # type: ignore[method-assign]

    def start(self) -> None:
        self.cpu0, self.t0 = time.process_time(), time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        tick = 0
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period_s)
            self.lags.append((time.perf_counter() - t - self.period_s) * 1000)
            tick += 1
            if tick % 10 == 0:  # every 0.5 s
                for p in self.swarm.table.alive():
                    if p.rtt_ms is not None:
                        self.rtt_sums[p.node_id] += p.rtt_ms
                        self.rtt_counts[p.node_id] += 1

    def rtt_mean(self) -> dict[str, float]:
        """Per node id: its RTT estimate [ms] averaged over the samples in which it was measured."""
        return {node: self.rtt_sums[node] / count for node, count in self.rtt_counts.items()}

    def stop(self) -> dict[str, Any]:
        if self.task is not None:
            self.task.cancel()
        wall = max(1e-9, time.monotonic() - self.t0)
        lags = sorted(self.lags)
        return {
            "loop_lag_ms_p50": pct(lags, 50),
            "loop_lag_ms_p99": pct(lags, 99),
            "loop_lag_ms_max": pct(lags, 100),
            "cpu_cores": round((time.process_time() - self.cpu0) / wall, 2),
            "connects": self.connects,
            "connects_per_s": round(self.connects / wall, 1),
        }


def learning_diagnosis(
    questions: list[dict[str, Any]],
    good: set[str],
    accuracy: dict[str, float],
    rtt_mean: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per class of peer (``good``: the accurate; the rest), what the live coordinator saw of it.

    Returns, per class: ``peers``; ``requests`` per peer; ``first_slot`` share of the greedy first
    assignments; ``rewarded_per_request`` (a request cancelled as a straggler, or of a chunk without a
    consensus, earns no reward); ``agree_rate`` (share of its rewards that were for agreeing);
    ``arrival_rank`` (mean position of its answers in arrival order, 0 = first); ``measured_rtt``
    (share of its peers whose RTT was measured) and ``rtt_ms_mean`` (mean RTT estimate of those).
    Also the whole run's ``stragglers_per_question`` and ``rewards_per_question``.
    """
    classes = {"accurate": set(good), "rest": set(accuracy) - set(good)}
    done = [q for q in questions if q.get("error") is None and "rewards" in q]
    out: dict[str, Any] = {
        "stragglers_per_question": statistics.fmean(q["stragglers"] for q in done) if done else None,
        "rewards_per_question": statistics.fmean(len(q["rewards"]) for q in done) if done else None,
    }
    firsts = Counter(q["first"] for q in done if q.get("first"))
    # Where a question's time goes: the first answer's arrival, the deciding (last used) answer's, the chunk
    # (decision), the question; p50 and p99 [ms].
    parts = {
        "first_answer": sorted(min(lat for _, lat, _ in q["arrivals"]) for q in done if q["arrivals"]),
        "deciding_answer": sorted(max(lat for _, lat, _ in q["arrivals"]) for q in done if q["arrivals"]),
        "chunk": sorted(q["chunk_ms"] for q in done),
        "question": sorted(q["latency_ms"] for q in done),
    }
    out["latency_ms"] = {name: [pct(v, 50), pct(v, 99)] for name, v in parts.items()}
    for name, members in classes.items():
        requests = sum(c for q in done for node, c in q["requests"].items() if node in members)
        signs = [r > 0 for q in done for node, r in q["rewards"].items() if node in members]
        positions = [i for q in done for i, (node, *_) in enumerate(q["arrivals"]) if node in members]
        rtts = [rtt_mean[n] for n in members if rtt_mean and n in rtt_mean]
        out[name] = {
            "peers": len(members),
            "requests_per_peer": round(requests / max(1, len(members)), 2),
            "first_slot": round(sum(firsts[n] for n in members) / max(1, sum(firsts.values())), 4),
            "rewarded_per_request": round(len(signs) / requests, 4) if requests else None,
            "agree_rate": round(sum(signs) / len(signs), 4) if signs else None,
            "arrival_rank": round(statistics.fmean(positions), 3) if positions else None,
            "measured_rtt": round(len(rtts) / max(1, len(members)), 3),
            "rtt_ms_mean": round(statistics.fmean(rtts), 2) if rtts else None,
        }
    return out
