"""Benchmark the HTTP API against the Python API, then under 32 concurrent streaming clients.

(1) Overhead: the same questions through ``Swarm.ask`` (a coordinator in this
    process, streaming with ``Swarm.stream``) and through ``POST
    /v1/chat/completions`` with ``model: dellm`` and ``stream: true`` (the
    coordinator inside the node), interleaved, the order alternating per
    question, greedy so both generate the same tokens. Wall time and time to
    first token (first answer text: a synthesis token or the answer) per
    path; ratios API / Swarm (target <= 1.03).
(2) Load: ``--clients`` (32) concurrent streaming clients (the real
    ``openai`` client) ask through the API for ``--duration`` (60) s; p50 and
    p99 time to first token, answers, failures and questions lost (no
    answer: an error or no end of stream within the deadline; target 0).

By default it starts one ``dellm-node`` with the default model and the API on
a free loopback port (mDNS off); ``--peer ws://… --http http://…`` uses a
running node instead.

    .venv/bin/python scripts/bench_api.py [--questions 20] [--clients 32] [--duration 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
from harness.data import questions  # the same question list as bench_node
from harness.options import add_ask_options
from harness.report import make_progress
from harness.stats import percentile  # linear interpolation, as soak.py reports its latencies

from dellm_p2p.runtime import run, setup_logging

TARGET_RATIO = 1.03


progress = make_progress("bench_api")


async def via_swarm(swarm, question: str, options: dict) -> tuple[float, float | None]:
    """Wall time and time to the first answer text [ms] of one question through ``Swarm.stream``."""
    from dellm_p2p.coordinator.events import Final, SynthesisToken

    started, first = time.perf_counter(), None
    async for event in swarm.stream(question, **options):
        if first is None and (
            (isinstance(event, SynthesisToken) and event.text) or (isinstance(event, Final) and event.answer.text)
        ):
            first = (time.perf_counter() - started) * 1000
    return (time.perf_counter() - started) * 1000, first


async def via_api(api, question: str, options: dict, max_tokens: int) -> tuple[float, float | None, bool]:
    """Wall time, time to the first content [ms], and whether the stream ended properly, through the API."""
    started, first, finished = time.perf_counter(), None, False
    stream = await api.chat.completions.create(
        model="dellm",
        messages=[{"role": "user", "content": question}],
        stream=True,
        temperature=options["temperature"],
        max_tokens=max_tokens,
        extra_body={"dellm": {k: v for k, v in options.items() if k != "temperature" and k != "max_tokens"}},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = (time.perf_counter() - started) * 1000
        if chunk.choices and chunk.choices[0].finish_reason:
            finished = True
    return (time.perf_counter() - started) * 1000, first, finished


async def overhead(node_url: str, http_url: str, items: list[str], options: dict, max_tokens: int) -> dict:
    import openai

    from dellm_p2p.swarm import Swarm

    rows = {"swarm": {"wall": [], "ttft": []}, "api": {"wall": [], "ttft": []}}
    api = openai.AsyncOpenAI(base_url=http_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    async with Swarm(peers=[node_url], mdns=False, discover_timeout_s=30) as swarm:
        swarm_options = options | {"max_tokens": max_tokens}
        await via_swarm(swarm, items[0], swarm_options)  # warm-up, untimed
        await via_api(api, items[0], options, max_tokens)
        for number, question in enumerate(items):
            order = ("swarm", "api") if number % 2 == 0 else ("api", "swarm")
            for path in order:
                if path == "swarm":
                    wall, first = await via_swarm(swarm, question, swarm_options)
                else:
                    wall, first, _ = await via_api(api, question, options, max_tokens)
                rows[path]["wall"].append(wall)
                if first is not None:
                    rows[path]["ttft"].append(first)
            progress(f"overhead {number + 1}/{len(items)}")
    await api.close()
    medians = {path: {k: statistics.median(v) if v else None for k, v in row.items()} for path, row in rows.items()}
    ratios = {
        k: (medians["api"][k] / medians["swarm"][k]) if medians["api"][k] and medians["swarm"][k] else None
        for k in ("wall", "ttft")
    }
    return {"questions": len(items), "median_ms": medians, "ratio_api_over_swarm": ratios}


async def load(http_url: str, items: list[str], options: dict, max_tokens: int, clients: int, duration_s: float,
               deadline_s: float) -> dict:  # fmt: skip
    import openai

    api = openai.AsyncOpenAI(base_url=http_url + "/v1", api_key="unused", max_retries=0, timeout=deadline_s)
    ttfts: list[float] = []
    walls: list[float] = []
    counts = {"sent": 0, "answered": 0, "failed": 0, "hung": 0}
    errors: dict[str, int] = {}
    stop_at = time.monotonic() + duration_s

    async def client(number: int) -> None:
        turn = number
        while time.monotonic() < stop_at:
            question = items[turn % len(items)]
            turn += clients
            counts["sent"] += 1
            try:
                async with asyncio.timeout(deadline_s):
                    wall, first, finished = await via_api(api, question, options, max_tokens)
            except TimeoutError:
                counts["hung"] += 1
                continue
            except Exception as exc:
                counts["failed"] += 1
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1
                continue
            if not finished:
                counts["failed"] += 1
                errors["stream ended without finish_reason"] = errors.get("stream ended without finish_reason", 0) + 1
                continue
            counts["answered"] += 1
            walls.append(wall)
            if first is not None:
                ttfts.append(first)

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for number in range(clients):
            group.create_task(client(number))
        while time.monotonic() < stop_at:
            await asyncio.sleep(min(10.0, max(0.1, stop_at - time.monotonic())))
            progress(f"load: {counts['answered']} answered, {counts['failed']} failed, {counts['hung']} hung")
    elapsed = time.monotonic() - started
    await api.close()
    return {
        "clients": clients,
        "duration_s": duration_s,
        "elapsed_s": round(elapsed, 1),
        **counts,
        "lost": counts["failed"] + counts["hung"],
        "errors": errors,
        "answers_per_s": round(counts["answered"] / elapsed, 3),
        "ttft_ms": {"p50": percentile(ttfts, 50), "p99": percentile(ttfts, 99)},
        "wall_ms": {"p50": percentile(walls, 50), "p99": percentile(walls, 99)},
    }


def fmt(value: float | None, unit: str = " ms") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def report(result: dict) -> str:
    o, lo = result["overhead"], result["load"]
    m, r = o["median_ms"], o["ratio_api_over_swarm"]

    def ratio(key: str) -> str:
        value = r[key]
        return "-" if value is None else f"{value:.3f} ({'meets' if value <= TARGET_RATIO else 'misses'} <= 1.03)"

    lines = [
        f"HTTP API benchmark ({result['node']}; options {result['options']}, max_tokens {result['max_tokens']})",
        "",
        f"(1) the same {o['questions']} questions, medians:",
        "| path | wall | time to first token |",
        "| --- | ---: | ---: |",
        f"| Swarm.stream (coordinator in the client) | {fmt(m['swarm']['wall'])} | {fmt(m['swarm']['ttft'])} |",
        f"| POST /v1/chat/completions, stream (coordinator in the node) | {fmt(m['api']['wall'])} "
        f"| {fmt(m['api']['ttft'])} |",
        f"| ratio API / Swarm | {ratio('wall')} | {ratio('ttft')} |",
        "",
        f"(2) {lo['clients']} concurrent streaming clients for {lo['duration_s']:g} s ({lo['elapsed_s']:g} s with the "
        f"last answers): {lo['sent']} sent, {lo['answered']} answered ({lo['answers_per_s']:.2f}/s), "
        f"{lo['failed']} failed, {lo['hung']} hung: {lo['lost']} lost",
        f"    time to first token p50 {fmt(lo['ttft_ms']['p50'])}, p99 {fmt(lo['ttft_ms']['p99'])}; "
        f"wall p50 {fmt(lo['wall_ms']['p50'])}, p99 {fmt(lo['wall_ms']['p99'])}",
    ]
    lines += [f"    error: {count} × {reason}" for reason, count in lo["errors"].items()]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict:
    from dellm_p2p.local import NodeProcess, stop_all

    items = questions(args.questions)
    options = {"temperature": 0.0, "redundancy": args.redundancy, "decompose": args.decompose}
    node = None
    try:
        if args.peer:
            node_url, http_url, where = args.peer, args.http, f"node {args.peer}"
        else:
            progress("starting a dellm-node with the default model and the HTTP API")
            node = NodeProcess(["--name", "bench-api", "--no-mdns", "--http-port", "0", "--max-concurrency", "64"])
            await asyncio.to_thread(node.wait_ready, 900)
            node_url, http_url, where = node.url, node.http_url, "one local node, default model"
        progress(f"overhead: {len(items)} questions, both paths")
        result = {"node": where, "options": options, "max_tokens": args.max_tokens}
        result["overhead"] = await overhead(node_url, http_url, items, options, args.max_tokens)
        progress(f"load: {args.clients} clients for {args.duration:g} s")
        result["load"] = await load(http_url, items, options, args.max_tokens, args.clients, args.duration,
                                    args.deadline)  # fmt: skip
        return result
    finally:
        if node is not None:
            await asyncio.to_thread(stop_all, [node])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", help="ws:// URL of a running node (with --http); default: start one")
    parser.add_argument("--http", help="http://host:port of that node's API")
    parser.add_argument("--questions", type=int, default=20, help="questions of the overhead comparison")
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients of the load test")
    parser.add_argument("--duration", type=float, default=60.0, help="load test length [s]")
    add_ask_options(parser, max_tokens=32, deadline_s=300.0)
    parser.add_argument("--decompose", choices=["rules", "none"], default="rules")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if bool(args.peer) != bool(args.http):
        parser.error("--peer and --http go together")
    if args.questions < 1 or args.clients < 1 or args.duration <= 0:
        parser.error("--questions and --clients must be positive, --duration > 0")
    setup_logging(-1)
    result = run(main_async(args))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
