"""Benchmark the network layer at scale, without models: N simulated nodes on 127.0.0.1.

Every node is the product's own stack -- ``NodeServer`` + ``PeerTable`` +
``PeerPool`` + ``FitnessBook`` + ``Membership``, wired as ``dellm_p2p.node``
wires them, with the library's defaults (gossip interval 0.5 s, fan-out 3,
pool of 64 connections, 32 requests at once) -- but its engine is a
**SIMULATION** (:class:`SimulatedEngine`, defined here and used nowhere
else): no model, it streams a fixed 20-word answer at a fixed token rate
after a fixed latency. Nodes run in a few worker processes (``spawn``), each
an event loop (uvloop through :func:`dellm_p2p.runtime.run`) hosting N/P
nodes; the benchmark itself (routing, coordinator) runs in the main process.

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
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import statistics
import sys
import time
import tracemalloc
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dellm_p2p.config import NodeConfig
from dellm_p2p.coordinator.errors import SwarmError
from dellm_p2p.coordinator.pipeline import AskOptions, with_anchor
from dellm_p2p.coordinator.reward import chunk_rewards
from dellm_p2p.coordinator.route import RouteWeights, eligible_peers, route
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation
from dellm_p2p.coordinator.vote import apply_anchor, is_decided, majority, vote
from dellm_p2p.engine import Delta, Engine, EngineStats, GenerationRequest, ModelInfo, PromptTooLongError
from dellm_p2p.identity import Identity
from dellm_p2p.membership import Membership, SwimMembership
from dellm_p2p.membership.fitness import FitnessBook, apply_reward
from dellm_p2p.membership.swim import SwimConfig
from dellm_p2p.peer_table import PeerRecord, PeerState, PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import MemberEntry, Members, RewardRecord, decode, encode
from dellm_p2p.runtime import run
from dellm_p2p.server import NodeServer
from dellm_p2p.swarm import Swarm

HOST = "127.0.0.1"
SIM_MODEL = "SIMULATED-no-model"
TARGET_ROUTE_P99_US = 1000.0  # at N = 500
TARGET_GOSSIP_S = 3.0  # at N = 500
TARGET_N = 500
POLL_S = 0.2  # membership status poll period
RNG = random.Random(20261122)


def progress(message: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The SIMULATION: an engine without a model. Lives only in this benchmark.


SIM_WRONG_ANSWERS = 20  # wrong answers a simulated node draws from, per question


def sim_right_answer(question: int) -> int:
    """The right answer to simulated question ``question`` (what accurate nodes say), in [1000, 9999)."""
    return 1000 + (question * 7919) % 8999


class SimulatedEngine(Engine):
    """SIMULATED engine (no model): streams ``tokens`` words, the first after
    ``first_token_s`` + ``token_interval_s``, then one every ``token_interval_s``.

    Token times are absolute (from the request's start), so event-loop jitter
    delays a token but does not slow the rate. The answer ends with
    ``Answer: 42`` so every node agrees and the vote is decided — unless
    :attr:`accuracy` is set (the learning phase): then each sample ends with
    the right answer to the prompt's ``question <q>`` (:func:`sim_right_answer`)
    with probability ``accuracy``, else with one of :data:`SIM_WRONG_ANSWERS`
    wrong ones drawn at random (two wrong samples agree 1 time in 20, right
    ones always). :attr:`peak` is the most requests it ran at once.
    """

    def __init__(self, tokens: int = 20, token_interval_s: float = 0.005, first_token_s: float = 0.0):
        words = "Six times seven is forty-two , so the value the question asks for is 42 and nothing else".split()
        body = (words * (1 + tokens // len(words)))[: max(0, tokens - 2)]
        self.words = [*body, "Answer:", "42"][-tokens:] if tokens >= 2 else ["42"][:tokens]
        self.token_interval_s = token_interval_s
        self.first_token_s = first_token_s
        self.max_model_len = 4096
        self.requests = 0
        self.tokens_out = 0
        self.running: set[str] = set()
        self.accuracy: float | None = None  # hidden accuracy (learning phase), None: always "42"
        self.rng = random.Random(0)
        self.peak = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(SIM_MODEL, self.max_model_len, "simulated")

    def _final_word(self, text: str) -> str:
        """The answer one sample commits to: right with probability :attr:`accuracy`, else a random wrong one."""
        if self.accuracy is None:
            return self.words[-1]
        match = re.search(r"question (\d+)", text)
        right = sim_right_answer(int(match.group(1)) if match else 0)
        if self.rng.random() < self.accuracy:
            return str(right)
        return str(right + 1 + self.rng.randrange(SIM_WRONG_ANSWERS))

    async def start(self) -> None:
        pass

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        text = request.prompt if request.prompt is not None else " ".join(m.content for m in request.messages or [])
        prompt_tokens = len(text.split())
        if prompt_tokens >= self.max_model_len:
            raise PromptTooLongError(prompt_tokens, self.max_model_len)
        loop = asyncio.get_running_loop()
        started = loop.time()
        words = self.words[: request.params.max_tokens]
        finals = [self._final_word(text) for _ in range(request.params.n)]
        self.requests += 1
        self.running.add(request_id)
        self.peak = max(self.peak, len(self.running))
        try:
            for position, word in enumerate(words):
                due = started + self.first_token_s + (position + 1) * self.token_interval_s
                await asyncio.sleep(max(0.0, due - loop.time()))
                last = position == len(words) - 1
                for index in range(request.params.n):
                    self.tokens_out += 1
                    yield Delta(
                        index=index,
                        text=(" " if position else "") + (finals[index] if position == len(self.words) - 1 else word),
                        tokens=1,
                        logprobs=[-0.1] if request.params.logprobs else None,
                        finish_reason=("stop" if len(words) == len(self.words) else "length") if last else None,
                        prompt_tokens=prompt_tokens,
                        queued_ms=0.0,
                    )
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.running.discard(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(requests_total=self.requests, tokens_generated=self.tokens_out, running=len(self.running))

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# Measurement hooks (subclasses; the library's behaviour is unchanged)

# Per worker process: the watched reward record id and, per node index, when
# (time.time()), how (push / anti-entropy / inject) and at which hop count it was applied.
_WATCH: dict[str, Any] = {"id": None, "hits": {}}
_HOW = {"_on_frame": "push", "on_members": "anti-entropy", "_exchange": "anti-entropy", "cmd_inject": "inject"}


class _TimedFitnessBook(FitnessBook):
    """FitnessBook that stamps the first application of the watched record."""

    def __init__(self, *args, index: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.index = index

    def apply(self, record: RewardRecord) -> bool:
        fresh = super().apply(record)
        if fresh and record.id == _WATCH["id"]:
            # Who called receive(): the server's frame handler (a `rewards` push) or membership (anti-entropy).
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_name in ("apply", "receive", "<listcomp>"):
                frame = frame.f_back
            caller = frame.f_code.co_name if frame is not None else "?"
            _WATCH["hits"][self.index] = (time.time(), _HOW.get(caller, caller), record.hops)
        return fresh


class _CountingPool(PeerPool):
    """PeerPool that counts the connections it opens (churn when a node gossips with more peers than it keeps)."""

    opened = 0  # per process, all nodes

    async def _connect(self, url: str):
        client = await super()._connect(url)
        _CountingPool.opened += 1
        return client


class _LogCounter(logging.Handler):
    """Counts WARNING+ records by message template; prints the first few ERRORs."""

    def __init__(self, tag: str):
        super().__init__(logging.WARNING)
        self.tag = tag
        self.counts: Counter[str] = Counter()
        self.printed = 0

    def emit(self, record: logging.LogRecord) -> None:
        template = str(record.msg).split("\n", 1)[0]  # asyncio puts the task's repr after a newline
        self.counts[f"{record.levelname} {record.name}: {template}"] += 1
        if record.levelno >= logging.ERROR and self.printed < 5:
            self.printed += 1
            cause = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] is not None else ""
            print(f"[{self.tag}] {record.levelname} {record.name}: {record.getMessage()}{cause}", file=sys.stderr)


def install_log_counter(tag: str) -> _LogCounter:
    handler = _LogCounter(tag)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return handler


# ---------------------------------------------------------------------------
# A node, assembled like dellm_p2p.node.Node does it (engine: SIMULATED)


class SimNode:
    def __init__(self, index: int, settings: dict[str, Any]):
        self.index = index
        self.identity = Identity.generate()
        self.node_id, self.name = self.identity.node_id, f"sim-{index:04d}"
        engine = SimulatedEngine(settings["tokens"], settings["token_ms"] / 1000, settings["first_token_ms"] / 1000)
        self.engine = engine
        self.server = NodeServer(
            engine, node_id=self.node_id, name=self.name, max_concurrency=settings["capacity"], identity=self.identity
        )
        self.settings = settings

    async def start(self, bootstrap: list[str]) -> str:
        s, server = self.settings, self.server
        url = await server.start(HOST, 0)
        self.table = PeerTable(self.node_id, url, suspect_after_s=s["suspect_after_s"], dead_after_s=s["dead_after_s"])
        pool = _CountingPool(
            node_id=self.node_id, name=self.name, url=url, max_connections=s["max_connections"], identity=self.identity
        )
        hello = server.hello
        pool.model, pool.capacity = hello.model, hello.capacity
        if s["membership"] == "swim":
            swim = SwimConfig(probe_interval_s=s["probe_interval_s"], probe_timeout_s=s["probe_interval_s"] / 2)
            self.membership = SwimMembership(
                node_id=self.node_id, name=self.name, url=url, model=hello.model, capacity=hello.capacity,
                table=self.table, pool=pool, bootstrap=bootstrap, in_flight=lambda: server.in_flight,
                identity=self.identity, config=swim, drop_rate=0.0,
            )  # fmt: skip
        else:
            self.membership = Membership(
                node_id=self.node_id, name=self.name, url=url, model=hello.model, capacity=hello.capacity,
                table=self.table, pool=pool, bootstrap=bootstrap, in_flight=lambda: server.in_flight,
                gossip_interval_s=s["gossip_interval_s"], fanout=s["fanout"], identity=self.identity,
            )  # fmt: skip
        self.fitness = _TimedFitnessBook(
            self.node_id, self.table, pool=pool, fanout=s["fanout"], max_hops=s["reward_max_hops"], index=self.index,
            identity=self.identity,
        )  # fmt: skip
        server.membership, server.fitness = self.membership, self.fitness
        self.membership.fitness = self.fitness
        await self.membership.start()
        return url

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.membership.close(goodbye_timeout_s=0.5)
            await self.fitness.close()
        await self.server.shutdown(0)

    async def crash(self) -> None:
        """Stop as a SIGKILL would: no goodbye, sockets closed, every task gone."""
        membership = self.membership
        if isinstance(membership, SwimMembership):
            if membership._transport is not None:
                membership._transport.abort()
            for task in list(membership._tasks):
                task.cancel()
        else:
            if membership._task is not None:
                membership._task.cancel()
        self.server.cancel_in_flight()
        if self.server._server is not None:
            self.server._server.close()  # also drops open websockets: peers see the connection reset
        with contextlib.suppress(Exception):
            await membership.pool.close()

    def bytes_total(self) -> int:
        """Payload bytes this node sent and received: its server, its pool, SWIM datagrams [bytes]."""
        m = self.membership
        return self.server.counters.bytes_sent + self.server.counters.bytes_received + m.bytes_sent + m.bytes_received


# ---------------------------------------------------------------------------
# Worker process: hosts a share of the nodes, answers commands over a pipe


def worker_entry(conn, worker_id: int, settings: dict[str, Any]) -> None:
    """Entry point of a worker process (``spawn``)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if settings["worker_nice"]:
        with contextlib.suppress(OSError):
            os.nice(settings["worker_nice"])
    logs = install_log_counter(f"worker {worker_id}")
    with contextlib.suppress(KeyboardInterrupt):
        run(_Worker(conn, worker_id, settings, logs).serve())


def _recording(apply_member, observer: int, steady: dict):
    """``PeerTable.apply_member`` that also records (observer, subject) pairs set suspect or dead."""

    def apply(node_id: str, state: PeerState, **fields: Any) -> PeerState | None:
        if state is PeerState.DEAD:
            steady["dead"].add((observer, node_id))
        elif state is PeerState.SUSPECT:
            steady["suspect"].add((observer, node_id))
        return apply_member(node_id, state, **fields)

    return apply


class _Worker:
    def __init__(self, conn, worker_id: int, settings: dict[str, Any], logs: _LogCounter):
        self.conn, self.worker_id, self.settings, self.logs = conn, worker_id, settings, logs
        self.nodes: dict[int, SimNode] = {}
        self.n_total = 0
        self.ok_since: dict[int, float | None] = {}
        self.lags: deque[float] = deque(maxlen=20_000)
        self.mark = (time.process_time(), time.monotonic(), 0, 0)
        self.profiler: Any = None

    async def serve(self) -> None:
        lag_task = asyncio.create_task(self._lag_monitor())
        try:
            while True:
                try:
                    message = await asyncio.to_thread(self.conn.recv)
                except (EOFError, OSError):  # the main process is gone
                    break
                command = message.pop("cmd")
                try:
                    reply = await getattr(self, f"cmd_{command}")(**message)
                except Exception as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                self.conn.send(reply)
                if command == "stop":
                    break
        finally:
            lag_task.cancel()

    async def _lag_monitor(self, period_s: float = 0.05) -> None:
        """Event-loop lag: how late a 50 ms sleep wakes up [ms]."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(period_s)
            self.lags.append((time.perf_counter() - started - period_s) * 1000)

    async def cmd_ping(self) -> dict:
        return {"pid": os.getpid()}

    async def cmd_start(self, indices: list[int], bootstrap: list[str], n_total: int) -> dict:
        self.n_total = n_total
        urls = {}
        for i in indices:
            node = SimNode(i, self.settings)
            urls[i] = await node.start(bootstrap)
            self.nodes[i] = node
            self.ok_since[i] = None
        return {"urls": urls, "ids": {i: self.nodes[i].node_id for i in indices}, "t_started": time.time()}

    async def cmd_set_accuracy(self, accuracy: dict[int, float], seed: int) -> dict:
        """SIMULATION: give every node of this worker its hidden accuracy (and a seeded draw); reset peaks."""
        for i, node in self.nodes.items():
            node.engine.accuracy = accuracy.get(i)
            node.engine.rng = random.Random(seed * 100_003 + i)
            node.engine.peak = 0
        return {}

    async def cmd_peaks(self) -> dict:
        """Per node index: the most requests its engine ran at once since :meth:`cmd_set_accuracy`."""
        return {"peaks": {i: node.engine.peak for i, node in self.nodes.items()}}

    async def cmd_status(self) -> dict:
        """Membership: per node, are all N-1 others in its table and alive?"""
        want = self.n_total - 1
        counts = Counter()
        for i, node in self.nodes.items():
            records = node.table.records()
            alive = sum(1 for p in records if p.state is PeerState.ALIVE)
            suspect = sum(1 for p in records if p.state is PeerState.SUSPECT)
            counts["alive"] += alive
            counts["suspect"] += suspect
            counts["dead"] += len(records) - alive - suspect
            counts["missing"] += max(0, want - len(node.table))
            now = time.time()
            if alive >= want:
                self.ok_since[i] = self.ok_since[i] or now
            else:
                self.ok_since[i] = None
        done = [t for t in self.ok_since.values() if t is not None]
        return {
            "complete": len(done),
            "nodes": len(self.nodes),
            "ok_since_max": max(done) if len(done) == len(self.nodes) else None,
            **counts,
        }

    async def cmd_steady_start(self, drop_rate: float) -> dict:
        """Start a steady run: every node drops ``drop_rate`` of its SWIM datagrams; watch for false positives."""
        for node in self.nodes.values():
            if isinstance(node.membership, SwimMembership):
                node.membership.drop_rate = drop_rate
        self.steady = {
            "bytes0": sum(n.bytes_total() for n in self.nodes.values()),
            "cpu0": time.process_time(),
            "wall0": time.monotonic(),
            "dead": set(),
            "suspect": set(),
        }
        self.steady_task = asyncio.create_task(self._watch_states(self.steady))
        return {}

    async def _watch_states(self, steady: dict, period_s: float = 0.25) -> None:
        """Record every (observer, subject) pair seen suspect or dead during the steady run.

        SWIM nodes report each state change through ``PeerTable.apply_member``: hooked, every change is
        seen, however brief, at no cost. Heartbeat gossip changes states in ``sweep``: polled. (Polling
        every table, N rows each, every 0.25 s was itself ~50k row checks per worker per pass at N = 500,
        enough loop lag to cause the suspicions it was counting.)
        """
        polled = []
        for i, node in self.nodes.items():
            if isinstance(node.membership, SwimMembership):
                node.table.apply_member = _recording(node.table.apply_member, i, steady)
            else:
                polled.append((i, node))
        while polled:
            for i, node in polled:
                for p in node.table.records():
                    if p.state is PeerState.DEAD:
                        steady["dead"].add((i, p.node_id))
                    elif p.state is PeerState.SUSPECT:
                        steady["suspect"].add((i, p.node_id))
            await asyncio.sleep(period_s)

    async def cmd_steady_stop(self) -> dict:
        self.steady_task.cancel()
        for node in self.nodes.values():
            node.table.__dict__.pop("apply_member", None)  # unhook (see _watch_states)
        st = self.steady
        for node in self.nodes.values():
            if isinstance(node.membership, SwimMembership):
                node.membership.drop_rate = 0.0
        return {
            "bytes": sum(n.bytes_total() for n in self.nodes.values()) - st["bytes0"],
            "cpu_s": time.process_time() - st["cpu0"],
            "wall_s": time.monotonic() - st["wall0"],
            "nodes": len(self.nodes),
            "dead_pairs": [list(x) for x in st["dead"]],
            "suspect_pairs": len(st["suspect"]),
            "dropped": sum(getattr(n.membership, "dropped_on_purpose", 0) for n in self.nodes.values()),
        }

    async def cmd_crash(self, index: int) -> dict:
        node = self.nodes.pop(index)
        self.ok_since.pop(index, None)
        await node.crash()
        return {"t_crash": time.time()}

    async def cmd_dead_status(self, node_id: str) -> dict:
        """How many of our nodes list ``node_id`` dead (and so out of routing), and since when (first seen)."""
        now = time.time()
        seen = self.__dict__.setdefault("dead_seen", {})
        for i, node in self.nodes.items():
            p = node.table.get(node_id)
            # Dead is out of routing by definition (PeerTable.alive: alive or suspect); checking alive()
            # here walked N rows per node per poll, loop lag during the very detection being timed.
            if p is not None and p.state is PeerState.DEAD:
                seen.setdefault((node_id, i), now)
        marks = [t for (nid, _), t in seen.items() if nid == node_id]
        return {"marked": len(marks), "nodes": len(self.nodes), "first": min(marks, default=None),
                "last": max(marks, default=None)}  # fmt: skip

    async def cmd_watch(self, record_id: str) -> dict:
        _WATCH["id"], _WATCH["hits"] = record_id, {}
        return {}

    async def cmd_inject(self, index: int, record: dict) -> dict:
        """Node ``index`` issues the record (signed with its identity, rewarding a peer it knows) and gossips it."""
        node = self.nodes[index]
        rewarded = next((p.node_id for p in node.table.records()), node.node_id)
        reward = node.identity.sign_reward(
            RewardRecord(issuer=node.node_id, seq=node.identity.next_seq(), node_id=rewarded, ts=time.time(), **record)
        )
        states = Counter(p.state.value for p in node.table.records())
        t_inject = time.time()
        node.fitness.receive([reward])
        return {"t_inject": t_inject, "injector_table": dict(states)}

    async def cmd_gossip_status(self) -> dict:
        return {"hits": dict(_WATCH["hits"])}

    async def cmd_stats(self) -> dict:
        """Since the last call: CPU [s] and wall [s] of this process, event-loop lag, connections opened."""
        cpu0, wall0, opened0, rounds0 = self.mark
        cpu, wall = time.process_time(), time.monotonic()
        rounds = sum(getattr(n.membership, "heartbeat", 0) for n in self.nodes.values())  # +1 per gossip round
        self.mark = (cpu, wall, _CountingPool.opened, rounds)
        lags = sorted(self.lags)
        self.lags.clear()
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = None
        return {
            "cpu_s": cpu - cpu0,
            "wall_s": wall - wall0,
            "lag_ms_p50": pct(lags, 50),
            "lag_ms_p99": pct(lags, 99),
            "lag_ms_max": lags[-1] if lags else None,
            "connects": _CountingPool.opened - opened0,
            "rounds": rounds - rounds0,
            "nodes": len(self.nodes),
            "pooled": sum(len(n.membership.pool) for n in self.nodes.values()),
            "fds": fds,
            "rss_mib": _rss_mib(),
            "warnings": dict(self.logs.counts),
        }

    async def cmd_profile(self, path: str | None) -> dict:
        """Start cProfile (CPU time), or stop it and dump the stats to ``path``."""
        import cProfile

        if path is None:
            self.profiler = cProfile.Profile(time.process_time)
            self.profiler.enable()
        else:
            self.profiler.disable()
            self.profiler.dump_stats(path)
        return {}

    async def cmd_stop(self) -> dict:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await asyncio.gather(*(n.close() for n in self.nodes.values()), return_exceptions=True)
        return {}


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# ---------------------------------------------------------------------------
# Main process side


class WorkerHandle:
    def __init__(self, ctx, worker_id: int, indices: list[int], settings: dict[str, Any]):
        self.worker_id, self.indices = worker_id, indices
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_entry, args=(child, worker_id, settings), daemon=True)
        self.proc.start()
        child.close()
        self.lock = asyncio.Lock()

    async def call(self, cmd: str, timeout_s: float = 120.0, **args) -> dict:
        async with self.lock:
            self.conn.send({"cmd": cmd, **args})
            async with asyncio.timeout(timeout_s):
                if not await asyncio.to_thread(self.conn.poll, timeout_s):
                    raise TimeoutError(f"worker {self.worker_id} did not answer {cmd} within {timeout_s:g} s")
                reply = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"worker {self.worker_id} failed {cmd}: {reply['error']}")
        return reply

    def reap(self, timeout_s: float = 20.0) -> None:
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
            self.proc.join(5)
        self.conn.close()


async def call_all(workers: list[WorkerHandle], cmd: str, timeout_s: float = 120.0, **args) -> list[dict]:
    return await asyncio.gather(*(w.call(cmd, timeout_s, **args) for w in workers))


def stats_summary(stats: list[dict]) -> dict[str, Any]:
    """Workers' stats over one phase: CPU in cores, worst loop lag, connections opened."""
    wall = max(s["wall_s"] for s in stats) or 1e-9
    lags99 = [s["lag_ms_p99"] for s in stats if s["lag_ms_p99"] is not None]
    lagsmax = [s["lag_ms_max"] for s in stats if s["lag_ms_max"] is not None]
    nodes, rounds, cpu = sum(s["nodes"] for s in stats), sum(s["rounds"] for s in stats), sum(s["cpu_s"] for s in stats)
    return {
        "wall_s": round(wall, 2),
        "workers_cpu_cores": round(cpu / wall, 2),
        "gossip_rounds_per_node_s": round(rounds / max(1, nodes) / wall, 2),
        "cpu_ms_per_node_round": round(cpu * 1000 / rounds, 2) if rounds else None,
        "loop_lag_ms_p99_worst": round(max(lags99), 1) if lags99 else None,
        "loop_lag_ms_max": round(max(lagsmax), 1) if lagsmax else None,
        "connects_per_s": round(sum(s["connects"] for s in stats) / wall, 1),
        "pooled_connections": sum(s["pooled"] for s in stats),
        "fds": sum(s["fds"] or 0 for s in stats),
        "rss_mib_total": round(sum(s["rss_mib"] or 0 for s in stats), 1),
    }


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
# Report


def fmt(value: Any, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def verdict(value: float | None, limit: float) -> str:
    return "[red]MISS[/red]" if value is None or value >= limit else "[green]PASS[/green]"


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = results["settings"]
    answer_ms = s["first_token_ms"] + s["tokens"] * s["token_ms"]
    table = Table(
        title="bench_scale: dellm network layer at scale — nodes run a SIMULATED engine (no model)",
        caption=(
            f"SIMULATION: every node's engine streams {s['tokens']} tokens, one per {s['token_ms']:g} ms after "
            f"{s['first_token_ms']:g} ms ({answer_ms:g} ms an answer). Real NodeServer/Membership/FitnessBook/"
            f"Swarm code over websockets on {HOST}; gossip every {s['gossip_interval']:g} s, fan-out "
            f"{s['fanout']}, pool {s['max_connections']} connections, reward max hops {s['reward_max_hops']}. "
            f"Targets at N = {TARGET_N}: routing p99 < {TARGET_ROUTE_P99_US / 1000:g} ms, gossip to all "
            f"< {TARGET_GOSSIP_S:g} s."
        ),
    )
    for header in (
        "N",
        "worker procs",
        "membership converged [s]",
        "route p50 [µs]",
        "route p99 [µs]",
        "gossip to all N [s] median (max)",
        "coordinator bytes / known peer",
        f"fan-out q/s (k=3, {s['concurrency']} in flight)",
    ):
        table.add_column(header, justify="right")
    for r in results["runs"]:
        routing, mem, gossip, thr = (r.get(k) or {} for k in ("routing", "coordinator_state", "gossip", "throughput"))
        conv = r.get("membership") or {}
        if conv.get("converged"):
            conv_text = fmt(conv["converged_s"])
        elif conv:
            conv_text = f"no ({conv.get('complete_nodes', 0)}/{r['n']} in {s['converge_timeout_s']:g} s)"
        else:
            conv_text = "-"
        p99 = routing.get("route_us_p99")
        if gossip:
            reached = min(rep["reached"] for rep in gossip["reps"])
            g_text = (
                f"{fmt(gossip['all_s_median'])} ({fmt(gossip['all_s_max'])})"
                if gossip["all_s_max"] is not None
                else f"not all: {reached}/{r['n']} in {s['gossip_timeout_s']:g} s"
            )
            g_text += " " + verdict(gossip["all_s_max"], TARGET_GOSSIP_S)
        else:
            g_text = "-"
        thr_text = (
            f"{thr['questions_per_s']:.1f} (ideal {thr['ideal_questions_per_s']:.0f})"
            + (f", {sum(thr['failures'].values())} failed" if thr.get("failures") else "")
            if thr
            else "-"
        )
        table.add_row(
            str(r["n"]),
            str(r.get("procs", "-")),
            conv_text,
            fmt(routing.get("route_us_p50"), ".1f"),
            f"{fmt(p99, '.1f')} {verdict(p99, TARGET_ROUTE_P99_US)}" if p99 is not None else "-",
            g_text,
            f"{mem['bytes_per_peer']:,}" if mem else "-",
            thr_text + (f" ERROR: {r['error']}" if r.get("error") else ""),
        )
    console = Console(width=max(160, Console().width))
    console.print(table)
    targets = next((r for r in results["runs"] if r["n"] == TARGET_N), None)
    if targets is not None:
        p99 = (targets.get("routing") or {}).get("route_us_p99")
        g = (targets.get("gossip") or {}).get("all_s_max")
        console.print(
            f"targets at N = {TARGET_N}: routing p99 {fmt(p99, '.1f')} µs {verdict(p99, TARGET_ROUTE_P99_US)}; "
            f"gossip to all {fmt(g)} s (worst of {s['gossip_reps']}) {verdict(g, TARGET_GOSSIP_S)}"
        )
    membership_report(results, console)
    for line in detail_lines(results):
        console.print(line, soft_wrap=True, highlight=False)
    learning_report(results, console)


# Before issue 14 (heartbeat gossip, docs/results.md, measured 2026-11-29): convergence [s] per N;
# a silent peer was suspect after ~50 s and dead after ~130 s at N = 500 (timeouts stretched with log N).
BEFORE_CONVERGED_S = {10: 0.62, 100: 6.43, 500: 31.5}
TARGET_MEMBERSHIP_S = 10.0  # issue 14, N = 500: convergence and failure detected everywhere


def membership_report(results: dict[str, Any], console: Any) -> None:
    """Issue 14's figures per N: convergence, crash detection, false positives, bytes/s and CPU per node."""
    from rich.table import Table

    runs = [r for r in results["runs"] if r.get("steady") or r.get("detection")]
    if not runs:
        return
    s = results["settings"]
    table = Table(
        title=f"membership ({s['membership']}, probe interval {s['probe_interval']:g} s) — issue 14",
        caption=(
            f"steady run {s['fp_run_s']:g} s with {s['drop_rate']:.0%} of SWIM datagrams dropped on purpose; "
            "bytes = payload sent + received by a node over all its websockets and datagrams; "
            "CPU = worker CPU / nodes. 'before' = heartbeat gossip (docs/results.md)."
        ),
    )
    for header in (
        "N",
        "converged [s] from first start (before)",
        "converged [s] after last join",
        "crash -> first dead [s]",
        "crash -> dead everywhere [s]",
        "false positives (dead pairs)",
        "suspect pairs",
        "bytes/s per node",
        "CPU per node [% core]",
    ):
        table.add_column(header, justify="right")
    for r in runs:
        conv, st, det = r.get("membership") or {}, r.get("steady") or {}, r.get("detection") or {}
        before = BEFORE_CONVERGED_S.get(r["n"])
        table.add_row(
            str(r["n"]),
            f"{fmt(conv.get('converged_s'))} ({fmt(before)})",
            fmt(conv.get("after_last_join_s"))
            + (f" {verdict(conv.get('after_last_join_s'), TARGET_MEMBERSHIP_S)}" if r["n"] >= 500 else ""),
            fmt(det.get("first_dead_s")),
            fmt(det.get("all_dead_s"))
            + (f" {verdict(det.get('all_dead_s'), TARGET_MEMBERSHIP_S)}" if r["n"] >= 500 else ""),
            str(st.get("false_positive_pairs", "-")),
            str(st.get("suspect_pairs", "-")),
            fmt(st.get("bytes_per_s_per_node"), ",.0f"),
            fmt(st.get("cpu_pct_per_node"), ".3f"),
        )
    console.print(table)
    rates = {r["n"]: (r.get("steady") or {}).get("bytes_per_s_per_node") for r in runs}
    if rates.get(50) and rates.get(500):
        ratio = rates[500] / rates[50]
        console.print(f"traffic per node N = 500 / N = 50: {ratio:.2f}x (target < 2x) {verdict(ratio, 2.0)}")


def _accuracy_text(s: dict[str, Any]) -> str:
    """The SIMULATION's hidden accuracies in words, from the settings."""
    if s.get("accuracy_spread"):
        (glo, ghi), (olo, ohi) = s["good_range"], s["other_range"]
        return (
            f"{s['good_share']:.0%} of the nodes right with a hidden accuracy drawn from [{glo:g}, {ghi:g}], "
            f"the rest from [{olo:g}, {ohi:g}]"
        )
    return (
        f"{s['good_share']:.0%} of the nodes answer right {s['good_accuracy']:.0%} of the time, "
        f"the rest {s['other_accuracy']:.0%}"
    )


def offline_report(results: dict[str, Any], console: Any) -> None:
    """The route-level learning simulation (no network): both policies per N, mean over seeds."""
    from rich.table import Table

    columns = [(r["n"], policy, f) for r in results["runs"] for policy, f in (r.get("learning_offline") or {}).items()]
    if not columns:
        return
    s = results["settings"]
    table = Table(
        title="bench_scale: routing that learns — route-level SIMULATION (no network, no clock)",
        caption=(
            f"route() -> SIMULATED answers ({_accuracy_text(s)}) in random order -> the pipeline's early stop, "
            f"default vote with the greedy anchor, rewards (stragglers: "
            f"{'rewarded' if s.get('straggler_grace', 1) > 0 else 'cancelled'}) -> fitness, "
            f"{s['learn_questions']} questions in rounds of {s['learn_concurrency']}; mean of "
            f"{s['offline_seeds']} seeds (the accurate share: also the worst seed)."
        ),
    )
    table.add_column("figure")
    for n, policy, _ in columns:
        table.add_column(f"N = {n}\n{POLICY_TEXT.get(policy, policy)}", justify="right")

    def row(label: str, render) -> None:
        table.add_row(label, *(render(f["mean"], f) for _, _, f in columns))

    row("distinct peers used / serving", lambda m, f: f"{m['distinct_peers_used']:.1f} / {m['serving_peers']:.0f}")
    row(
        "busiest peer's share of requests (fair share)",
        lambda m, f: f"{m['busiest_peer_share']:.1%} ({m['fair_share']:.1%})",
    )
    row(
        "Spearman(fitness, hidden accuracy) (ceiling)",
        lambda m, f: f"{m['spearman_fitness_accuracy']:.2f} ({m['spearman_ceiling']:.2f})",
    )
    row(
        "Spearman(posterior mean of agreement, hidden accuracy)",
        lambda m, f: fmt(m.get("spearman_posterior_accuracy")),
    )
    row("Spearman an oracle reaches with the same answers per peer", lambda m, f: fmt(m.get("spearman_bound")))
    row("P(accurate peer's fitness > another's) (AUC)", lambda m, f: f"{m['auc_good_over_rest']:.2f}")
    row("rewards per peer (median)", lambda m, f: fmt(m.get("rewards_per_peer_median"), ".0f"))
    row(
        "accurate peers' share, last W questions (worst seed)",
        lambda m, f: f"{m['good_share_last']:.1%} ({f['min_good_share_last']:.1%})",
    )
    row(
        "swarm accuracy: first W → last W questions",
        lambda m, f: f"{m['accuracy_first']:.1%} → {m['accuracy_last']:.1%}",
    )
    row("most requests in flight at one peer", lambda m, f: f"{m['peak_in_flight']:.0f}")
    console.print(table)


def learning_report(results: dict[str, Any], console: Any) -> None:
    """The routing-that-learns phase: the old rule and the new one side by side, per N (issue 17)."""
    from rich.table import Table

    offline_report(results, console)
    columns = [(r["n"], policy, f) for r in results["runs"] for policy, f in (r.get("learning") or {}).items()]
    if not columns:
        return
    s = results["settings"]
    answer_ms = s["first_token_ms"] + s["tokens"] * s["token_ms"]
    table = Table(
        title="bench_scale: routing that learns who is good — SIMULATED nodes with a hidden accuracy",
        caption=(
            f"SIMULATION: {_accuracy_text(s)}; right answers agree, wrong ones are drawn from "
            f"{SIM_WRONG_ANSWERS} per question; every answer takes {answer_ms:g} ms. A fresh coordinator per "
            "policy (neutral fitness, no evidence) asks the questions with the product's default vote, k = 3."
        ),
    )
    table.add_column("figure")
    for n, policy, _ in columns:
        table.add_column(f"N = {n}\n{POLICY_TEXT.get(policy, policy)}", justify="right")

    def row(label: str, render) -> None:
        table.add_row(label, *(render(f) for _, _, f in columns))

    row(
        "questions (in flight; load ÷ capacity)",
        lambda f: (
            f"{f['questions']} ({f['concurrency']}; {f['load_of_capacity']:.1%})"
            + (f", {f['errors']} failed" if f["errors"] else "")
        ),
    )
    row("distinct peers used / serving", lambda f: f"{f['distinct_peers_used']} / {f['serving_peers']}")
    row(
        "busiest peer's share of requests (fair share)",
        lambda f: f"{fmt(f['busiest_peer_share'], '.1%')} ({f['fair_share']:.1%})",
    )
    row(
        f"latency p50 / p99, ms (p99 ÷ {answer_ms:g} ms)",
        lambda f: (
            f"{fmt(f['latency_ms_p50'], '.0f')} / {fmt(f['latency_ms_p99'], '.0f')} "
            f"({fmt(f['latency_p99_over_answer'], '.1f')}×)"
        ),
    )
    row(
        "Spearman(fitness, hidden accuracy) (ceiling with 2 levels)",
        lambda f: f"{fmt(f['spearman_fitness_accuracy'])} ({fmt(f['spearman_ceiling'])})",
    )
    row("Spearman(posterior mean of agreement, hidden accuracy)", lambda f: fmt(f.get("spearman_posterior_accuracy")))
    row("Spearman an oracle reaches with the same answers per peer", lambda f: fmt(f.get("spearman_bound")))
    row("P(accurate peer's fitness > another's) (AUC)", lambda f: fmt(f["auc_good_over_rest"]))
    row(
        "mean fitness: accurate / rest",
        lambda f: f"{fmt(f['fitness_good_mean'], '.3f')} / {fmt(f['fitness_rest_mean'], '.3f')}",
    )
    row(
        "accurate peers' share of requests, last W questions",
        lambda f: f"{fmt(f['good_share_last'], '.1%')} ({f['good_peers']} peers, W = {f['window']})",
    )
    row(
        "swarm accuracy: first W → last W questions",
        lambda f: f"{fmt(f['accuracy_first'], '.1%')} → {fmt(f['accuracy_last'], '.1%')}",
    )
    row(
        "most requests one node ran at once (capacity)",
        lambda f: (
            f"{f['peak_in_flight']} ({f['capacity']})"
            + (f", {f['peer_failures'].get('overloaded', 0)} refused" if f["peer_failures"].get("overloaded") else "")
        ),
    )
    row("questions/s", lambda f: fmt(f["questions_per_s"], ".1f"))

    def diag(key: str, spec: str) -> Callable[[dict[str, Any]], str]:
        def render(f: dict[str, Any]) -> str:
            d = f.get("diagnosis") or {}
            return f"{fmt((d.get('accurate') or {}).get(key), spec)} / {fmt((d.get('rest') or {}).get(key), spec)}"

        return render

    row("diagnosis, accurate / rest: requests per peer", diag("requests_per_peer", ".0f"))
    row("  share of the greedy first slots", diag("first_slot", ".1%"))
    row("  rewards per request (stragglers cut, no consensus)", diag("rewarded_per_request", ".2f"))
    row("  share of rewards for agreeing", diag("agree_rate", ".1%"))
    row("  RTT estimate, ms", diag("rtt_ms_mean", ".1f"))
    row(
        "coordinator: loop lag p50 / p99 ms, CPU, connects/s",
        lambda f: (
            f"{fmt(c.get('loop_lag_ms_p50'), '.1f')} / {fmt(c.get('loop_lag_ms_p99'), '.0f')}, "
            f"{fmt(c.get('cpu_cores'), '.2f')} cores, {fmt(c.get('connects_per_s'), '.1f')}"
            if (c := f.get("coordinator"))
            else "-"
        ),
    )
    console.print(table)
    for n, policy, f in columns:
        marks = ", ".join(f"{name} {'PASS' if ok else 'MISS'}" for name, ok in f["targets"].items())
        console.print(f"N={n} {policy}: {marks}", soft_wrap=True, highlight=False)


def detail_lines(results: dict[str, Any]) -> list[str]:
    """What explains the table: CPU, event-loop lag, gossip rounds, connection churn, per N."""

    def load(w: dict[str, Any]) -> str:
        return (
            f"workers {w['workers_cpu_cores']} cores, {w['gossip_rounds_per_node_s']} gossip rounds/s per node, "
            f"{fmt(w['cpu_ms_per_node_round'], '.1f')} ms CPU per node-round, loop lag p99 "
            f"{fmt(w['loop_lag_ms_p99_worst'], '.0f')} ms, {w['connects_per_s']:.0f} connects/s"
        )

    lines = []
    for r in results["runs"]:
        n = r["n"]
        conv, gossip, thr = r.get("membership") or {}, r.get("gossip") or {}, r.get("throughput") or {}
        routing = r.get("routing") or {}
        if "route_dellm_us_p50" in routing:
            lines.append(
                f"N={n} routing: default rule p50 {routing['route_us_p50']:.0f} µs, p99 "
                f"{routing['route_us_p99']:.0f} µs; "
                f"the DELLM rule alone (before issue 17) p50 {routing['route_dellm_us_p50']:.0f} µs, p99 "
                f"{routing['route_dellm_us_p99']:.0f} µs, same process and moment"
            )
        if conv:
            links = conv["links"]
            lines.append(
                f"N={n} membership: {load(conv['workers'])}; at the end links alive {links['alive']}, suspect "
                f"{links['suspect']}, dead {links['dead']}, missing {links['missing']} (of {n * (n - 1)})"
            )
        if gossip:
            reps = "; ".join(
                f"{rep['by_push']} by push (last at {fmt(rep['last_push_s'], '.2f')} s, max hops {rep['max_hops']})"
                f" + {rep['by_anti_entropy']} by anti-entropy, p50 {fmt(rep['p50_s'], '.2f')} s"
                for rep in gossip["reps"]
            )
            lines.append(f"N={n} gossip: {reps}; {load(gossip['workers'])}")
        live, state = r.get("coordinator_live_memory"), r.get("coordinator_state")
        if live and state:
            lines.append(
                f"N={n} coordinator memory: {state['bytes_per_peer']:,} B/peer in table+pool+fitness+digest "
                f"(one members frame: {state['members_frame_bytes']:,} B); live Swarm after joining: "
                f"{live['traced_bytes']:,} B for {live['known_peers']} known peers ({live['bytes_per_peer']:,} B/peer, "
                f"{live['pooled_connections']} pooled connections, joined in {live['join_s']} s)"
            )
        if thr:
            reasons = ", ".join(f"{k} {v}" for k, v in thr["peer_failure_reasons"].items()) or "none"
            drops = ", ".join(f"{k} {v}" for k, v in thr["coordinator_busy_drops"].items()) or "none"
            lines.append(
                f"N={n} fan-out: {thr['completed']} questions, latency p50 {fmt(thr['latency_ms_p50'], '.0f')} ms "
                f"p99 {fmt(thr['latency_ms_p99'], '.0f')} ms; {thr['distinct_peers_used']} peers used (top 3 "
                f"took {thr['top3_peer_share']:.0%} of requests); peer failures re-routed: {reasons}; coordinator "
                f"{thr['coordinator_cpu_ms_per_question']} ms CPU/question ({thr['coordinator_cpu_cores']} cores), "
                f"busy connections it dropped: {drops}; {load(thr['workers'])}"
            )
    waited = results.get("waited_for_load")
    lines.append(
        f"machine: {results['machine']['nproc']} cores; 1/5/15-min load average at start {results['load_at_start']}"
        + ("" if not waited else " (after waiting for it)" if results.get("load_ok") else " (waited; still high)")
    )
    return lines


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
    p.add_argument("--tokens", type=int, default=20, help="simulated answer length [tokens] (default 20)")
    p.add_argument("--token-ms", type=float, default=5.0, help="simulated time per token [ms] (default 5)")
    p.add_argument("--first-token-ms", type=float, default=0.0, help="simulated latency before tokens [ms]")
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
    try:
        args.sizes_list = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sizes: not a comma-separated list of integers: {args.sizes!r}")
    if not args.sizes_list or min(args.sizes_list) < 2:
        p.error("--sizes: every N must be at least 2")
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
        "simulation": f"SimulatedEngine in {Path(__file__).name}: no model, fixed-rate token stream",
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
