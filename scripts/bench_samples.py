"""Samples of one chunk to one peer: one request with vLLM's ``n`` against separate requests (issue 25).

The pipeline asks a peer for all the samples it gives one chunk in one
request (``SamplingParams.n``, :func:`~dellm_p2p.coordinator.route.route`),
so the node processes the prompt once. This measures what that buys, side
by side in one run against one real node: for each of ``--questions``
capitals chunk prompts (the pipeline's own, :func:`chunk_prompt`), ``--n``
samples at T = 0.7 either as one request with ``n`` or as ``n`` concurrent
requests with ``n = 1``, the two forms alternating (which one goes first
alternates too, so neither always meets a warmer engine).

Figures per form: time to answer (all ``n`` samples done) p50 / mean [s],
completion tokens per second over the form's total time, and the prompt
tokens the node reports having processed.

Usage::

    flock /tmp/dellm-heavy.lock .venv/bin/python scripts/bench_samples.py [--url ws://127.0.0.1:PORT]
        [--questions 24] [--n 4] [--json out.json]

Without ``--url`` it starts one node with the default model (``dellm-node``,
no mDNS) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.report import make_progress

from dellm_p2p.client import PeerClient
from dellm_p2p.coordinator.decompose import chunk_prompt, classify, complexity
from dellm_p2p.coordinator.types import Chunk
from dellm_p2p.protocol import SamplingParams

DATA = Path("/work/shared/data/capitals.jsonl")
progress = make_progress("bench_samples")


async def one_request(client: PeerClient, prompt: str, n: int, max_tokens: int) -> tuple[float, int, int]:
    """``n`` samples in one request: (seconds, completion tokens, prompt tokens processed)."""
    t0 = time.perf_counter()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, n=n)
    done = await client.complete(messages=[{"role": "user", "content": prompt}], params=params, timeout_s=300)
    return time.perf_counter() - t0, done.done.usage.completion_tokens, done.done.usage.prompt_tokens


async def separate(client: PeerClient, prompt: str, n: int, max_tokens: int) -> tuple[float, int, int]:
    """``n`` concurrent requests of one sample: (seconds until all are done, completion and prompt tokens)."""
    t0 = time.perf_counter()
    parts = await asyncio.gather(*(one_request(client, prompt, 1, max_tokens) for _ in range(n)))
    return time.perf_counter() - t0, sum(p[1] for p in parts), sum(p[2] for p in parts)


def figures(rows: list[tuple[float, int, int]]) -> dict[str, float]:
    secs = [r[0] for r in rows]
    return {
        "answer_s_p50": round(statistics.median(secs), 3),
        "answer_s_mean": round(statistics.fmean(secs), 3),
        "completion_tokens_per_s": round(sum(r[1] for r in rows) / sum(secs), 1),
        "prompt_tokens_processed": sum(r[2] for r in rows),
        "completion_tokens": sum(r[1] for r in rows),
    }


async def measure(url: str, args: argparse.Namespace) -> dict:
    rows = args.rows
    client = await PeerClient.connect(url, name="bench-samples")
    batched: list[tuple[float, int, int]] = []
    split: list[tuple[float, int, int]] = []
    try:
        await one_request(client, "Say hello.", 1, 8)  # warm-up
        for i, row in enumerate(rows):
            q = row["question"]
            operation = classify(q)
            prompt = chunk_prompt(Chunk("c1", q, operation, complexity(q, operation)), {}, program_aided=True)
            forms = [("n", batched), ("separate", split)]
            for name, out in forms if i % 2 == 0 else forms[::-1]:
                fn = one_request if name == "n" else separate
                out.append(await fn(client, prompt, args.n, args.max_tokens))
    finally:
        await client.close("done")
    return {"n_batched": figures(batched), "separate_requests": figures(split)}


async def amain(args: argparse.Namespace) -> dict:
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "n": args.n, "questions": args.questions}
    if args.url:
        out |= await measure(args.url, args)
        return out
    sys.path.insert(0, str(Path(__file__).parent))
    from eval import start_nodes, stop_nodes

    nodes: list = []
    with tempfile.TemporaryDirectory(prefix="dellm-samples-") as tmp:
        try:
            (url,) = await asyncio.to_thread(start_nodes, nodes, 1, Path(tmp), 32, 600, progress)
            out |= await measure(url, args)
        finally:
            await asyncio.to_thread(stop_nodes, nodes, progress)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="ws:// URL of a running node (default: start one)")
    p.add_argument("--questions", type=int, default=24)
    p.add_argument("--n", type=int, default=4, help="samples per chunk")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    args.rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][: args.questions]
    out = asyncio.run(amain(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
