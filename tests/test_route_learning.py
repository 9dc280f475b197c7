"""Routing learns who is good: three node processes (SIMULATED engines), one slow and wrong; its share falls.

Each node runs in its own process (``tests/sim_node.py``); a Swarm asks
sequential questions at redundancy 2, so routing chooses two of the three
each time. Nodes a and b answer 42; node c, a little slower, commits to no
answer (with two voters, a wrong number would tie with the right one and
the tie-break, not routing, would decide who is rewarded). Rewards (the
vote's consensus) lower c's fitness and its Beta posterior of agreement, so
Thompson sampling draws it less and less (issue 17).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from dellm_p2p.coordinator import route as route_module
from dellm_p2p.coordinator.pipeline import AskOptions
from dellm_p2p.coordinator.route import RouteWeights
from dellm_p2p.swarm import Swarm

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = 40


def start_node(name: str, reply: str, token_ms: float, bootstrap: str | None = None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "tests.sim_node", "--name", name, "--reply", reply, "--token-ms", str(token_ms)]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("ws://127.0.0.1:"), f"node {name} did not start (exit {proc.poll()})"
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()  # the node leaves cleanly when its stdin closes
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by its handle
        proc.wait()


async def test_a_wrong_slow_node_gets_less_and_less_work(monkeypatch):
    monkeypatch.setattr(route_module, "_RNG", random.Random(17))  # the draws; arrival order still varies
    procs = []
    try:
        a, url_a = start_node("a", "Six times seven is 42 . Answer: 42", 2.0)
        procs.append(a)
        b, _ = start_node("b", "Six times seven is 42 . Answer: 42", 2.0, url_a)
        procs.append(b)
        c, _ = start_node("c", "I am not sure what to answer .", 4.0, url_a)
        procs.append(c)
        # On a loaded test machine a ping measures the node's event-loop lag (seconds, at random); the
        # 10 s RTT scale keeps that noise out, so this test is about what the votes teach routing.
        weights = RouteWeights(rtt_scale_ms=10_000.0)
        options = AskOptions(
            redundancy=2, decompose="none", synthesize=False, max_tokens=16, timeout_s=20, weights=weights
        )
        async with Swarm(peers=[url_a], mdns=False, options=options, discover_timeout_s=20) as swarm:
            for _ in range(100):  # all three known, RTT measured
                if len([p for p in swarm.table.alive() if p.rtt_ms is not None]) == 3:
                    break
                await asyncio.sleep(0.1)
            names = {p.node_id: p.name for p in swarm.table.alive()}
            assert sorted(names.values()) == ["a", "b", "c"]
            chosen: list[list[str]] = []
            wrong_answers = 0
            for q in range(QUESTIONS):
                answer = await swarm.ask(f"What is 6 times 7? (question {q})")
                chunk = answer.chunks[0]
                chosen.append([names[x.peer_id] for x in chunk.assignments])
                wrong_answers += chunk.vote.answer != "42"
            records = {names[p.node_id]: p for p in swarm.table.alive()}
    finally:
        for proc in procs:
            stop(proc)
    early = Counter(name for names_ in chosen[:15] for name in names_)
    late = Counter(name for names_ in chosen[-15:] for name in names_)
    assert early["c"] >= 1 and late["c"] <= early["c"], (early, late)  # tried, then no more than at first
    assert late["c"] <= 3, f"c still got {late['c']} of the last 30 requests"
    assert all(first != "c" for first, *_ in chosen[-15:]), "the first (greedy) slot never goes to c late on"
    c, a, b = records["c"], records["a"], records["b"]
    assert c.fitness < 0.5 < min(a.fitness, b.fitness), (c, a, b)
    assert c.rewards >= 1 and c.agreed == 0 and a.agreed == a.rewards and b.agreed == b.rewards, (c, a, b)
    assert wrong_answers == 0
