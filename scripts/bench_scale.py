"""Benchmark the network layer at scale, without models: N simulated nodes on 127.0.0.1.

Every node is the product's own stack -- ``NodeServer`` + ``PeerTable`` +
``PeerPool`` + ``FitnessBook`` + ``Membership``, wired as ``dellm_p2p.node``
wires them, with the library's defaults (gossip interval 0.5 s, fan-out 3,
pool of 64 connections, 32 requests at once) -- but its engine is a
**SIMULATION** (``harness.simulated.SimulatedEngine``, used by benchmarks
only): no model, it streams a fixed 20-word answer at a fixed token rate
after a fixed latency. Nodes run in a few worker processes (``spawn``), each
an event loop (uvloop through :func:`dellm_p2p.runtime.run`) hosting N/P
nodes; the benchmark itself (routing, coordinator) runs in the main process.
Its parts live in ``scripts/scale/`` (nodes, workers, learning, report).

Figures per N (``--sizes``, default 10,100,500):

* **membership converged** [s]: from the moment all nodes but the bootstrap
  node were told to start (each knows only node 0, mDNS off) until every
  node's table lists the N-1 others in state *alive*. Worker processes check
  their nodes' tables when polled (every 0.2 s, N/500 s above N = 100); a node counts from the
  first check it was complete at, if it stayed complete until all were.
* **routing** p50/p99 [µs]: ``route(chunk, peers, redundancy=3)`` over a
  ``PeerTable`` of N records with random RTT (0.2-50 ms), fitness (0-1) and
  in-flight counts, 10,000 chunks, in the main process before the nodes
  start (nothing else of ours runs then). The pipeline's whole dispatch
  decision (``table.alive()`` + ``eligible_peers`` + ``route``) is timed too
  (JSON).
* **gossip to all N** [s]: one ``RewardRecord``, issued and signed by one
  node (its own identity: every node knows it as a member, so the record
  passes the trust checks as a coordinator's would), is handed to that node
  (``fitness.receive([record])``: rumor mongering onward, plus anti-entropy
  on membership exchanges); each node's ``FitnessBook.apply`` stamps
  ``time.time()`` when it first applies it (all processes share the
  machine's clock). Median and worst of ``--gossip-reps`` records from
  different nodes; the JSON says how many nodes got it by push (``rewards``
  frames) and how many by anti-entropy (``members`` exchanges).
* **coordinator memory per known peer** [bytes]: ``tracemalloc`` runs in
  the main process while a ``Swarm`` (mDNS off, bootstrap node 0) is created
  and joins, until its table lists all N nodes; memory allocated in that
  window and still live (table, fitness book, membership digest, pooled
  connections), divided by N.
* **fan-out throughput** [questions/s]: that Swarm answers single-chunk
  questions (``decompose="none"``, ``synthesize=False``) at redundancy 3,
  ``--concurrency`` questions in flight for ``--duration-s``; every
  simulated answer takes ``--first-token-ms`` + ``--tokens`` × ``--token-ms``
  (default 0 + 20 × 5 ms = 100 ms), so the ideal rate is concurrency / that.
* **routing that learns** (issue 17; ``--learn-questions``, default 1,000
  per policy; ``--learn-only`` skips the three phases above): the
  **SIMULATION** gives every node a hidden accuracy (``--good-share`` 10 %
  of them right ``--good-accuracy`` 90 % of the time, the rest
  ``--other-accuracy`` 40 %; right answers agree, wrong ones are drawn from
  20 per question, so they mostly differ). For each routing policy —
  ``dellm`` (``RouteWeights.dellm()``, the rule before issue 17) and
  ``adaptive`` (``RouteWeights()``, the default) — a fresh coordinator with
  neutral fitness asks the questions, ``--learn-concurrency`` at a time, at
  redundancy 3 with the product's default vote. Figures: distinct peers
  used, the busiest peer's share against the fair 1/N, latency p50/p99
  against the answer time, Spearman(final fitness, hidden accuracy) with
  its ceiling (accuracy has two levels, so even a perfect ordering scores
  below 1), the accurate peers' share of requests and the swarm's accuracy
  in the first and last 200 questions, and the most requests a node ran at
  once against its capacity. Issue 17's targets are checked per policy.

Worker processes get ``nice`` +``--worker-nice`` (default 10) so the
coordinator, which in a real network has a machine of its own, is not starved
by N nodes sharing this machine's cores; ``--procs`` defaults to
max(cores, ceil(N / 100)): each process holds at most ~100 nodes, since every
node keeps up to 64 pooled connections and both ends of each are in our
processes (file descriptors: RLIMIT_NOFILE is raised to its hard limit).

Usage::

    .venv/bin/python scripts/bench_scale.py [--sizes 10,100,500] [--json out.json] [--quick]
        [--learn-only] [--learn-questions 1000] [--learn-concurrency 8]
        [--wait-load 2]   # first wait (poll every 30 s, at most 20 min) for the 1-min load average < 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dellm_p2p.config import NodeConfig
from dellm_p2p.coordinator.errors import SwarmError
from dellm_p2p.coordinator.pipeline import AskOptions
from dellm_p2p.coordinator.route import RouteWeights, eligible_peers, route
from dellm_p2p.coordinator.types import Chunk, Operation
from dellm_p2p.identity import Identity
from dellm_p2p.membership.fitness import FitnessBook
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import MemberEntry, Members, decode, encode
from dellm_p2p.runtime import run
from dellm_p2p.swarm import Swarm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness and scale packages beside this script
from harness.options import add_simulation_options, parse_sizes
from harness.report import make_progress
from harness.simulated import SIM_MODEL
from harness.stats import pct
from scale.learning import POLICIES, bench_learning, simulate_routing_seeds
from scale.nodes import HOST, install_log_counter
from scale.report import fmt, report
from scale.workers import WorkerHandle, call_all, stats_summary

POLL_S = 0.2  # membership status poll period
RNG = random.Random(20261122)
progress = make_progress("bench_scale")


# Routing (main process, no I/O)

_IDENTITIES: list[Identity] = []


def sim_identities(n: int) -> list[Identity]:
    """Key pairs of N simulated nodes for main-process tables (member entries carry public keys)."""
    while len(_IDENTITIES) < n:
        _IDENTITIES.append(Identity.generate())
    return _IDENTITIES[:n]


def bench_routing(n: int, iterations: int) -> dict[str, Any]:
    table = PeerTable("bench-coordinator", "")
    ids = sim_identities(n)
    for i, identity in enumerate(ids):
        table.observe(
            MemberEntry(
                node_id=identity.node_id, url=f"ws://{HOST}:{20000 + i}", public_key=identity.public_key,
                name=f"sim-{i:04d}", model=SIM_MODEL, capacity=32, incarnation=1, heartbeat=1, state="alive",
                in_flight=RNG.randint(0, 4),
            )
        )  # fmt: skip
        record = table.get(identity.node_id)
        record.rtt_ms = RNG.uniform(0.2, 50.0)
        record.fitness = RNG.random()
    peers = table.alive()
    chunks = [Chunk(f"c{i}", f"What is {i} times 7?", Operation.MATH) for i in range(iterations)]
    load = Counter({ids[RNG.randrange(n)].node_id: 1 for _ in range(min(n, 8))})
    assigned = Counter({ids[RNG.randrange(n)].node_id: 1 for _ in range(min(n, 4))})
    for chunk in chunks[:200]:  # warm-up
        route(chunk, peers, redundancy=3, load=load, assigned=assigned)
    route_ns, dispatch_ns = [], []
    clock = time.perf_counter_ns
    for chunk in chunks:
        t0 = clock()
        route(chunk, peers, redundancy=3, load=load, assigned=assigned)
        t1 = clock()
        route_ns.append(t1 - t0)
    dellm, dellm_ns = RouteWeights.dellm(), []
    for chunk in chunks:  # the rule before issue 17, timed in the same conditions
        t0 = clock()
        route(chunk, peers, redundancy=3, load=load, assigned=assigned, weights=dellm)
        dellm_ns.append(clock() - t0)
    for chunk in chunks:  # what QuestionRun._collect.dispatch does per chunk
        t0 = clock()
        alive = table.alive()
        eligible_peers(alive, load, exclude=set())  # the pipeline's check for peers not yet tried
        route(chunk, alive, redundancy=3, load=load, assigned=assigned, exclude=set())
        dispatch_ns.append(clock() - t0)
    route_ns.sort()
    dispatch_ns.sort()
    dellm_ns.sort()
    return {
        "iterations": iterations,
        "route_us_p50": pct(route_ns, 50) / 1000,
        "route_us_p99": pct(route_ns, 99) / 1000,
        "route_us_max": route_ns[-1] / 1000,
        "dispatch_us_p50": pct(dispatch_ns, 50) / 1000,
        "dispatch_us_p99": pct(dispatch_ns, 99) / 1000,
        "route_dellm_us_p50": pct(dellm_ns, 50) / 1000,
        "route_dellm_us_p99": pct(dellm_ns, 99) / 1000,
    }


# Membership convergence


async def wait_converged(workers: list[WorkerHandle], n: int, t0: float, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    while True:
        replies = await call_all(workers, "status")
        links = {k: sum(r.get(k, 0) for r in replies) for k in ("alive", "suspect", "dead", "missing")}
        complete = sum(r["complete"] for r in replies)
        if all(r["ok_since_max"] is not None for r in replies):
            return {"converged": True, "converged_s": max(r["ok_since_max"] for r in replies) - t0, "links": links}
        if time.monotonic() > deadline:
            return {"converged": False, "converged_s": None, "complete_nodes": complete, "links": links}
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            progress(
                f"N={n}: {complete}/{n} tables complete after {time.time() - t0:.0f} s; links alive "
                f"{links['alive']}/{n * (n - 1)}, suspect {links['suspect']}, dead {links['dead']}, "
                f"missing {links['missing']}"
            )
        await asyncio.sleep(poll_period(n))


async def steady_run(workers: list[WorkerHandle], n: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--fp-run-s`` of steady state with ``--drop-rate`` of SWIM datagrams dropped: false positives, bytes, CPU."""
    if args.steady_warmup_s > 0:  # the joins' changes are still being retransmitted right after convergence
        progress(f"N={n}: {args.steady_warmup_s:g} s warm-up before the steady run")
        await asyncio.sleep(args.steady_warmup_s)
    progress(f"N={n}: steady run {args.fp_run_s:g} s, {args.drop_rate:.0%} of SWIM datagrams dropped on purpose")
    await call_all(workers, "steady_start", drop_rate=args.drop_rate)
    await asyncio.sleep(args.fp_run_s)
    replies = await call_all(workers, "steady_stop")
    nodes = sum(r["nodes"] for r in replies)
    wall = max(r["wall_s"] for r in replies)
    dead = [pair for r in replies for pair in r["dead_pairs"]]
    out = {
        "run_s": round(wall, 1),
        "drop_rate": args.drop_rate,
        "dropped_datagrams": sum(r["dropped"] for r in replies),
        "false_positive_pairs": len(dead),
        "nodes_falsely_dead": len({node_id for _, node_id in dead}),
        "suspect_pairs": sum(r["suspect_pairs"] for r in replies),
        # Sent + received by a node (as bench_membership counts it), mean over nodes.
        "bytes_per_s_per_node": round(sum(r["bytes"] for r in replies) / nodes / wall, 1),
        "cpu_pct_per_node": round(100 * sum(r["cpu_s"] for r in replies) / nodes / wall, 3),
    }
    progress(
        f"N={n}: steady: {out['false_positive_pairs']} false positives, {out['suspect_pairs']} suspect pairs, "
        f"{out['bytes_per_s_per_node']:,.0f} B/s per node (sent + received), CPU {out['cpu_pct_per_node']} % per node"
    )
    return out


async def detect_crash(
    workers: list[WorkerHandle], owner: dict[int, WorkerHandle], n: int, started: list[dict], args: argparse.Namespace
) -> dict[str, Any]:
    """Crash one node (no goodbye); time until every other node lists it dead and routes nothing to it [s]."""
    victim = n - 1
    ids = {int(i): node_id for reply in started for i, node_id in reply["ids"].items()}
    victim_id = ids[victim]
    crashed = await owner[victim].call("crash", index=victim)
    t_crash = crashed["t_crash"]
    deadline = time.monotonic() + args.detect_timeout_s
    while time.monotonic() < deadline:
        replies = await call_all(workers, "dead_status", node_id=victim_id)
        marked = sum(r["marked"] for r in replies)
        if marked >= n - 1:
            break
        await asyncio.sleep(0.2)
    firsts = [r["first"] for r in replies if r["first"] is not None]
    lasts = [r["last"] for r in replies if r["last"] is not None]
    out = {
        "marked_dead": marked,
        "observers": n - 1,
        "first_dead_s": round(min(firsts) - t_crash, 2) if firsts else None,
        "all_dead_s": round(max(lasts) - t_crash, 2) if marked >= n - 1 else None,
    }
    progress(
        f"N={n}: crash of one node: first dead mark {out['first_dead_s']} s, dead everywhere {out['all_dead_s']} s"
    )
    return out


def poll_period(n: int) -> float:
    """Membership status poll period [s]: checking N tables of N records costs O(N²) in the
    workers, so it is polled less often at large N (else the poll itself loads the nodes)."""
    return POLL_S * max(1.0, n / 100)


# Reward gossip


async def gossip_once(workers: list[WorkerHandle], owner: dict[int, WorkerHandle], n: int, at: int, timeout_s: float):
    record = {"id": uuid.uuid4().hex, "reward": 0.05, "chunk": "c1"}  # the injecting node signs it
    await call_all(workers, "watch", record_id=record["id"])
    injected = await owner[at].call("inject", index=at, record=record)
    t_inject = injected["t_inject"]
    deadline = time.monotonic() + timeout_s
    while True:
        hits: dict[int, tuple[float, str, int]] = {}
        for reply in await call_all(workers, "gossip_status"):
            hits.update({int(k): v for k, v in reply["hits"].items()})
        if len(hits) >= n or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    times = sorted(t - t_inject for t, _, _ in hits.values())
    by_how = Counter(how for _, how, _ in hits.values())
    push_times = [t - t_inject for t, how, _ in hits.values() if how == "push"]
    return {
        "injected_at": f"sim-{at:04d}",
        "injector_table": injected["injector_table"],  # its peers by state when it got the record
        "reached": len(hits),
        "all_s": times[-1] if len(hits) >= n else None,
        "p50_s": pct(times, 50),
        "p90_s": pct(times, 90),
        "by_push": by_how.get("push", 0),
        "by_anti_entropy": by_how.get("anti-entropy", 0),
        "last_push_s": max(push_times) if push_times else None,
        "max_hops": max((h for _, _, h in hits.values()), default=0),
    }


# Coordinator: memory per known peer, then fan-out throughput


def _swarm_state_bytes(frame: bytes | None) -> int:
    """Live bytes allocated by a Swarm (not started: no I/O) that learned the peers in one ``members`` frame."""
    gc.collect()
    tracemalloc.start()
    swarm = Swarm(peers=[], mdns=False)
    if frame is not None:
        reply = decode(frame)  # as the Swarm's first exchange receives it
        swarm.table.observe_all(reply.entries)
        for entry in reply.entries:
            swarm.table.record_rtt(entry.node_id, RNG.uniform(0.2, 50.0))
        getattr(swarm.membership, "digest", lambda: None)()  # heartbeat gossip caches it: every exchange sends it
        del reply
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del swarm
    return current


def coordinator_state_memory(n: int) -> dict[str, Any]:
    """A Swarm's PeerTable + PeerPool + FitnessBook + Membership with N known peers, per peer [bytes].

    Deterministic (no network, no load): the N entries come decoded from one real ``members`` frame;
    the empty Swarm's own bytes are subtracted. Pooled connections (at most PeerPool.max_connections,
    whatever N) are in the live figure instead.
    """
    entries = [
        MemberEntry(
            node_id=identity.node_id, url=f"ws://{HOST}:{20000 + i}", public_key=identity.public_key,
            name=f"sim-{i:04d}", model=SIM_MODEL, capacity=32, incarnation=time.time_ns() // 1_000_000,
            heartbeat=100 + i, state="alive", in_flight=0,
        )
        for i, identity in enumerate(sim_identities(n))
    ]  # fmt: skip
    frame = encode(Members(nonce=1, reply=True, entries=entries))
    empty = _swarm_state_bytes(None)
    full = _swarm_state_bytes(frame)
    return {"bytes_total": full - empty, "bytes_per_peer": round((full - empty) / n), "members_frame_bytes": len(frame)}


def _watch_drops(pool: PeerPool, counts: Counter[str]) -> None:
    """Count the pool's ``drop`` calls that close a connection with requests open on it, by caller."""
    original = pool.drop

    async def drop(url: str, *args: Any, **kwargs: Any) -> None:
        client = pool._clients.get(url)
        if client is not None and client.busy and not client.closed:
            counts[f"busy connection dropped by {sys._getframe(1).f_code.co_name}"] += 1
        await original(url, *args, **kwargs)

    pool.drop = drop  # type: ignore[method-assign]


async def join_swarm(bootstrap: str, n: int, options: AskOptions, timeout_s: float) -> tuple[Swarm, dict[str, Any]]:
    gc.collect()
    tracemalloc.start()
    swarm = Swarm(peers=[bootstrap], mdns=False, options=options, discover_timeout_s=timeout_s)
    drops: Counter[str] = Counter()
    _watch_drops(swarm.pool, drops)
    swarm.busy_drops = drops  # type: ignore[attr-defined]
    started = time.monotonic()
    await swarm.start()
    for _ in range(int(timeout_s / 0.05)):  # until its table lists every node
        if len(swarm.table.alive()) >= n:
            break
        await asyncio.sleep(0.05)
    known = len(swarm.table.alive())
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_area: Counter[str] = Counter()
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename.replace(os.sep, "/")
        area = next((a for a in ("dellm_p2p", "websockets", "pydantic", "msgpack", "asyncio") if f"/{a}/" in name), "")
        by_area[area or "other"] += stat.size
    top_lines = [
        f"{Path(st.traceback[0].filename).name}:{st.traceback[0].lineno} {st.size:,} B in {st.count:,} blocks"
        for st in snapshot.statistics("lineno")[:8]
    ]
    del snapshot
    return swarm, {
        "known_peers": known,
        "join_s": round(time.monotonic() - started, 2),
        "traced_bytes": current,
        "bytes_per_peer": round(current / max(1, known)),
        "by_area_bytes": dict(by_area.most_common()),
        "top_allocation_lines": top_lines,
        "pooled_connections": len(swarm.pool),
    }


async def bench_throughput(swarm: Swarm, concurrency: int, duration_s: float, max_questions: int) -> dict[str, Any]:
    swarm.busy_drops.clear()  # type: ignore[attr-defined]
    completed, latencies, failures = 0, [], Counter()
    peers_used: Counter[str] = Counter()
    reroutes = 0
    reasons: Counter[str] = Counter()
    issued = 0
    start = time.monotonic()
    deadline = start + duration_s
    cpu0 = time.process_time()

    async def asker(k: int) -> None:
        nonlocal completed, reroutes, issued
        while time.monotonic() < deadline and issued < max_questions:
            issued += 1
            t0 = time.monotonic()
            try:
                answer = await swarm.ask(f"What is 6 times 7? (question {issued})")
            except SwarmError as exc:
                failures[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            t1 = time.monotonic()
            if t1 <= deadline:
                completed += 1
                latencies.append((t1 - t0) * 1000)
            chunk = answer.chunks[0]
            peers_used.update(a.peer_id for a in chunk.assignments)
            reroutes += len(chunk.failures)
            reasons.update(why.split(":", 1)[0] for _, why in chunk.failures)

    tasks = [asyncio.create_task(asker(k)) for k in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=duration_s + 30)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {
        "questions_per_s": completed / duration_s,
        "completed": completed,
        "failures": dict(failures),
        "latency_ms_p50": pct(latencies, 50),
        "latency_ms_p99": pct(latencies, 99),
        "distinct_peers_used": len(peers_used),
        "top3_peer_share": round(sum(c for _, c in peers_used.most_common(3)) / max(1, sum(peers_used.values())), 3),
        "reroutes": reroutes,
        "peer_failure_reasons": dict(reasons),
        "coordinator_busy_drops": dict(swarm.busy_drops),  # type: ignore[attr-defined]
        "coordinator_cpu_cores": round(cpu / max(1e-9, time.monotonic() - start), 2),
        "coordinator_cpu_ms_per_question": round(cpu * 1000 / max(1, completed), 2),
    }


# One network size


async def bench_size(n: int, args: argparse.Namespace, settings: dict[str, Any], out: dict[str, Any]) -> None:
    progress(f"N={n}: routing, {args.route_iterations:,} chunks")
    out["routing"] = bench_routing(n, args.route_iterations)
    out["coordinator_state"] = coordinator_state_memory(n)
    if args.learn_questions and args.offline_seeds:
        progress(
            f"N={n}: route-level learning simulation, {args.offline_seeds} seeds x {args.learn_questions} questions"
        )
        out["learning_offline"] = simulate_routing_seeds(n, args)
    if args.offline_only:
        return
    procs = min(n, args.procs or max(os.cpu_count() or 1, math.ceil(n / 100)))
    out["procs"] = procs
    ctx = multiprocessing.get_context("spawn")
    shares = [list(range(w, n, procs)) for w in range(procs)]  # node 0 is in worker 0
    workers = [WorkerHandle(ctx, w, shares[w], settings) for w in range(procs)]
    owner = {i: w for w in workers for i in w.indices}
    swarm: Swarm | None = None
    try:
        await call_all(workers, "ping", timeout_s=60)
        progress(f"N={n}: {procs} worker processes up; starting nodes")
        boot = await workers[0].call("start", indices=[0], bootstrap=[], n_total=n)
        boot_url = boot["urls"][0]
        await call_all(workers, "stats")  # reset the phase counters
        if args.profile:
            await call_all(workers, "profile", path=None)
        t0 = time.time()
        started = await asyncio.gather(
            *(w.call("start", indices=[i for i in w.indices if i], bootstrap=[boot_url], n_total=n) for w in workers)
        )
        out["start_all_s"] = round(max(r["t_started"] for r in started) - t0, 2)
        out["membership"] = await wait_converged(workers, n, t0, args.converge_timeout_s)
        out["membership"]["workers"] = stats_summary(await call_all(workers, "stats"))
        conv = out["membership"]
        if conv["converged"]:  # issue 14's figure: from the last join (the workers start their nodes one by one)
            conv["after_last_join_s"] = round(max(0.0, conv["converged_s"] - out["start_all_s"]), 2)
        progress(
            f"N={n}: membership "
            + (
                f"converged in {conv['converged_s']:.2f} s, {conv['after_last_join_s']:.2f} s after the last join"
                if conv["converged"]
                else "did NOT converge"
            )
            + f" (workers used {conv['workers']['workers_cpu_cores']} cores)"
        )
        if args.fp_run_s > 0:
            out["steady"] = await steady_run(workers, n, args)
            out["detection"] = await detect_crash(workers, owner, n, started, args)
        if args.membership_only:
            return

        if not args.learn_only:
            await asyncio.sleep(args.settle_s)
            await call_all(workers, "stats")
            reps = []
            for rep in range(args.gossip_reps):
                at = RNG.randrange(1, n) if n > 1 else 0
                reps.append(await gossip_once(workers, owner, n, at, args.gossip_timeout_s))
                progress(
                    f"N={n}: gossip rep {rep + 1}: reached {reps[-1]['reached']}/{n}, all in {reps[-1]['all_s']} s"
                )
                await asyncio.sleep(0.5)
            all_s = [r["all_s"] for r in reps]
            out["gossip"] = {
                "reps": reps,
                "all_s_median": statistics.median(all_s) if None not in all_s else None,
                "all_s_max": max(all_s) if None not in all_s else None,
                "workers": stats_summary(await call_all(workers, "stats")),
            }

            options = AskOptions(
                strategy="majority", redundancy=3, temperature=0.0, max_tokens=args.tokens + 8, timeout_s=30,
                chunk_timeout_s=20, decompose="none", synthesize=False,
            )  # fmt: skip
            progress(f"N={n}: coordinator joins (tracemalloc on)")
            swarm, out["coordinator_live_memory"] = await join_swarm(boot_url, n, options, args.join_timeout_s)
            await call_all(workers, "stats")
            progress(f"N={n}: fan-out throughput, {args.concurrency} questions in flight for {args.duration_s:g} s")
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
            out["throughput"] = await bench_throughput(swarm, args.concurrency, args.duration_s, args.max_questions)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(Path(args.profile) / f"coordinator-n{n}.prof"))
                await asyncio.gather(
                    *(
                        w.call("profile", path=str(Path(args.profile) / f"worker-n{n}-{w.worker_id}.prof"))
                        for w in workers
                    )
                )
            out["throughput"]["ideal_questions_per_s"] = args.concurrency / (
                (args.first_token_ms + args.tokens * args.token_ms) / 1000
            )
            out["throughput"]["workers"] = stats_summary(await call_all(workers, "stats"))
        if args.learn_questions:
            ids = {int(i): node_id for reply in [boot, *started] for i, node_id in reply["ids"].items()}
            if swarm is not None:  # its reward records must not reach the learning phase's coordinators
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(swarm.close(), 10)
                swarm = None
            out["learning"] = {}
            for policy in args.policies_list:
                # Anti-entropy re-sends records applied in the last 10 s: let the earlier phase's fade.
                await asyncio.sleep(args.learn_pause_s)
                progress(
                    f"N={n}: routing that learns, policy {policy}: {args.learn_questions} questions, "
                    f"{args.learn_concurrency} in flight (SIMULATED hidden accuracies)"
                )
                out["learning"][policy] = await bench_learning(workers, boot_url, n, ids, args, policy)
                f = out["learning"][policy]
                progress(
                    f"N={n} {policy}: {f['distinct_peers_used']}/{n} peers used, accurate share (last "
                    f"{f['window']}) {fmt(f['good_share_last'])}, accuracy {fmt(f['accuracy_first'])} -> "
                    f"{fmt(f['accuracy_last'])}, Spearman {fmt(f['spearman_fitness_accuracy'])}, p99 "
                    f"{fmt(f['latency_ms_p99'], '.0f')} ms"
                )
        final = await call_all(workers, "stats")
        out["node_warnings"] = dict(sum((Counter(s["warnings"]) for s in final), Counter()))
    finally:
        if swarm is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(swarm.close(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(call_all(workers, "stop", timeout_s=30), 40)
        for w in workers:
            await asyncio.to_thread(w.reap)


# ---------------------------------------------------------------------------


def wait_for_load(limit: float, max_s: float) -> bool:
    """Poll the 1-min load average every 30 s until it is below ``limit`` or ``max_s`` passed; True if it did."""
    deadline = time.monotonic() + max_s
    while True:
        load = os.getloadavg()[0]
        if load < limit:
            return True
        if time.monotonic() >= deadline:
            progress(f"load average still {load:.2f} after {max_s:g} s: running anyway")
            return False
        progress(f"load average {load:.2f} >= {limit:g}: waiting")
        time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))


def _range(text: str, top: float = 1.0) -> tuple[float, float]:
    """``lo,hi`` -> (lo, hi), 0 <= lo <= hi <= ``top`` (an argparse type)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected lo,hi, got {text!r}") from None
    if not 0 <= lo <= hi <= top:
        raise argparse.ArgumentTypeError(f"need 0 <= lo <= hi <= {top:g}, got {text!r}")
    return lo, hi


def _default(cls: type, parameter: str) -> Any:
    """The library's default for a constructor parameter (so the benchmark follows it)."""
    import inspect

    return inspect.signature(cls).parameters[parameter].default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = NodeConfig.model_fields
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,500", help="comma-separated network sizes N (default 10,100,500)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny run: fewer routing chunks, 1 gossip rep, 2 s of load")
    p.add_argument("--procs", type=int, default=0, help="worker processes (default max(cores, ceil(N / 100)))")
    p.add_argument("--worker-nice", type=int, default=10, help="niceness added to worker processes (default 10)")
    p.add_argument("--gossip-interval", type=float, default=defaults["gossip_interval_s"].default)
    p.add_argument("--membership", choices=("swim", "gossip"), default=defaults["membership"].default)
    p.add_argument("--probe-interval", type=float, default=defaults["probe_interval_s"].default, help="SWIM [s]")
    p.add_argument("--membership-only", action="store_true", help="after convergence only the steady run and the crash")
    p.add_argument(
        "--fp-run-s",
        type=float,
        default=0.0,
        help="steady run watched for false positives, then a crash [s] (default: 60 with --membership-only, else 0)",
    )
    p.add_argument("--drop-rate", type=float, default=0.05, help="SWIM datagrams dropped on purpose in it")
    p.add_argument("--steady-warmup-s", type=float, default=10.0, help="pause after convergence before it [s]")
    p.add_argument("--detect-timeout-s", type=float, default=60.0, help="deadline for a crash to be seen [s]")
    p.add_argument("--fanout", type=int, default=defaults["fanout"].default)
    p.add_argument("--capacity", type=int, default=defaults["max_concurrency"].default, help="requests per node")
    p.add_argument(
        "--max-connections",
        type=int,
        default=_default(PeerPool, "max_connections"),
        help="PeerPool.max_connections of every node (default: the library's, %(default)s)",
    )
    p.add_argument(
        "--reward-max-hops",
        type=int,
        default=_default(FitnessBook, "max_hops"),
        help="FitnessBook.max_hops of every node (default: the library's, %(default)s)",
    )
    add_simulation_options(p, tokens=20, token_ms=5.0, first_token_ms=0.0)
    p.add_argument("--route-iterations", type=int, default=10_000)
    p.add_argument("--gossip-reps", type=int, default=3)
    p.add_argument("--gossip-timeout-s", type=float, default=30.0)
    p.add_argument("--converge-timeout-s", type=float, default=120.0)
    p.add_argument("--settle-s", type=float, default=2.0, help="pause after convergence before gossip [s]")
    p.add_argument("--join-timeout-s", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=32, help="questions in flight (default 32)")
    p.add_argument("--duration-s", type=float, default=10.0, help="fan-out measuring time [s] (default 10)")
    p.add_argument("--max-questions", type=int, default=100_000)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile (CPU time) the coordinator during the fan-out phase and each worker from node start to the "
        "end of it; writes DIR/coordinator-nN.prof and DIR/worker-nN-W.prof",
    )
    p.add_argument(
        "--learn-questions",
        type=int,
        default=1000,
        help="routing that learns: SIMULATED questions per routing policy (0: skip; default 1000)",
    )
    p.add_argument("--learn-concurrency", type=int, default=8, help="questions in flight while learning (default 8)")
    p.add_argument(
        "--offline-seeds", type=int, default=3, help="seeds of the route-level learning simulation (0: skip; default 3)"
    )
    p.add_argument(
        "--policies",
        default="dellm,adaptive",
        help=f"routing policies of the learning phase, comma-separated, from {', '.join(POLICIES)} "
        "(default dellm,adaptive)",
    )
    p.add_argument(
        "--offline-only",
        action="store_true",
        help="only the routing time and the route-level learning simulation: no nodes, no network",
    )
    p.add_argument("--learn-only", action="store_true", help="skip gossip, memory and fan-out: only the learning phase")
    p.add_argument("--learn-pause-s", type=float, default=11.0, help="pause before each policy [s] (default 11)")
    p.add_argument("--good-share", type=float, default=0.1, help="share of accurate simulated nodes (default 0.1)")
    p.add_argument("--good-accuracy", type=float, default=0.9, help="their hidden accuracy (default 0.9)")
    p.add_argument("--other-accuracy", type=float, default=0.4, help="everyone else's (default 0.4)")
    p.add_argument(
        "--accuracy-spread",
        action="store_true",
        help="SIMULATION: each node draws its own hidden accuracy from its class's range (--good-range, "
        "--other-range) instead of two levels, so Spearman(fitness, accuracy) can reach 1",
    )
    p.add_argument("--good-range", type=_range, default=(0.85, 0.95), help="accurate nodes' range (default 0.85,0.95)")
    p.add_argument("--other-range", type=_range, default=(0.3, 0.6), help="other nodes' range (default 0.3,0.6)")
    p.add_argument(
        "--sim-rtt-ms",
        type=lambda text: _range(text, 1e9),
        default=(0.2, 5.0),
        help="route-level replay: each peer's RTT estimate [ms] is drawn once, uniformly from lo,hi (default 0.2,5)",
    )
    p.add_argument(
        "--straggler-grace",
        type=float,
        default=_default(AskOptions, "straggler_grace"),
        help="AskOptions.straggler_grace of the learning coordinators and of the route-level replay "
        "(0: stragglers cancelled unrewarded)",
    )
    p.add_argument(
        "--straggler-evidence",
        type=int,
        default=_default(AskOptions, "straggler_evidence"),
        help="AskOptions.straggler_evidence (the grace applies to peers with fewer rewards)",
    )
    p.add_argument("--seed", type=int, default=17, help="seed of the hidden accuracies and answers (default 17)")
    p.add_argument("--wait-load", type=float, help="first wait until the 1-min load average is below this")
    p.add_argument("--wait-max-s", type=float, default=1200.0)
    args = p.parse_args(argv)
    args.sizes_list = parse_sizes(p, args.sizes)
    args.policies_list = [x.strip() for x in args.policies.split(",") if x.strip()]
    if not args.policies_list or set(args.policies_list) - set(POLICIES):
        p.error(f"--policies: choose from {', '.join(POLICIES)}")
    if args.membership_only and not args.fp_run_s:
        args.fp_run_s = 60.0
    if args.quick:
        args.fp_run_s, args.steady_warmup_s = min(args.fp_run_s, 5.0), min(args.steady_warmup_s, 1.0)
        args.route_iterations = min(args.route_iterations, 1000)
        args.gossip_reps, args.duration_s, args.concurrency = 1, 2.0, min(args.concurrency, 8)
        args.settle_s, args.converge_timeout_s = 0.5, min(args.converge_timeout_s, 30.0)
        args.learn_questions, args.learn_concurrency = min(args.learn_questions, 40), min(args.learn_concurrency, 4)
        args.learn_pause_s, args.offline_seeds = min(args.learn_pause_s, 0.5), min(args.offline_seeds, 1)
    return args


@dataclass
class _Settings:
    """What every worker needs to build its nodes."""

    gossip_interval_s: float
    fanout: int
    capacity: int
    tokens: int
    token_ms: float
    first_token_ms: float
    suspect_after_s: float
    dead_after_s: float
    worker_nice: int
    max_connections: int
    reward_max_hops: int
    membership: str
    probe_interval_s: float


async def amain(args: argparse.Namespace, results: dict[str, Any]) -> None:
    defaults = NodeConfig.model_fields
    settings = _Settings(
        gossip_interval_s=args.gossip_interval, fanout=args.fanout, capacity=args.capacity, tokens=args.tokens,
        token_ms=args.token_ms, first_token_ms=args.first_token_ms,
        suspect_after_s=defaults["suspect_after_s"].default, dead_after_s=defaults["dead_after_s"].default,
        worker_nice=args.worker_nice, max_connections=args.max_connections, reward_max_hops=args.reward_max_hops,
        membership=args.membership, probe_interval_s=args.probe_interval,
    ).__dict__  # fmt: skip
    for n in args.sizes_list:
        out: dict[str, Any] = {"n": n}
        results["runs"].append(out)
        try:
            await bench_size(n, args, settings, out)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"N={n}: {out['error']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DELLM_MEMBERSHIP"] = args.membership  # the coordinators (Swarm) speak what the nodes run
    logs = install_log_counter("main")
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "simulation": "SimulatedEngine (scripts/harness/simulated.py): no model, fixed-rate token stream",
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "sizes")},
        "runs": [],
    }
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.wait_load is not None:
        results["waited_for_load"] = True
        results["load_ok"] = wait_for_load(args.wait_load, args.wait_max_s)
    results["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    status = 0
    try:
        run(amain(args, results))
    except KeyboardInterrupt:
        progress("interrupted; partial results follow")
        status = 130
    results["coordinator_warnings"] = dict(logs.counts)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    if any("error" in r for r in results["runs"]):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
