#!/usr/bin/env python
"""Two nodes, two engine environments, the same requests: throughput and memory side by side.

::

    .venv/bin/python scripts/bench_engine_env.py                     # oneDNN's cache as vLLM leaves it vs our default
    .venv/bin/python scripts/bench_engine_env.py --a ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024 --b MALLOC_ARENA_MAX=2

Starts node A and node B with the default model on 127.0.0.1, each with its
own core (``--cpu-bind`` 0 and 1), A with the extra environment ``--a`` and
B with ``--b`` (``KEY=VALUE``, repeatable; the node's own defaults apply
unless overridden). The default A sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024``
(oneDNN's own default, i.e. the node before issue 16's fix) and B nothing
(the node's default, capacity 0). Then each node gets the same
``--requests`` capitals questions (sampled at T = 0.7, ``--max-tokens``) with
``--concurrency`` in flight per node, both nodes at once. Varied questions
and a varying number in flight give the engine varied batch sizes, which is
what the oneDNN cache keys on.

Prints per node: wall time of the whole set [s], completion tokens per second,
the vLLM worker's CPU seconds per 1,000 tokens, and the worker's RSS before
and after [MiB]; then the B / A ratios. One run, both nodes measured side by
side; the two cores are the machine's whole, so run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.data import DATA_DIR, load_questions
from harness.memory import sample_tree
from harness.nodes import node_envs, run_on_nodes
from harness.report import make_progress, publish

progress = make_progress("bench_engine_env")

MIB = 2**20


def worker_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the ``VLLM::Worker`` processes under ``pid``."""
    import psutil

    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "Worker" in " ".join(child.cmdline()):
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


async def drive(url: str, questions: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Send every question to the node at ``url``, ``concurrency`` at a time; wall time and tokens."""
    from dellm_p2p.client import PeerClient
    from dellm_p2p.protocol import SamplingParams

    queue = list(questions)
    tokens = 0
    failures = 0
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7)
    async with await PeerClient.connect(url, timeout_s=30) as client:
        started = time.perf_counter()

        async def one_lane() -> None:
            nonlocal tokens, failures
            while queue:
                question = queue.pop()
                try:
                    done = await client.complete(
                        messages=[{"role": "user", "content": question}], params=params, timeout_s=300
                    )
                    tokens += done.tokens
                except Exception:
                    failures += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(one_lane())
        wall_s = time.perf_counter() - started
    return {"wall_s": wall_s, "tokens": tokens, "failures": failures}


async def bench(args: argparse.Namespace, slots: list) -> dict[str, Any]:
    rng = random.Random(args.seed)
    pool = [q for q, _ in load_questions(args.data_dir)]
    questions = [rng.choice(pool) for _ in range(args.requests)]
    before = {s.name: (worker_cpu_s(s.pid()), sample_tree(s.pid())) for s in slots}
    progress(f"{args.requests} questions to each node, {args.concurrency} in flight per node, both nodes at once")
    results = await asyncio.gather(*(drive(s.url, questions, args.concurrency, args.max_tokens) for s in slots))
    nodes = []
    for slot, result in zip(slots, results, strict=True):
        cpu_before, mem_before = before[slot.name]
        mem_after = sample_tree(slot.pid())
        cpu = worker_cpu_s(slot.pid()) - cpu_before
        nodes.append(
            {
                "name": slot.name,
                "env": slot.variant,
                **result,
                "tokens_per_s": result["tokens"] / result["wall_s"],
                "worker_cpu_s_per_1k_tokens": 1000 * cpu / max(1, result["tokens"]),
                "worker_rss_before_bytes": mem_before["worker"]["rss"],
                "worker_rss_after_bytes": mem_after["worker"]["rss"],
            }
        )
    a, b = nodes
    return {
        "settings": vars(args) | {"data_dir": str(args.data_dir), "json": str(args.json)},
        "nodes": nodes,
        "ratios_b_over_a": {
            "wall": b["wall_s"] / a["wall_s"],
            "tokens_per_s": b["tokens_per_s"] / a["tokens_per_s"],
            "worker_cpu_per_token": b["worker_cpu_s_per_1k_tokens"] / a["worker_cpu_s_per_1k_tokens"],
        },
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    table = Table(title=f"engine environment A vs B: {s['requests']} questions each, {s['concurrency']} in flight")
    for column in ("node", "extra environment", "wall (s)", "tokens/s", "worker CPU s / 1k tokens", "worker RSS (MiB)"):
        table.add_column(column, justify="left" if column in ("node", "extra environment") else "right")
    for node in result["nodes"]:
        table.add_row(
            node["name"],
            node["env"] or "(node defaults)",
            f"{node['wall_s']:.1f}",
            f"{node['tokens_per_s']:.1f}",
            f"{node['worker_cpu_s_per_1k_tokens']:.2f}",
            f"{node['worker_rss_before_bytes'] / MIB:,.0f} → {node['worker_rss_after_bytes'] / MIB:,.0f}",
        )
    r = result["ratios_b_over_a"]
    table.caption = (
        f"B / A: wall {r['wall']:.3f}, tokens/s {r['tokens_per_s']:.3f}, worker CPU per token "
        f"{r['worker_cpu_per_token']:.3f}; failures {sum(n['failures'] for n in result['nodes'])}"
    )
    Console(width=None if sys.stdout.isatty() else 150).print(table)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", action="append", default=None, metavar="KEY=VALUE", help="node A's extra environment")
    parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="node B's extra environment")
    parser.add_argument("--requests", type=int, default=600, help="questions per node (default 600)")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight per node (default 16)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--node-timeout", type=float, default=600.0, help="node start deadline [s]")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.a is None:
        args.a = ["ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024"]
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be positive")
    try:
        envs = node_envs([f"a:{spec}" for spec in args.a] + [f"b:{spec}" for spec in args.b], 2)
    except ValueError as exc:
        parser.error(str(exc).replace("--node-env", "--a/--b"))
    progress("starting node A and node B with the default model")
    status, result = run_on_nodes(
        lambda slots: bench(args, slots), 2, [], prefix="dellm-bench-env-", max_concurrency=64,
        timeout_s=args.node_timeout, progress=progress, envs=envs,
    )  # fmt: skip
    if result is None:
        return status
    publish(result, report, args.json, progress)
    return 0 if not any(n["failures"] for n in result["nodes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
