"""Benchmark the cost of each layer over calling vLLM directly, side by side in one run.

The same greedy requests (>= 20) go through three paths against one model:

(a) directly on a ``VllmEngine`` in this process;
(b) through the wire protocol: ``PeerClient`` -> ``NodeServer`` serving that engine on 127.0.0.1;
(c) through the full coordinator path: ``Swarm.ask`` with redundancy 1 and no decomposition
    (join, route, stream, extract, vote, reward) against that same node.

All three send the same user message (the coordinator's chunk prompt, answer line included) and
ask for logprobs, so they generate the same tokens. Requests are interleaved per question, the
order rotating each round, after one untimed warm-up of each path. Prints the median wall time and
time to first token of each path and the ratios b/a and c/a (targets: b/a <= 1.05, c/a <= 1.10).

    .venv/bin/python scripts/bench_overhead.py [--requests 20] [--max-tokens 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.data import questions  # the same question list as bench_node
from harness.report import make_progress
from harness.stats import median
from harness.streams import time_engine

from dellm_p2p.runtime import run, setup_logging

TARGETS = {"b/a": 1.05, "c/a": 1.10}
TIMEOUT_S = 120.0


progress = make_progress("bench_overhead")


def chunk_prompt(question: str) -> str:
    """The user message the coordinator sends for ``question`` as a single chunk."""
    from dellm_p2p.coordinator.decompose import chunk_prompt as pipeline_prompt
    from dellm_p2p.coordinator.decompose import classify
    from dellm_p2p.coordinator.types import Chunk

    return pipeline_prompt(Chunk("c1", question, classify(question)), {})


async def path_a(engine, question: str, max_tokens: int, rid: str) -> tuple[float, float | None, int]:
    from dellm_p2p.engine import GenerationRequest
    from dellm_p2p.protocol import ChatMessage, SamplingParams

    request = GenerationRequest(
        SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=True),
        messages=[ChatMessage(role="user", content=chunk_prompt(question))],
    )
    timed = await time_engine(engine, request, rid, TIMEOUT_S)
    return timed.wall_ms, timed.ttft_ms, timed.tokens


async def path_b(client, question: str, max_tokens: int) -> tuple[float, float | None, int]:
    from dellm_p2p.protocol import SamplingParams

    result = await client.complete(
        messages=[{"role": "user", "content": chunk_prompt(question)}],
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=True),
        timeout_s=TIMEOUT_S,
    )
    return result.total_ms, result.first_token_ms, result.done.usage.completion_tokens


async def path_c(swarm, question: str, max_tokens: int) -> tuple[float, float | None, int]:
    from dellm_p2p.coordinator.events import Final, PeerToken

    started, first, answer = time.perf_counter(), None, None
    async for event in swarm.stream(
        question, redundancy=1, decompose="none", synthesize=False, temperature=0.0, max_tokens=max_tokens
    ):
        if isinstance(event, PeerToken) and first is None and event.text:
            first = (time.perf_counter() - started) * 1000
        elif isinstance(event, Final):
            answer = event.answer
    wall = (time.perf_counter() - started) * 1000
    (candidate,) = answer.chunks[0].candidates
    return wall, first, len(candidate.logprobs)  # one logprob per generated token


async def main(args: argparse.Namespace) -> dict:
    from dellm_p2p.client import PeerClient
    from dellm_p2p.engine.vllm_engine import VllmEngine
    from dellm_p2p.models import resolve_model
    from dellm_p2p.server import NodeServer
    from dellm_p2p.swarm import Swarm

    model = await asyncio.to_thread(resolve_model, args.model)
    engine = VllmEngine(model.path, name=model.name)
    progress(f"loading {model.name} into vLLM (about a minute, warm-up included)")
    await engine.start()
    server = NodeServer(engine, node_id="bench-node", name="bench-node", max_concurrency=8)
    client = swarm = None
    try:
        url = await server.start("127.0.0.1", 0)
        client = await PeerClient.connect(url)
        # The bare NodeServer runs no membership: heartbeat gossip takes the peer from the handshake;
        # SWIM would wait for a signed member entry that only a full node (dellm-node) sends.
        swarm = Swarm(peers=[url], mdns=False, discover_timeout_s=30, membership="gossip")
        await swarm.start()
        qs = questions(args.requests)
        paths = {
            "a": lambda q, i: path_a(engine, q, args.max_tokens, f"direct-{i}"),
            "b": lambda q, i: path_b(client, q, args.max_tokens),
            "c": lambda q, i: path_c(swarm, q, args.max_tokens),
        }
        for name, call in paths.items():  # untimed warm-up of each path
            await call("What is the capital of Norway?", f"warmup-{name}")
        runs: dict[str, list[tuple[float, float | None, int]]] = {name: [] for name in paths}
        order = list(paths)
        progress(f"timing {len(qs)} questions on each of the three paths, interleaved")
        for i, question in enumerate(qs):
            for name in order[i % 3 :] + order[: i % 3]:  # rotate so no path always goes first
                runs[name].append(await paths[name](question, i))
    finally:
        if swarm is not None:
            await swarm.close()
        if client is not None:
            await client.close()
        await server.shutdown(0)
        await engine.close()
    tokens = {name: [r[2] for r in rs] for name, rs in runs.items()}
    results = {
        "model": model.name,
        "requests": len(qs),
        "max_tokens": args.max_tokens,
        "wall_ms": {name: median(r[0] for r in rs) for name, rs in runs.items()},
        "ttft_ms": {name: median(r[1] for r in rs) for name, rs in runs.items()},
        "tokens": tokens,
        "same_tokens": tokens["a"] == tokens["b"] == tokens["c"],
    }
    wall, ttft = results["wall_ms"], results["ttft_ms"]
    results["ratios"] = {
        "b/a": wall["b"] / wall["a"],
        "c/a": wall["c"] / wall["a"],
        "ttft b/a": ttft["b"] / ttft["a"],
        "ttft c/a": ttft["c"] / ttft["a"],
    }
    return results


def report(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    wall, ttft, ratios = results["wall_ms"], results["ttft_ms"], results["ratios"]
    table = Table(title=f"layer overhead, {results['requests']} greedy requests, {results['model']}")
    for column in ("path", "wall median (ms)", "first token median (ms)", "wall ratio to (a)", "target"):
        table.add_column(column, justify="left" if column == "path" else "right")
    names = {"a": "(a) VllmEngine in-process", "b": "(b) wire protocol", "c": "(c) coordinator, k=1"}
    for key, label in names.items():
        ratio = wall[key] / wall["a"]
        target = TARGETS.get(f"{key}/a")
        verdict = "" if target is None else f"≤ {target} {'PASS' if ratio <= target else 'MISS'}"
        table.add_row(label, f"{wall[key]:.1f}", f"{ttft[key]:.1f}", f"{ratio:.3f}", verdict)
    console = Console()
    console.print(table)
    console.print(
        f"time to first token ratios: b/a {ratios['ttft b/a']:.3f}, c/a {ratios['ttft c/a']:.3f}; "
        f"same tokens on all paths: {results['same_tokens']} ({sum(results['tokens']['a'])} tokens per path)"
    )
    console.print(
        "note: the node, its client and the coordinator share this process and its event loop with the engine's "
        "output handler, so (b) and (c) also pay for the client's work: a pessimistic measure."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Layer overhead: engine vs protocol vs coordinator.")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", default=None, help="local HF model directory (default: the embedded model)")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    if arguments.requests < 1 or arguments.max_tokens < 1:
        parser.error("--requests and --max-tokens must be positive")
    setup_logging(0)
    figures = run(main(arguments))
    report(figures)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2))
