#!/usr/bin/env python
"""The swarm teaches its nodes (issue 23), measured on real nodes with the default model.

::

    flock /tmp/dellm-heavy.lock .venv/bin/python scripts/bench_learn.py --train-questions 500 --eval 200

Arithmetic (the default section):

1. starts ``--nodes`` (3) ``dellm-node`` processes (default model, no mDNS);
2. asks the swarm (:class:`~dellm_p2p.swarm.Swarm` with default options:
   program-aided MATH, anchored majority of 5) ``--train-questions``
   addition/subtraction questions that the script generates (seeded), none of
   them a pair of the evaluation questions scored below; the swarm keeps its
   consensus in node A's record store (the same ``on_answer`` hook a node's
   HTTP gateway uses);
3. scores node A alone, greedy, with the plain prompt (the question as the
   user's message) on the first ``--eval`` questions of
   ``../shared/data/two_digit_addition.jsonl``;
4. runs ``dellm learn train --threads 1`` on A's state directory (its own
   process, one core): training time, adapter size, the guard's decision;
5. restarts A (it serves the adopted adapter, announced ``<model>:<id>``) and
   scores it again on the same questions;
6. node B fetches the adapter from A over the peer protocol (``dellm learn
   fetch``: signature, hash, size, then the guard on B), restarts, and answers
   the same questions: the share of identical replies with A.

Not measured by this script yet: the facts section of issue 23 (capitals in
halves A/B, one node with an adapter against the swarm's default accuracy and
latency on half A, no forgetting on half B).

Prints a JSON summary; the full result goes to ``--json``
(``bench-results/bench-learn.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dellm_p2p.client import PeerClient  # noqa: E402
from dellm_p2p.coordinator.extract import extract_number  # noqa: E402
from dellm_p2p.learn.adapters import learn_dir  # noqa: E402
from dellm_p2p.learn.records import RecordStore  # noqa: E402
from dellm_p2p.local import NodeProcess, stop_all  # noqa: E402
from dellm_p2p.protocol import SamplingParams  # noqa: E402
from dellm_p2p.swarm import Swarm  # noqa: E402

DELLM = [sys.executable, "-m", "dellm_p2p.cli.main"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def eval_addition(data_dir: Path, limit: int) -> list[tuple[str, str]]:
    """(question, gold) of the first ``limit`` rows of two_digit_addition.jsonl (the ``Q: …`` line)."""
    rows = [json.loads(line) for line in (data_dir / "two_digit_addition.jsonl").read_text().splitlines()[:limit]]
    return [(re.search(r"Q: (.*?)\n", r["context"]).group(1), r["completion"].strip()) for r in rows]


def training_questions(count: int, exclude: set[tuple[int, int]], seed: int = 23) -> list[str]:
    """``count`` distinct two-digit addition/subtraction questions, none an evaluation pair (either order)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        a, b, op = rng.randrange(100), rng.randrange(100), rng.choice(("plus", "minus"))
        if (a, b) in exclude or (b, a) in exclude or (a, b, op) in seen:
            continue
        seen.add((a, b, op))
        out.append(f"What is {a} {op} {b}?")
    return out


def pairs(questions: list[tuple[str, str]]) -> set[tuple[int, int]]:
    out = set()
    for q, _ in questions:
        if m := re.search(r"(\d+) plus (\d+)", q):
            out.add((int(m[1]), int(m[2])))
    return out


def start(name: str, state: Path, port: int, peers: list[str], cpu: int) -> NodeProcess:
    args = ["--name", name, "--state-dir", str(state), "--port", str(port), "--no-mdns", "--cpu-bind", str(cpu)]
    for peer in peers:
        args += ["--peer", peer]
    return NodeProcess(args)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ask_all(urls: list[str], questions: list[str], store: RecordStore, concurrency: int) -> dict[str, Any]:
    """Ask the swarm every question (default options), recording its consensus in ``store``."""
    started, failures, latencies = time.perf_counter(), 0, []
    async with Swarm(peers=urls, mdns=False, records=store, discover_timeout_s=30) as swarm:
        gate = asyncio.Semaphore(concurrency)

        async def one(q: str) -> None:
            nonlocal failures
            async with gate:
                t = time.perf_counter()
                try:
                    await swarm.ask(q, decompose="none")
                    latencies.append(time.perf_counter() - t)
                except Exception as exc:  # a failed question is counted, the run goes on
                    failures += 1
                    log(f"question failed: {q!r}: {exc}")

        done = 0
        for batch in range(0, len(questions), 50):
            await asyncio.gather(*(one(q) for q in questions[batch : batch + 50]))
            done += len(questions[batch : batch + 50])
            log(f"swarm answered {done}/{len(questions)}")
    return {"questions": len(questions), "failures": failures, "seconds": round(time.perf_counter() - started, 1),
            "mean_latency_s": round(sum(latencies) / max(1, len(latencies)), 3)}  # fmt: skip


async def greedy(url: str, questions: list[str], max_tokens: int = 32) -> tuple[list[str], list[float], str]:
    """One node's greedy replies to the plain questions, their latencies [s], and the model it announces."""
    replies, latencies = [], []
    async with await PeerClient.connect(url) as client:
        model = client.remote.model or ""
        gate = asyncio.Semaphore(8)

        async def one(q: str) -> tuple[str, float]:
            async with gate:
                t = time.perf_counter()
                result = await client.complete(messages=[{"role": "user", "content": q}],
                                               params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
                                               timeout_s=300)  # fmt: skip
                return result.text, time.perf_counter() - t

        for text, seconds in await asyncio.gather(*(one(q) for q in questions)):
            replies.append(text)
            latencies.append(seconds)
    return replies, latencies, model


def learn_cli(*args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([*DELLM, "learn", *args], capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--train-questions", type=int, default=500)
    parser.add_argument("--eval", type=int, default=200, help="evaluation questions scored")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "bench-learn.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dellm-bench-learn-"))
    states = {n: work / n for n in "abc"}
    ports = {n: free_port() for n in "abc"}
    urls = {n: f"ws://127.0.0.1:{p}" for n, p in ports.items()}
    nodes: dict[str, NodeProcess] = {}
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "work": str(work)}

    def boot(n: str) -> None:
        nodes[n] = start(f"learn-{n}", states[n], ports[n], [u for m, u in urls.items() if m != n], "abc".index(n) % 2)

    try:
        for n in "abc":
            boot(n)
        for n in "abc":
            log(f"node {n}: {nodes[n].wait_ready(900)}")
        evalset = eval_addition(args.data_dir, args.eval)
        golds = [g for _, g in evalset]
        questions = [q for q, _ in evalset]
        train_qs = training_questions(args.train_questions, pairs(evalset))
        store_a = RecordStore(learn_dir(states["a"]))
        result["swarm"] = asyncio.run(ask_all(list(urls.values()), train_qs, store_a, args.concurrency))
        records = list(store_a.read())
        result["records"] = {"kept": len(records), "program": sum(r.program for r in records)}
        log(f"records: {result['records']}")
        before, lat_before, model_before = asyncio.run(greedy(urls["a"], questions))
        acc_before = sum(extract_number(r) == g for r, g in zip(before, golds, strict=True)) / len(golds)
        log(f"node A before: {acc_before:.1%} ({model_before})")
        rc, text, seconds = learn_cli("train", "--state-dir", str(states["a"]), "--threads", "1",
                                      "--epochs", str(args.epochs), "--lr", str(args.lr), "--json")  # fmt: skip
        log(f"train rc={rc} in {seconds:.0f} s:\n{text[-1500:]}")
        trained = json.loads(text[text.index("{") : text.rindex("}") + 1]) if rc == 0 else {}
        result["train"] = {"rc": rc, "wall_s": round(seconds, 1), **trained}
        nodes["a"].stop(60)
        boot("a")
        log(f"node A restarted: {nodes['a'].wait_ready(900)}")
        after, lat_after, model_after = asyncio.run(greedy(urls["a"], questions))
        acc_after = sum(extract_number(r) == g for r, g in zip(after, golds, strict=True)) / len(golds)
        log(f"node A after: {acc_after:.1%} ({model_after})")
        result["arithmetic"] = {
            "eval": len(golds), "before": acc_before, "after": acc_after, "model_before": model_before,
            "model_after": model_after, "mean_latency_before_s": sum(lat_before) / len(lat_before),
            "mean_latency_after_s": sum(lat_after) / len(lat_after),
            "samples": [[q, a] for q, a in zip(questions[:5], after[:5], strict=True)],
        }  # fmt: skip
        rc, text, seconds = learn_cli("fetch", "--state-dir", str(states["b"]), "--peer", urls["a"])
        log(f"fetch rc={rc} in {seconds:.0f} s:\n{text[-1200:]}")
        result["fetch"] = {"rc": rc, "wall_s": round(seconds, 1), "log": text[-1200:]}
        if rc == 0:
            nodes["b"].stop(60)
            boot("b")
            log(f"node B restarted: {nodes['b'].wait_ready(900)}")
            replies_b, _, model_b = asyncio.run(greedy(urls["b"], questions))
            same = sum(x.strip() == y.strip() for x, y in zip(after, replies_b, strict=True)) / len(after)
            acc_b = sum(extract_number(r) == g for r, g in zip(replies_b, golds, strict=True)) / len(golds)
            result["fetch"] |= {"model_b": model_b, "same_as_trainer": same, "accuracy_b": acc_b}
            log(f"node B ({model_b}): same replies as A {same:.1%}, accuracy {acc_b:.1%}")
    finally:
        codes = stop_all(list(nodes.values()), 60)
        log(f"nodes stopped: {codes}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        log(f"result in {args.json}")
    print(json.dumps({k: result.get(k) for k in ("swarm", "records", "arithmetic", "fetch")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
