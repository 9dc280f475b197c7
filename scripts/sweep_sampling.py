#!/usr/bin/env python
"""Which sampling settings should the swarm use? One engine, no network.

::

    .venv/bin/python scripts/sweep_sampling.py                           # capitals, T 0.5 and 0.7, top-p 1.0 and 0.9
    .venv/bin/python scripts/sweep_sampling.py --temperatures 0.3,0.5 --top-p 1 --limit 60
    .venv/bin/python scripts/sweep_sampling.py --system "Answer in one short sentence."

Loads the default model (or ``--model``) in-process with the product's
:class:`~dellm_p2p.engine.vllm_engine.VllmEngine`, sends every question of the data set
(``scripts/eval.py``'s loader and scoring) with the coordinator's own chunk
prompt, once greedy and ``--samples`` times per setting, and scores each
setting the way the swarm would use it: the product's answer extraction and
every synchronous vote (majority, weighted, borda, ranking) over the first k
samples, k in ``--ks``, plus one sample alone and pass@k. Only settings a
coordinator can send are swept (temperature and top-p of the wire
protocol's ``SamplingParams``; ``--system`` adds a system message).

This answers a narrower question than ``eval.py`` (no peers, no routing,
no early stop, no rewards), about ten times faster: the samples of a
question all come from one engine, as the swarm's do when every peer runs
the same model. Prints one markdown table; ``--json`` keeps every reply.
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
    if str(path) not in sys.path:  # run as a file from anywhere
        sys.path.insert(0, str(path))

from eval import DATA_DIR, DATASETS, Item, load_items, mcnemar_p, score  # noqa: E402
from harness.report import Failed, one_line_errors  # noqa: E402
from harness.streams import collect_samples  # noqa: E402

from dellm_p2p.coordinator.decompose import chunk_prompt, classify  # noqa: E402
from dellm_p2p.coordinator.extract import extract_answer  # noqa: E402
from dellm_p2p.coordinator.types import Candidate, Chunk  # noqa: E402
from dellm_p2p.coordinator.vote import vote  # noqa: E402
from dellm_p2p.protocol import ChatMessage, SamplingParams  # noqa: E402

STRATEGIES = ("majority", "weighted", "borda", "ranking")  # judge needs a second model call per question
TIMEOUT_S = 3600.0  # per request: a whole data set is queued at once (194 capitals x 7 at top-p 0.9: 520 s)


def progress(text: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def messages_for(question: str, system: str | None) -> list[ChatMessage]:
    """The coordinator's chunk prompt for ``question`` as one chunk, after an optional system message."""
    prompt = chunk_prompt(Chunk("c1", question, classify(question)), {})
    head = [ChatMessage(role="system", content=system)] if system else []
    return [*head, ChatMessage(role="user", content=prompt)]


async def sample(engine, item: Item, params: SamplingParams, system: str | None) -> list[dict[str, Any]]:
    """``params.n`` replies to one question: text and per-token logprobs, in choice order."""
    from dellm_p2p.engine import GenerationRequest

    request = GenerationRequest(params, messages=messages_for(item.question, system))
    samples = await collect_samples(engine, request, f"q{item.index}-{id(params)}", TIMEOUT_S)
    return [{"text": text, "logprobs": logprobs} for text, logprobs in samples]


def score_setting(dataset: str, items: Sequence[Item], replies: Sequence[list[dict]], ks: Sequence[int]) -> dict:
    """Per method, the list of per-question right/wrong (methods: one, pass@k, <strategy>@k)."""
    right: dict[str, list[bool]] = {}
    for item, samples in zip(items, replies, strict=True):
        operation = classify(item.question)
        candidates = []
        for i, reply in enumerate(samples):
            key, display = extract_answer(reply["text"], operation, item.question)
            candidates.append(
                Candidate(peer_id=f"s{i}", text=reply["text"], answer=key, display=display,
                          logprobs=reply["logprobs"], sample=i)
            )  # fmt: skip
        correct = [score(dataset, c.text, item.gold) for c in candidates]
        right.setdefault("one", []).append(correct[0])
        for k in ks:
            right.setdefault(f"pass@{k}", []).append(any(correct[:k]))
            for strategy in STRATEGIES:
                result = vote(candidates[:k], strategy)
                won = result.winner is not None and correct[candidates.index(result.winner)]
                right.setdefault(f"{strategy}@{k}", []).append(won)
    return right


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| setting | greedy | " + " | ".join(columns) + " | best vote vs greedy |"
    lines = [head, "|" + " --- |" * (len(columns) + 3)]
    for row in rows:
        cells = [f"{row['accuracy'][c]:.1f}%" for c in columns]
        lines.append(f"| {row['setting']} | {row['greedy']:.1f}% | " + " | ".join(cells) + f" | {row['vs_greedy']} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from dellm_p2p.engine.vllm_engine import VllmEngine
    from dellm_p2p.models import resolve_model

    items = load_items(args.dataset, args.data_dir, args.limit)
    model = await asyncio.to_thread(resolve_model, args.model)  # may convert the GGUF (blocking)
    engine = VllmEngine(model.path, name=model.name)
    progress(f"loading {model.name} into vLLM (about a minute, warm-up included); {len(items)} questions")
    await engine.start()
    try:
        started = time.monotonic()
        greedy_params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
        greedy = await asyncio.gather(*(sample(engine, i, greedy_params, args.system) for i in items))
        greedy_right = [score(args.dataset, g[0]["text"], i.gold) for g, i in zip(greedy, items, strict=True)]
        progress(f"greedy: {100 * sum(greedy_right) / len(items):.1f}% in {time.monotonic() - started:.0f} s")
        settings = []
        for temperature, top_p in itertools.product(args.temperatures, args.top_p):
            t0 = time.monotonic()
            params = SamplingParams(
                max_tokens=args.max_tokens, temperature=temperature, top_p=top_p, n=args.samples, logprobs=True
            )
            replies = await asyncio.gather(*(sample(engine, i, params, args.system) for i in items))
            right = score_setting(args.dataset, items, replies, args.ks)
            accuracy = {m: 100 * sum(v) / len(items) for m, v in right.items()}
            best = max((m for m in right if "@" in m and not m.startswith("pass")), key=lambda m: accuracy[m])
            b = sum(x and not g for x, g in zip(right[best], greedy_right, strict=True))
            c = sum(g and not x for x, g in zip(right[best], greedy_right, strict=True))
            label = f"T={temperature:g} top_p={top_p:g}"
            settings.append({
                "setting": label, "temperature": temperature, "top_p": top_p, "wall_s": round(time.monotonic() - t0, 1),
                "greedy": 100 * sum(greedy_right) / len(items), "accuracy": accuracy, "best": best,
                "vs_greedy": f"{best} +{b}/−{c}, McNemar p = {mcnemar_p(b, c):.2f}",
                "replies": [[r["text"] for r in q] for q in replies],
            })  # fmt: skip
            progress(f"{label}: {best} {accuracy[best]:.1f}% in {settings[-1]['wall_s']:.0f} s")
    finally:
        await engine.close()
    columns = ["one"] + [f"{m}@{k}" for k in args.ks for m in ("pass", *STRATEGIES)]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": args.dataset, "questions": len(items), "model": model.name, "samples": args.samples,
        "max_tokens": args.max_tokens, "system": args.system, "ks": args.ks,
        "greedy_replies": [g[0]["text"] for g in greedy], "settings": settings,
        "table": table(settings, columns),
    }  # fmt: skip


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="capitals")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    p.add_argument("--model", default=None, help="model directory or name (default: the embedded default model)")
    p.add_argument("--temperatures", type=_floats, default=[0.5, 0.7], help="comma-separated (default 0.5,0.7)")
    p.add_argument("--top-p", type=_floats, default=[1.0, 0.9], help="comma-separated (default 1.0,0.9)")
    p.add_argument("--samples", type=int, default=7, help="samples per question and setting (default 7)")
    p.add_argument("--ks", type=lambda t: [int(v) for v in t.split(",")], default=None, help="default 3,5,7")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--system", default=None, help="a system message before the chunk prompt")
    p.add_argument("--json", type=Path, default=None, help="default bench-results/sweep-<dataset>.json")
    args = p.parse_args(argv)
    args.ks = args.ks or [k for k in (3, 5, 7) if k <= args.samples] or [args.samples]
    if not 1 <= args.samples <= 16 or any(not 1 <= k <= args.samples for k in args.ks):
        p.error("--samples must be in 1..16 and every k in 1..--samples")
    if any(not 0 < t <= 2 for t in args.temperatures) or any(not 0 < v <= 1 for v in args.top_p):
        p.error("temperatures must be in (0, 2] and top-p values in (0, 1]")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    args.json = args.json or REPO / "bench-results" / f"sweep-{args.dataset}.json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = one_line_errors("sweep_sampling", lambda: asyncio.run(run(args)))
    except Failed as failed:
        return failed.code
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"sampling sweep · {result['dataset']} · {result['questions']} questions · {result['model']} · "
          f"{result['samples']} samples per setting · system: {result['system'] or '(none)'}")  # fmt: skip
    print(result["table"])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
