"""Benchmark one node: protocol overhead and batching, side by side in one run.

1. Protocol overhead: the same greedy requests run (a) directly on a
   ``VllmEngine`` in this process and (b) through the websocket protocol
   (``PeerClient.complete``) against a ``NodeServer`` serving that same engine
   in this same process (or, with ``--subprocess-node``, a separate
   ``dellm-node`` child process). Paths are interleaved per question, the order
   alternating each round, after one untimed warm-up of each path.
2. Batching: ``--batch`` requests through the protocol sent concurrently versus
   the same requests one after another; throughput = completion tokens / wall
   seconds. Two workloads, both greedy: the capitals questions of phase 1
   (short answers of uneven length, so the concurrent run waits for its
   longest answer) and essay prompts that all run to ``--max-tokens`` (equal
   work per request: the figure of the batching itself).

Everything listens on and connects to 127.0.0.1 only. Usage::

    .venv/bin/python scripts/bench_node.py [--requests 20] [--max-tokens 48] [--batch 16]
        [--model DIR] [--json out.json] [--subprocess-node]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dellm_p2p.runtime import run, setup_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.data import COUNTRIES, questions
from harness.report import make_progress
from harness.stats import median
from harness.streams import Run, time_engine

WALL_RATIO_TARGET = 1.05  # protocol wall / direct wall, at most
BATCH_SPEEDUP_TARGET = 4.0  # concurrent throughput / sequential throughput, at least

ENGINE_START_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 120.0
BATCH_TIMEOUT_S = 900.0
CLOSE_TIMEOUT_S = 60.0
# With --subprocess-node two vLLM engines share this machine: vLLM's auto CPU binding pins both workers
# to the same core, and a worker busy-loops on its shared-memory queue for 1 s after its last step
# (vllm/distributed/device_communicators/shm_broadcast.py, SpinCondition busy_loop_s=1). Waiting this
# long before each timed request lets the other engine's worker go idle first.
SETTLE_S = 1.5

# Long-answer prompts: every request runs to max_tokens, so each one is the same amount of work.
ESSAY_TEMPLATE = "Write a long essay about the history of {}."


def essay_prompts(count: int) -> list[str]:
    """``count`` different prompts whose answers are longer than any sensible ``--max-tokens``."""
    if count > len(COUNTRIES):
        raise SystemExit(f"bench_node: at most {len(COUNTRIES)} concurrent requests are available")
    return [ESSAY_TEMPLATE.format(c) for c in COUNTRIES[:count]]


progress = make_progress("bench_node")


async def run_direct(engine, question: str, max_tokens: int, request_id: str) -> Run:
    """Path (a): the engine's own stream, timed from the call to the last delta."""
    from dellm_p2p.engine import GenerationRequest
    from dellm_p2p.protocol import ChatMessage, SamplingParams

    request = GenerationRequest(
        SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[ChatMessage(role="user", content=question)],
    )
    return await time_engine(engine, request, request_id, REQUEST_TIMEOUT_S)


async def run_protocol(client, question: str, max_tokens: int) -> Run:
    """Path (b): ``PeerClient.complete``, timed on the client side."""
    from dellm_p2p.protocol import ChatMessage, SamplingParams

    async with asyncio.timeout(REQUEST_TIMEOUT_S + 5):
        done = await client.complete(
            messages=[ChatMessage(role="user", content=question)],
            params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            timeout_s=REQUEST_TIMEOUT_S,
        )
    if done.tokens != done.done.usage.completion_tokens:
        progress(f"warning: streamed {done.tokens} tokens but done.usage says {done.done.usage.completion_tokens}")
    return Run(
        done.total_ms,
        done.first_token_ms,
        done.done.usage.completion_tokens,
        done.text,
        done.done.finish_reasons[0],
        done.done.timings.total_ms,
        done.done.timings.first_token_ms,
    )


async def bench_overhead(engine, client, qs: list[str], max_tokens: int, settle_s: float) -> dict[str, Any]:
    progress("phase 1: protocol overhead, warm-up of both paths (untimed)")
    await run_direct(engine, qs[0], max_tokens, "bench-direct-warmup")
    await run_protocol(client, qs[0], max_tokens)
    progress(f"phase 1: protocol overhead, {len(qs)} questions, interleaved a/b with alternating order")
    direct: list[Run] = []
    proto: list[Run] = []

    async def a(i: int, q: str) -> None:
        await asyncio.sleep(settle_s)
        direct.append(await run_direct(engine, q, max_tokens, f"bench-direct-{i}"))

    async def b(q: str) -> None:
        await asyncio.sleep(settle_s)
        proto.append(await run_protocol(client, q, max_tokens))

    for i, q in enumerate(qs):
        if i % 2 == 0:
            await a(i, q)
            await b(q)
        else:
            await b(q)
            await a(i, q)
    pairs = list(zip(direct, proto, strict=True))
    wall_a, wall_b = median([r.wall_ms for r in direct]), median([r.wall_ms for r in proto])
    ttft_a, ttft_b = median([r.ttft_ms for r in direct]), median([r.ttft_ms for r in proto])
    return {
        "requests": len(qs),
        "max_tokens": max_tokens,
        "direct_wall_ms_median": wall_a,
        "protocol_wall_ms_median": wall_b,
        "wall_ratio": wall_b / wall_a,
        "wall_ratio_paired_median": statistics.median(b.wall_ms / a.wall_ms for a, b in pairs),
        "wall_ratio_target_max": WALL_RATIO_TARGET,
        "wall_ratio_pass": wall_b / wall_a <= WALL_RATIO_TARGET,
        "direct_ttft_ms_median": ttft_a,
        "protocol_ttft_ms_median": ttft_b,
        "ttft_ratio": ttft_b / ttft_a,
        "server_total_ms_median": median([r.server_total_ms for r in proto]),
        "server_ttft_ms_median": median([r.server_ttft_ms for r in proto]),
        "direct_tokens": [r.tokens for r in direct],
        "protocol_tokens": [r.tokens for r in proto],
        "direct_tokens_total": sum(r.tokens for r in direct),
        "protocol_tokens_total": sum(r.tokens for r in proto),
        "token_count_mismatches": [i for i, (a, b) in enumerate(pairs) if a.tokens != b.tokens],
        "text_mismatches": [i for i, (a, b) in enumerate(pairs) if a.text != b.text],
        "direct_wall_ms": [round(r.wall_ms, 3) for r in direct],
        "protocol_wall_ms": [round(r.wall_ms, 3) for r in proto],
    }


async def bench_batching(client, label: str, qs: list[str], max_tokens: int) -> dict[str, Any]:
    """The same ``qs`` through the protocol one after another, then all at once."""
    progress(f"phase 2: batching ({label}), {len(qs)} requests one after another")
    started = time.perf_counter()
    sequential = [await run_protocol(client, q, max_tokens) for q in qs]
    seq_s = time.perf_counter() - started

    progress(f"phase 2: batching ({label}), the same {len(qs)} requests concurrently")
    started = time.perf_counter()
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        concurrent = await asyncio.gather(*(run_protocol(client, q, max_tokens) for q in qs))
    con_s = time.perf_counter() - started

    seq_tokens = sum(r.tokens for r in sequential)
    con_tokens = sum(r.tokens for r in concurrent)
    seq_tps, con_tps = seq_tokens / seq_s, con_tokens / con_s
    pairs = list(zip(sequential, concurrent, strict=True))
    return {
        "label": label,
        "batch": len(qs),
        "max_tokens": max_tokens,
        "sequential_wall_s": seq_s,
        "concurrent_wall_s": con_s,
        "sequential_tokens": seq_tokens,
        "concurrent_tokens": con_tokens,
        "tokens_per_request": [r.tokens for r in sequential],
        "all_ran_to_max_tokens": all(r.tokens == max_tokens for r in [*sequential, *concurrent]),
        "sequential_tokens_per_s": seq_tps,
        "concurrent_tokens_per_s": con_tps,
        "speedup": con_tps / seq_tps,
        "speedup_target_min": BATCH_SPEEDUP_TARGET,
        "speedup_pass": con_tps / seq_tps >= BATCH_SPEEDUP_TARGET,
        "text_mismatches": [i for i, (a, b) in enumerate(pairs) if a.text != b.text],
    }


async def bench_all_batching(client, batch: int, max_tokens: int, settle_s: float) -> list[dict[str, Any]]:
    capitals, essays = questions(batch), essay_prompts(batch)
    await asyncio.sleep(settle_s)
    progress(f"phase 2: batching, warm-up with {batch} concurrent short requests (untimed)")
    async with asyncio.timeout(BATCH_TIMEOUT_S):
        await asyncio.gather(*(run_protocol(client, q, 8) for q in capitals))
    return [
        await bench_batching(client, "capitals questions", capitals, max_tokens),
        await bench_batching(client, "essay prompts", essays, max_tokens),
    ]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(results: dict[str, Any]) -> None:
    """Print one line per figure, then a summary table (stdout)."""
    from rich.console import Console
    from rich.table import Table

    o, where = results["overhead"], results["setup"]
    print(f"model: {results['model']}")
    print(f"setup: (a) = VllmEngine in this process; (b) = {where}")
    if results["same_process"]:
        print(
            "note: client and server share this process's event loop with the engine's output handler, "
            "so (b) also pays for the client's work: a conservative (pessimistic) overhead measure"
        )
    else:
        print(
            f"note: two vLLM engines on this machine; each timed request waits {SETTLE_S:g} s first so the "
            "other engine's worker stops busy-polling (both workers are pinned to the same core)"
        )
    print(f"overhead.requests: {o['requests']} greedy requests per path, max_tokens {o['max_tokens']}")
    print(
        f"overhead.wall_median: direct {o['direct_wall_ms_median']:.1f} ms, "
        f"protocol {o['protocol_wall_ms_median']:.1f} ms, "
        f"ratio {o['wall_ratio']:.3f} (target ≤ {WALL_RATIO_TARGET:.2f}) {verdict(o['wall_ratio_pass'])}"
    )
    print(f"overhead.wall_ratio_paired_median: {o['wall_ratio_paired_median']:.3f} (median of per-question b/a)")
    print(
        f"overhead.ttft_median: direct {o['direct_ttft_ms_median']:.1f} ms, "
        f"protocol {o['protocol_ttft_ms_median']:.1f} ms, ratio {o['ttft_ratio']:.3f} (no target)"
    )
    print(
        f"overhead.server_side_median: total {o['server_total_ms_median']:.1f} ms, "
        f"first token {o['server_ttft_ms_median']:.1f} ms (the node's own timings, from the done frame)"
    )
    equal = not o["token_count_mismatches"]
    print(
        f"overhead.tokens_per_request: direct {o['direct_tokens']}, protocol {o['protocol_tokens']} "
        f"(totals {o['direct_tokens_total']} / {o['protocol_tokens_total']} tokens) "
        + ("equal" if equal else f"MISMATCH at questions {o['token_count_mismatches']}")
    )
    if o["text_mismatches"]:
        print(f"overhead.text: greedy texts differ at questions {o['text_mismatches']}")
    for b in results["batching"]:
        key = "batching." + b["label"].replace(" ", "_")
        lengths = "every request ran to max_tokens" if b["all_ran_to_max_tokens"] else "uneven answer lengths"
        print(f"{key}.tokens_per_request: {b['tokens_per_request']} ({lengths}, max_tokens {b['max_tokens']})")
        for mode in ("sequential", "concurrent"):
            print(
                f"{key}.{mode}: {b['batch']} requests, {b[mode + '_tokens']} tokens in {b[mode + '_wall_s']:.2f} s"
                f" = {b[mode + '_tokens_per_s']:.1f} tokens/s"
            )
        same = b["sequential_tokens"] == b["concurrent_tokens"]
        print(
            f"{key}.speedup: {b['speedup']:.2f}x (target ≥ {BATCH_SPEEDUP_TARGET:g}x) {verdict(b['speedup_pass'])}"
            + ("" if same else " (token totals differ between the runs: batched float32 arithmetic)")
        )

    table = Table(title=f"bench_node summary ({results['model']})")
    for column in ("figure", "direct | sequential", "protocol | concurrent", "ratio", "target", "result"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row(
        "wall time per request, median",
        f"{o['direct_wall_ms_median']:.1f} ms",
        f"{o['protocol_wall_ms_median']:.1f} ms",
        f"{o['wall_ratio']:.3f}",
        f"≤ {WALL_RATIO_TARGET:.2f}",
        verdict(o["wall_ratio_pass"]),
    )
    table.add_row(
        "first token, median",
        f"{o['direct_ttft_ms_median']:.1f} ms",
        f"{o['protocol_ttft_ms_median']:.1f} ms",
        f"{o['ttft_ratio']:.3f}",
        "-",
        "-",
    )
    table.add_row(
        "tokens generated, all requests",
        f"{o['direct_tokens_total']}",
        f"{o['protocol_tokens_total']}",
        "",
        "equal",
        "OK" if equal else "MISMATCH",
    )
    for b in results["batching"]:
        table.add_row(
            f"throughput, {b['batch']} {b['label']}",
            f"{b['sequential_tokens_per_s']:.1f} tokens/s",
            f"{b['concurrent_tokens_per_s']:.1f} tokens/s",
            f"{b['speedup']:.2f}x",
            f"≥ {BATCH_SPEEDUP_TARGET:g}x",
            verdict(b["speedup_pass"]),
        )
    Console(highlight=False, width=max(110, Console().width)).print(table)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """Load the engine, serve it, run both phases; returns the figures."""
    from dellm_p2p.client import PeerClient
    from dellm_p2p.engine.vllm_engine import VllmEngine
    from dellm_p2p.models import resolve_model
    from dellm_p2p.security import cluster_key_from_env
    from dellm_p2p.server import NodeServer

    qs = questions(args.requests)
    essay_prompts(args.batch)  # fail before loading anything if --batch is too large
    capacity = max(32, args.batch)

    progress("resolving the model")
    async with asyncio.timeout(600):
        model = await asyncio.to_thread(resolve_model, args.model)
    progress(f"loading {model.name} into vLLM (about a minute, includes the warm-up request)")
    engine = VllmEngine(model.path, name=model.name, dtype="float32", max_model_len=2048)
    server = None
    node = None
    client = None
    try:
        started = time.perf_counter()
        async with asyncio.timeout(ENGINE_START_TIMEOUT_S):
            await engine.start()
        progress(f"engine ready in {time.perf_counter() - started:.1f} s")
        if args.subprocess_node:
            from dellm_p2p.local import NodeProcess

            progress("starting a dellm-node child process (it loads its own engine)")
            node_args = ["--max-concurrency", str(capacity), "--host", "127.0.0.1", "--port", "0"]
            if args.model:
                node_args += ["--model", model.path]
            node = NodeProcess(node_args)
            async with asyncio.timeout(ENGINE_START_TIMEOUT_S + 30):
                url = await asyncio.to_thread(node.wait_ready, ENGINE_START_TIMEOUT_S)
            where = f"dellm-node child process at {url} (its own engine)"
        else:
            server = NodeServer(engine, node_id="bench-node", name="bench", max_concurrency=capacity)
            async with asyncio.timeout(30):
                url = await server.start("127.0.0.1", 0)
            where = f"PeerClient -> NodeServer in this process at {url}, serving the same engine"
        progress(f"(b) = {where}")
        # A child node inherits DELLM_CLUSTER_KEY_FILE from this environment; the in-process server has no key.
        key = cluster_key_from_env() if args.subprocess_node else None
        client = await PeerClient.connect(url, name="bench", timeout_s=30, cluster_key=key)

        settle_s = SETTLE_S if args.subprocess_node else 0.0
        overhead = await bench_overhead(engine, client, qs, args.max_tokens, settle_s)
        batching = await bench_all_batching(client, args.batch, args.max_tokens, settle_s)
    finally:
        progress("closing client, server and engine")
        try:
            if client is not None:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await client.close()
        finally:
            try:
                if server is not None:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await server.shutdown(0)
                if node is not None:
                    async with asyncio.timeout(CLOSE_TIMEOUT_S + 15):
                        await asyncio.to_thread(node.stop, CLOSE_TIMEOUT_S)
            finally:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await engine.close()
    return {
        "model": model.name,
        "setup": where,
        "same_process": not args.subprocess_node,
        "overhead": overhead,
        "batching": batching,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="questions per path in the overhead phase")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of every request [tokens]")
    parser.add_argument("--batch", type=int, default=16, help="concurrent requests in the batching phase")
    parser.add_argument("--model", default=None, help="local HF model directory (default: embedded SmolLM2-135M)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument(
        "--subprocess-node",
        action="store_true",
        help="run path (b) and the batching phase against a separate dellm-node child process",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.batch < 1 or args.max_tokens < 1:
        parser.error("--requests, --batch and --max-tokens must be at least 1")
    return args


if __name__ == "__main__":
    # Quiet vLLM before anything imports it (the engine imports it lazily).
    setup_logging(0)
    arguments = parse_args()
    figures = run(main(arguments))
    report(figures)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {arguments.json}")
