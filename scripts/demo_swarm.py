"""The main job: a mixed swarm of three nodes on 127.0.0.1 (two models), one question to the swarm.

Starts three `dellm-node` processes, by default SmolLM2-135M-Instruct, Gemma 3
270M and SmolLM2-135M-Instruct (``--models``; they find each other by mDNS on
127.0.0.1), runs `dellm ask` on the question (two chunks, each answered by
several nodes, votes, a synthesized answer), then shows with `dellm peers`
that the fitness of all three nodes changed, and stops the nodes.

    .venv/bin/python scripts/demo_swarm.py ["question"] [--models smollm2-135m,gemma3-270m,smollm2-135m]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dellm_p2p.client import PeerClient
from dellm_p2p.local import NodeProcess, NodeStartError
from dellm_p2p.security import cluster_key_from_env

QUESTION = "Calculate 10% interest on $1000 then find the best savings accounts"
# Two SmolLM2 and one Gemma: the question is a MATH chunk (program-aided: SmolLM2-135M-Instruct writes the
# expression right, 40/40 on two-digit sums) and free text, where the instruct model is the stronger one and
# Gemma 3 270M, a base model, only completes few-shot prompts; Gemma costs about twice the compute per token
# on two cores, so one Gemma node keeps the demo near the all-SmolLM2 latency, and every chunk still gets
# ballots from two different models. The same mix as `dellm up --nodes 3 --models smollm2-135m,gemma3-270m`.
MODELS = "smollm2-135m,gemma3-270m,smollm2-135m"
STATE = Path(".dellm-demo-state")
console = Console(highlight=False, soft_wrap=True)


async def fitness_views(urls: list[str]) -> dict[str, dict[str, float]]:
    """Each node's view: node id -> fitness (its own included)."""
    views = {}
    for url in urls:
        async with await PeerClient.connect(url, cluster_key=cluster_key_from_env()) as client:
            table = await client.peers()
            views[table.node_id] = {row.node_id: row.fitness for row in table.peers} | {table.node_id: table.fitness}
    return views


def dellm(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "dellm_p2p.cli.main", *args])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--strategy", default="majority")
    parser.add_argument("--models", default=MODELS, help="one embedded model per node (three, comma-separated)")
    args = parser.parse_args()

    names = ["node-a", "node-b", "node-c"]
    cores = ["0", "1", "0"]  # vLLM binds every CPU worker to core 0 unless told otherwise
    models = [m.strip() for m in args.models.split(",")]
    if len(models) != len(names):
        parser.error(f"--models needs {len(names)} names, got {len(models)}")
    console.print(f"[bold]Starting three dellm nodes ({', '.join(models)}; a minute or two)…[/]")
    nodes = [
        NodeProcess(
            ["--name", n, "--state-dir", str(STATE / n), "--cpu-bind", c, "--max-concurrency", "8", "--model", m]
        )
        for n, c, m in zip(names, cores, models, strict=True)
    ]
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(len(nodes)) as pool:
            # A first run converts both embedded models (Gemma: minutes on a loaded two-core machine).
            urls = list(pool.map(lambda node: node.wait_ready(timeout_s=900), nodes))
        console.print(f"nodes ready after {time.monotonic() - started:.0f} s:")
        for node in nodes:
            console.print(f"  {node.url}  {node.model}")
        time.sleep(2)  # let mDNS and membership gossip settle
        before = asyncio.run(fitness_views(urls))

        console.rule(f"dellm ask {args.question!r}")
        code = dellm("ask", args.question, "--mdns-interface", "127.0.0.1", "--strategy", args.strategy)
        if code != 0:
            return code
        time.sleep(2)  # fitness gossip reaches every node
        after = asyncio.run(fitness_views(urls))

        console.rule("fitness, as each node sees it")
        table = Table()
        table.add_column("seen by")
        for node in nodes:
            table.add_column(f"{node.node_id[:8]} before → after", justify="right")
        changed_everywhere = True
        for node in nodes:
            cells = []
            for subject in nodes:
                b = before[node.node_id].get(subject.node_id, 0.5)
                a = after[node.node_id].get(subject.node_id, 0.5)
                cells.append(f"{b:.4f} → {a:.4f}")
                changed_everywhere &= a != b
            table.add_row(node.node_id[:8], *cells)
        console.print(table)
        console.print(
            "fitness changed on all three nodes"
            if changed_everywhere
            else "some fitness did not change: a peer whose answers were all cancelled as stragglers (the vote was "
            "decided without them) has nothing to judge, and a chunk without a plurality (the greedy answer was "
            "kept) rewards nobody"
        )
        console.rule("dellm peers")
        dellm("peers", "--peer", urls[0])
        return 0
    except NodeStartError as exc:
        console.print(f"demo: error: {exc}")
        return 1
    finally:
        for node in nodes:
            node.stop(timeout_s=30)


if __name__ == "__main__":
    sys.exit(main())
