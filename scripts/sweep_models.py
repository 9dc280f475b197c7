#!/usr/bin/env python
"""Which model mix and vote rule should a swarm of different models use? One engine at a time, no network.

::

    .venv/bin/python scripts/sweep_models.py --models smollm2-135m,gemma3-270m            # capitals
    .venv/bin/python scripts/sweep_models.py --dataset addition --limit 100 --samples 4
    .venv/bin/python scripts/sweep_models.py --replay bench-results/sweep-models-capitals.json

Loads each model in turn in-process with the product's
:class:`~dellm_p2p.engine.vllm_engine.VllmEngine`, asks every question of the
data set with the coordinator's own prompt for that model
(:func:`~dellm_p2p.coordinator.prompts.build_prompt`: chat for instruct
models, few-shot completion for base models), once greedy and ``--samples``
times at the swarm's temperature, and reads each reply as the coordinator
does (:func:`~dellm_p2p.coordinator.program.candidate_answer`). Then it
*replays* swarms offline: for each mix of models (e.g. two Gemma nodes and one
SmolLM2) it builds the candidates a coordinator would collect at k answers per
chunk (the greedy anchor from the model with the best accuracy estimate, the
samples spread over the nodes) and scores the vote rules on them, against each
model's greedy reply alone. Reliabilities for the model-weighted vote are
estimated without labels, from agreement with the other models' answers on the
same questions (leave-one-model-out, as the swarm's rewards would).

Faster than ``eval.py`` (no peers, no routing, no early stop) and it separates
the vote rule from the network; ``eval.py`` measures the real swarm. Prints a
markdown table; ``--json`` keeps every reply.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from eval import DATA_DIR, DATASETS, Item, load_items, mcnemar_p, score  # noqa: E402
from harness.report import Failed, one_line_errors  # noqa: E402
from harness.streams import collect_samples  # noqa: E402

from dellm_p2p.coordinator.decompose import classify, complexity  # noqa: E402
from dellm_p2p.coordinator.program import candidate_answer  # noqa: E402
from dellm_p2p.coordinator.prompts import build_prompt  # noqa: E402
from dellm_p2p.coordinator.types import Candidate, Chunk  # noqa: E402
from dellm_p2p.coordinator.vote import apply_anchor, majority, model_weight  # noqa: E402
from dellm_p2p.protocol import ChatMessage, SamplingParams  # noqa: E402

TIMEOUT_S = 3600.0


def progress(text: str) -> None:
    print(f"[sweep-models {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def chunk_of(item: Item) -> Chunk:
    operation = classify(item.question)
    return Chunk("c1", item.question, operation, complexity(item.question, operation))


async def ask(engine, model_name: str, item: Item, params: SamplingParams) -> list[dict[str, Any]]:
    """``params.n`` replies of one model to one question, with the product's prompt for that model."""
    from dellm_p2p.engine import GenerationRequest

    chunk = chunk_of(item)
    peer_prompt = build_prompt(chunk, {}, model_name)
    if peer_prompt.prompt is not None:
        params = params.model_copy(update={"stop": list(peer_prompt.stop)})
        request = GenerationRequest(params, prompt=peer_prompt.prompt)
    else:
        request = GenerationRequest(params, messages=[ChatMessage(**m) for m in peer_prompt.messages or []])
    samples = await collect_samples(engine, request, f"q{item.index}-{params.temperature}-{id(params)}", TIMEOUT_S)
    out = []
    for text, logprobs in samples:
        key, display, _ = candidate_answer(text, chunk, True)
        out.append({"text": text, "key": key, "display": display, "logprobs": logprobs})
    return out


async def collect(args: argparse.Namespace, items: list[Item]) -> dict[str, Any]:
    """Greedy and sampled replies of every model (one engine loaded at a time)."""
    from dellm_p2p.engine.vllm_engine import VllmEngine
    from dellm_p2p.models import resolve_model

    replies: dict[str, Any] = {}
    for key in args.models:
        model = await asyncio.to_thread(resolve_model, key)
        engine = VllmEngine(model.path, name=model.name)
        progress(f"loading {model.name}")
        await engine.start()
        try:
            t0 = time.monotonic()
            greedy_p = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logprobs=True)
            sample_p = SamplingParams(
                max_tokens=args.max_tokens, temperature=args.temperature, n=args.samples, logprobs=True
            )
            greedy = await asyncio.gather(*(ask(engine, model.name, i, greedy_p) for i in items))
            samples = await asyncio.gather(*(ask(engine, model.name, i, sample_p) for i in items))
            right = sum(score(args.dataset, g[0]["text"], i.gold) for g, i in zip(greedy, items, strict=True))
            progress(f"{model.name}: greedy {right}/{len(items)} in {time.monotonic() - t0:.0f} s")
            replies[model.name] = {"greedy": [g[0] for g in greedy], "samples": samples}
        finally:
            await engine.close()
    return replies


def estimate_reliability(replies: dict[str, Any], n: int) -> dict[str, float]:
    """Label-free reliability per model: how often its greedy key agrees with the plurality of the
    *other* models' samples on the same question (leave-one-model-out), Beta(1, 1) posterior mean."""
    out = {}
    for model in replies:
        agree = total = 0
        for q in range(n):
            mine = replies[model]["greedy"][q]["key"]
            others = [s["key"] for m in replies if m != model for s in replies[m]["samples"][q] if s["key"]]
            if not mine or not others:
                continue
            top = max(set(others), key=others.count)
            total += 1
            agree += mine == top
        out[model] = (1 + agree) / (2 + total)
    return out


def reward_reliability(data: dict[str, Any], mix: Sequence[str], k: int) -> dict[str, float]:
    """Per model, the swarm's own estimate: how often its ballots agree with the vote's winner where a
    plurality decided (the reward rule; votes the anchor decided earn nothing), Beta(1, 1) posterior mean,
    from a first pass with no model preferred (the first node of ``mix`` anchors, as at a cold start)."""
    agree: dict[str, int] = dict.fromkeys(mix, 0)
    total: dict[str, int] = dict.fromkeys(mix, 0)
    neutral = {m: 0.5 + 1e-9 * (m == mix[0]) for m in mix}
    for candidates in _candidate_sets(data, mix, k, neutral):
        result = apply_anchor(majority(candidates), candidates)
        if result.answer is None or result.anchored:
            continue
        for c in candidates:
            total[c.model] += 1
            agree[c.model] += c.answer == result.answer
    return {m: (1 + agree[m]) / (2 + total[m]) for m in mix}


def _candidate_sets(data: dict[str, Any], mix: Sequence[str], k: int, reliability: dict[str, float]):
    """Per question, the candidates a swarm of ``mix`` nodes collects at ``k`` (anchor: the most reliable model)."""
    replies = data["replies"]
    nodes = len(mix)
    per, extra = divmod(k, nodes)
    anchor_model = max(mix, key=lambda m: reliability[m])
    for q in range(len(data["items"])):
        used: dict[str, int] = {}
        candidates: list[Candidate] = []
        order = sorted(range(nodes), key=lambda i: mix[i] != anchor_model)
        for rank, node in enumerate(order):
            model = mix[node]
            want = per + (1 if rank < extra else 0)
            if rank == 0:
                candidates.append(_cand(replies[model]["greedy"][q], model, f"n{node}", greedy=True))
                want -= 1
            for _ in range(want):
                pool = replies[model]["samples"][q]
                candidates.append(_cand(pool[used.get(model, 0) % len(pool)], model, f"n{node}"))
                used[model] = used.get(model, 0) + 1
        yield candidates


def replay(data: dict[str, Any], mix: Sequence[str], k: int, reliability: dict[str, float]) -> dict[str, list[bool]]:
    """Right/wrong per question for each vote rule over the candidates a swarm of ``mix`` nodes collects at ``k``."""
    items = [Item(**i) for i in data["items"]]
    right: dict[str, list[bool]] = {}
    for item, candidates in zip(items, _candidate_sets(data, mix, k, reliability), strict=True):
        correct = [score(data["dataset"], c.text, item.gold) for c in candidates]
        for rule in ("majority", "model-weighted"):
            for c in candidates:
                c.weight = model_weight(reliability[c.model]) if rule == "model-weighted" else 1.0
            if rule == "model-weighted":  # as the pipeline does: relative to the heaviest ballot, in (0, 1]
                top = max(c.weight for c in candidates)
                for c in candidates:
                    c.weight /= top
            result = apply_anchor(majority(candidates), candidates)
            won = result.winner is not None and correct[candidates.index(result.winner)]
            right.setdefault(rule, []).append(won)
        right.setdefault("pass@k", []).append(any(correct))
    return right


def _cand(reply: dict[str, Any], model: str, peer: str, *, greedy: bool = False, weight: float = 1.0) -> Candidate:
    return Candidate(
        peer_id=peer, text=reply["text"], answer=reply["key"], display=reply["display"],
        logprobs=reply["logprobs"], greedy=greedy, model=model, weight=weight,
    )  # fmt: skip


def report(data: dict[str, Any], ks: Sequence[int], max_nodes: int) -> str:
    replies, dataset = data["replies"], data["dataset"]
    items = [Item(**i) for i in data["items"]]
    n = len(items)
    greedy = {
        m: [score(dataset, g["text"], i.gold) for g, i in zip(replies[m]["greedy"], items, strict=True)]
        for m in replies
    }
    best_model = max(greedy, key=lambda m: sum(greedy[m]))
    reliability = estimate_reliability(replies, n)
    lines = [f"{dataset} · {n} questions · T = {data['temperature']:g}", ""]
    lines += [f"- {m} greedy: {100 * sum(v) / n:.1f}% · label-free reliability {reliability[m]:.2f}"
              for m, v in greedy.items()]  # fmt: skip
    lines += ["", "| mix | k | majority | model-weighted | pass@k | weighted vs best single |"]
    lines += ["|---|---|---|---|---|---|"]
    models = list(replies)
    mixes = [
        mix for size in range(1, max_nodes + 1)
        for mix in itertools.combinations_with_replacement(models, size)
    ]  # fmt: skip
    for mix in mixes:
        for k in ks:
            right = replay(data, mix, k, reward_reliability(data, mix, k) if len(set(mix)) > 1 else reliability)
            w = right["model-weighted"]
            b = sum(x and not g for x, g in zip(w, greedy[best_model], strict=True))
            c = sum(g and not x for x, g in zip(w, greedy[best_model], strict=True))
            cells = [f"{100 * sum(right[r]) / n:.1f}%" for r in ("majority", "model-weighted", "pass@k")]
            vs = f"+{b}/−{c} (p = {mcnemar_p(b, c):.2f})"
            lines.append(f"| {' + '.join(mix)} | {k} | " + " | ".join(cells) + f" | {vs} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="capitals")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    p.add_argument("--models", default="smollm2-135m,gemma3-270m", help="comma-separated model names")
    p.add_argument("--samples", type=int, default=6, help="sampled replies per question and model (default 6)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--ks", type=lambda t: [int(v) for v in t.split(",")], default=[3, 5])
    p.add_argument("--max-nodes", type=int, default=3, help="largest mix replayed (default 3)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--replay", type=Path, nargs="+", default=None,
        help="replay saved --json files (of one data set; their models' replies merged) instead of asking",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="default bench-results/sweep-models-<dataset>.json")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not 1 <= args.samples <= 16:
        p.error("--samples must be in 1..16")
    args.json = args.json or REPO / "bench-results" / f"sweep-models-{args.dataset}.json"
    return args


def load_or_collect(args: argparse.Namespace) -> dict[str, Any]:
    """The saved replies of ``--replay`` (merged), or every model's replies collected now and saved."""
    if args.replay:
        files = [json.loads(path.read_text(encoding="utf-8")) for path in args.replay]
        data = files[0]
        for other in files[1:]:
            if other["items"] != data["items"]:
                raise ValueError("the replayed files hold different questions")
            data["replies"].update(other["replies"])
        return data
    items = load_items(args.dataset, args.data_dir, args.limit)
    data = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dataset": args.dataset,
        "temperature": args.temperature, "samples": args.samples,
        "items": [{"index": i.index, "question": i.question, "gold": i.gold} for i in items],
        "replies": asyncio.run(collect(args, items)),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data = one_line_errors("sweep_models", lambda: load_or_collect(args))
    except Failed as failed:
        return failed.code
    print(report(data, args.ks, args.max_nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
