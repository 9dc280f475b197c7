"""Load benchmark of the HTTP API: many concurrent clients asking ``model: dellm`` (issue 25).

Every client is the real ``openai`` async client (``AsyncOpenAI``, no
retries) asking ``chat.completions.create(model="dellm", ...)`` with its own
``user`` (the admission queue is fair across those), one question after
another. Two kinds of network:

* ``--url URL``: a running API, e.g. node 1 of ``dellm up --nodes 3
  --http-port 8000 --detach``. Questions are the first ``--questions``
  capitals of ``/work/shared/data/capitals.jsonl``, scored as
  ``scripts/eval.py`` scores them; first ``--quiet`` of them one at a time
  (the quiet baseline: accuracy and the k used), then every ``--clients``
  level once through the same questions.
* ``--sim-nodes 1,10,100``: N **SIMULATED** nodes (``scripts/harness``
  engine: no model, a fixed answer after ``--first-token-ms`` plus
  ``--tokens`` × ``--token-ms``; ``--capacity`` answers at once per node),
  hosted by bench_scale's worker processes (``scripts/scale``), and a
  coordinator in this process: a :class:`~dellm_p2p.swarm.Swarm` joined to
  them behind the HTTP API (``Gateway.for_swarm``). Clients ask for
  ``--duration-s``; questions per minute count the answers within it.
  ``--profile FILE`` writes a cProfile of this process (clients, API,
  coordinator) for the largest N, in an extra run of half the duration
  (not the measured one).

Per run: answered, refused (HTTP 429), lost (any other error, a timeout
included), latency p50/p99 [s], questions per minute, the redundancy k the
chunks got (from the ``dellm`` trace), accuracy (capitals), and this
process's CPU time per answered question [ms] (clients + API + coordinator:
the coordinator's own cost is at most this).

Usage::

    flock /tmp/dellm-heavy.lock .venv/bin/python scripts/bench_load.py --url http://127.0.0.1:8000 \\
        --clients 8,32,128 --questions 128 --quiet 24 --json load3.json
    .venv/bin/python scripts/bench_load.py --sim-nodes 1,10,100 --clients 128 --json load_sim.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
from harness.data import DATA_DIR, load_questions
from harness.options import add_simulation_options
from harness.report import make_progress
from harness.stats import pct

progress = make_progress("bench_load")


async def ask(api: openai.AsyncOpenAI, user: str, question: str, deadline_s: float) -> dict[str, Any]:
    """One question; ``{"status": answered|refused|lost, "s": latency, "text", "ks", "error"}``."""
    t0 = time.perf_counter()
    try:
        reply = await api.chat.completions.create(
            model="dellm",
            messages=[{"role": "user", "content": question}],
            user=user,
            extra_body={"dellm": {"timeout_s": deadline_s}},
            timeout=deadline_s + 30,
        )
    except openai.RateLimitError as exc:
        return {"status": "refused", "s": time.perf_counter() - t0, "error": str(exc)[:200]}
    except (openai.APIError, TimeoutError) as exc:
        return {"status": "lost", "s": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    trace = (reply.model_extra or {}).get("dellm") or {}
    return {
        "status": "answered",
        "s": time.perf_counter() - t0,
        "text": reply.choices[0].message.content or "",
        "ks": [c.get("redundancy") for c in trace.get("chunks", [])],
        "queued_s": max((c.get("queued_ms") or 0) for c in trace.get("chunks", [{}])) / 1000,
    }


def summarize(results: list[dict[str, Any]], wall_s: float, cpu_s: float, golds: list[str] | None) -> dict[str, Any]:
    """Counts, latency percentiles [s], questions per minute, k used, accuracy, CPU per answer [ms]."""
    from eval import score_capital  # scripts/eval.py: the project's capitals scoring

    status = Counter(r["status"] for r in results)
    answered = [r for r in results if r["status"] == "answered"]
    lat = sorted(r["s"] for r in answered)
    ks = Counter(k for r in answered for k in r["ks"])
    out: dict[str, Any] = {
        "questions": len(results),
        "answered": status["answered"],
        "refused": status["refused"],
        "lost": status["lost"],
        "latency_s_p50": round(pct(lat, 50), 2) if lat else None,
        "latency_s_p99": round(pct(lat, 99), 2) if lat else None,
        "queued_s_max": round(max((r["queued_s"] for r in answered), default=0), 2),
        "questions_per_min": round(len(answered) / wall_s * 60, 1),
        "wall_s": round(wall_s, 1),
        "k_used": dict(sorted(ks.items())),
        "cpu_ms_per_answer": round(cpu_s * 1000 / max(1, len(answered)), 2),
        "errors": dict(Counter(r["error"][:160] for r in results if r.get("error")).most_common(3)),
    }
    if golds is not None:
        right = sum(score_capital(r.get("text", ""), g) for r, g in zip(results, golds, strict=True))
        out["accuracy"] = round(right / len(results), 3)
    return out


async def run_questions(url: str, questions: list[tuple[str, str]], clients: int, deadline_s: float) -> dict:
    """Ask every question once, ``clients`` at a time (each client asks its share in turn)."""
    api = openai.AsyncOpenAI(base_url=url + "/v1", api_key=os.environ.get("DELLM_API_KEY", "unused"), max_retries=0)
    results: list[dict[str, Any] | None] = [None] * len(questions)

    async def client(c: int) -> None:
        for i in range(c, len(questions), clients):
            results[i] = await ask(api, f"client-{c}", questions[i][0], deadline_s)

    t0, cpu0 = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for c in range(min(clients, len(questions))):
            group.create_task(client(c))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await api.close()
    return summarize(results, wall, cpu, [g for _, g in questions])  # type: ignore[arg-type]


async def run_duration(url: str, clients: int, duration_s: float, deadline_s: float) -> dict:
    """``clients`` clients ask simulated questions for ``duration_s``; answers within it count."""
    api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    results: list[dict[str, Any]] = []
    end = time.perf_counter() + duration_s

    async def client(c: int) -> None:
        n = 0
        while time.perf_counter() < end:
            n += 1
            r = await ask(api, f"client-{c}", f"What is 6 times 7? (question {c}-{n})", deadline_s)
            if time.perf_counter() <= end or r["status"] != "answered":
                results.append(r)

    t0, cpu0 = time.perf_counter(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for c in range(clients):
            group.create_task(client(c))
    cpu = time.process_time() - cpu0
    await api.close()
    return summarize(results, min(duration_s, time.perf_counter() - t0), cpu, None)


async def sim_network(n: int, args: argparse.Namespace):
    """Start ``n`` SIMULATED nodes in worker processes and a Swarm + HTTP API here; returns (url, closer)."""
    from scale.workers import WorkerHandle, call_all

    from dellm_p2p.config import NodeConfig
    from dellm_p2p.http.app import create_app
    from dellm_p2p.http.gateway import Gateway
    from dellm_p2p.http.server import HttpServer
    from dellm_p2p.swarm import Swarm

    defaults = NodeConfig.model_fields
    settings = dict(
        gossip_interval_s=0.5, fanout=3, capacity=args.capacity, tokens=args.tokens, token_ms=args.token_ms,
        first_token_ms=args.first_token_ms, suspect_after_s=defaults["suspect_after_s"].default,
        dead_after_s=defaults["dead_after_s"].default, worker_nice=10, max_connections=64, reward_max_hops=6,
        membership="swim", probe_interval_s=defaults["probe_interval_s"].default,
    )  # fmt: skip
    procs = min(n, 2)  # the machine's 2 cores
    ctx = multiprocessing.get_context("spawn")
    workers = [WorkerHandle(ctx, w, list(range(w, n, procs)), settings) for w in range(procs)]
    await call_all(workers, "ping", timeout_s=60)
    boot = (await workers[0].call("start", indices=[0], bootstrap=[], n_total=n))["urls"]
    boot_url = next(iter(boot.values()))
    await asyncio.gather(
        *(w.call("start", indices=[i for i in w.indices if i], bootstrap=[boot_url], n_total=n) for w in workers)
    )
    swarm = Swarm(peers=[boot_url], mdns=False, discover_timeout_s=30)
    await swarm.start()
    for _ in range(300):  # until the coordinator knows every node
        if len([p for p in swarm.table.alive() if p.model]) >= n:
            break
        await asyncio.sleep(0.1)
    # Connections up before measuring, as in a network that has been serving: opening 100 at once to
    # nodes sharing two cores timed out handshakes (3 s) and lost questions.
    for peer in [p for p in swarm.table.alive() if p.model]:
        with contextlib.suppress(Exception):
            await swarm.pool.get(peer.url)
    server = HttpServer(create_app(Gateway.for_swarm(swarm)), "127.0.0.1", 0)
    url = await server.start()

    async def close() -> None:
        await server.close(1.0)
        await swarm.close()
        with contextlib.suppress(Exception):
            await call_all(workers, "stop", timeout_s=30)
        for w in workers:
            w.reap()

    return url, close, len([p for p in swarm.table.alive() if p.model])


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "runs": []}
    out["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    clients = [int(c) for c in args.clients.split(",")]
    if args.url:
        questions = load_questions(DATA_DIR)[: args.questions]
        if args.quiet:
            progress(f"quiet baseline: {args.quiet} questions one at a time")
            out["quiet"] = await run_questions(args.url, questions[: args.quiet], 1, args.deadline_s)
            progress(f"quiet: {out['quiet']}")
        for c in clients:
            progress(f"{c} concurrent clients, {len(questions)} questions")
            run = await run_questions(args.url, questions, c, args.deadline_s)
            out["runs"].append({"clients": c, **run})
            progress(f"{c} clients: {run}")
        return out
    out["simulation"] = (
        f"SIMULATED nodes (scripts/harness SimulatedEngine, no model): capacity {args.capacity}, "
        f"{args.first_token_ms:g} ms + {args.tokens} x {args.token_ms:g} ms per answer"
    )
    sizes = [int(n) for n in args.sim_nodes.split(",")]
    for n in sizes:
        url, close, known = await sim_network(n, args)
        try:
            for c in clients:
                progress(f"N={n} ({known} known), {c} clients, {args.duration_s:g} s")
                run = await run_duration(url, c, args.duration_s, args.deadline_s)
                out["runs"].append({"nodes": n, "clients": c, **run})
                progress(f"N={n}, {c} clients: {run}")
            if args.profile and n == max(sizes):  # a separate run: profiling slows this process
                profiler = cProfile.Profile()
                profiler.enable()
                profiled = await run_duration(url, max(clients), args.duration_s / 2, args.deadline_s)
                profiler.disable()
                profiler.dump_stats(args.profile)
                out["profiled_run"] = {"nodes": n, "clients": max(clients), **profiled}
                progress(f"profiled run: {profiled}")
        finally:
            await close()
    by_n = {r["nodes"]: r["questions_per_min"] for r in out["runs"] if r["clients"] == max(clients)}
    if min(sizes) in by_n and max(sizes) in by_n and by_n[min(sizes)]:
        out["throughput_ratio"] = round(by_n[max(sizes)] / by_n[min(sizes)], 1)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running API (http://host:port)")
    where.add_argument("--sim-nodes", help="SIMULATED network sizes, e.g. 1,10,100")
    p.add_argument("--clients", default="8,32,128", help="concurrent clients per run (comma-separated)")
    p.add_argument("--deadline-s", type=float, default=180.0, help="each question's deadline [s]")
    p.add_argument("--questions", type=int, default=128, help="capitals questions per run (--url)")
    p.add_argument("--quiet", type=int, default=0, help="questions asked one at a time first (--url)")
    p.add_argument("--duration-s", type=float, default=30.0, help="length of a simulated run [s]")
    p.add_argument("--capacity", type=int, default=4, help="answers a simulated node takes at once")
    add_simulation_options(p, tokens=4, token_ms=50.0, first_token_ms=1000.0)
    p.add_argument("--profile", help="cProfile output of the largest simulated run")
    p.add_argument("--json", help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = asyncio.run(amain(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    bad = any(r["lost"] or r["refused"] for r in out["runs"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
