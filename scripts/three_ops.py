#!/usr/bin/env python
"""A held-out set of three-operation arithmetic questions, and the before/after report of issue 24's number check.

::

    .venv/bin/python scripts/three_ops.py generate --out bench-results/three_ops --count 60
    .venv/bin/python scripts/eval.py --dataset three_ops --data-dir bench-results/three_ops \\
        --ks 5 --strategies majority --ask-ks 5 --baseline-prompt pipeline --json bench-results/eval-three_ops.json
    .venv/bin/python scripts/three_ops.py report bench-results/eval-three_ops.json

``generate`` writes ``three_ops.jsonl`` (``question``, ``answer``): seeded,
generated here (not taken from ../shared/data), one sentence each so the
coordinator asks them program-aided. Five forms with single-digit operands,
in the style of GPT-3's three-operation arithmetic: "What is (4 - 7) - 3?",
"What is 4 - 7 * 3?", and three word forms ("If I have 3 apples, buy 5
more and eat 2, how many apples do I have?").

``report`` reads an ``eval.py`` result of that set and scores, on the same
collected replies (the greedy anchor and the samples): one program-aided
greedy reply (the anchor), and the anchored majority of k replies with the
vote keys read *without* the missing-number rule (``program_answer``: before
issue 24) and *with* it (``candidate_answer``: now). Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dellm_p2p.coordinator.program import candidate_answer, evaluate, program_answer  # noqa: E402
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation  # noqa: E402
from dellm_p2p.coordinator.vote import apply_anchor, vote  # noqa: E402

THINGS = ("apples", "pens", "books", "stamps", "marbles", "cookies")
OPS = ("+", "-", "*")


def questions(count: int, seed: int = 24) -> list[dict[str, str]]:
    """``count`` questions ``{"question", "answer"}`` (answer: the integer as text), cycling through five forms."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < count:
        form = len(out) % 5
        a, b, c = (rng.randint(1, 9) for _ in range(3))
        if form == 0:
            o1, o2 = rng.choice(OPS), rng.choice(OPS)
            text, value = f"What is ({a} {o1} {b}) {o2} {c}?", int(evaluate(f"({a} {o1} {b}) {o2} {c}"))
        elif form == 1:
            o1, o2 = rng.choice(OPS), rng.choice(OPS)
            text, value = f"What is {a} {o1} {b} {o2} {c}?", int(evaluate(f"{a} {o1} {b} {o2} {c}"))
        elif form == 2:
            thing = rng.choice(THINGS)
            c = rng.randint(1, a + b)
            text, value = f"If I have {a} {thing}, buy {b} more and eat {c}, how many {thing} do I have?", a + b - c
        elif form == 3:
            thing = rng.choice(THINGS)
            c = rng.randint(1, a * b)
            text = f"If I have {a} bags of {b} {thing} each and lose {c} {thing}, how many {thing} do I have?"
            value = a * b - c
        else:
            thing = rng.choice(THINGS)
            text = f"How many {thing} are there in {a} boxes of {b} {thing} plus {c} loose {thing}?"
            value = a * b + c
        out.append({"question": text, "answer": str(value)})
    return out


def _candidate(row: dict[str, Any], chunk: Chunk, rule: bool) -> Candidate:
    if rule:
        key, display, expression = candidate_answer(row["text"], chunk)
    else:
        key, display, expression = program_answer(row["text"])
    return Candidate(row.get("peer", "p"), row["text"], key, display, greedy=row["greedy"], expression=expression)


def score_record(record: dict[str, Any], k: int) -> dict[str, bool | None]:
    """Greedy, vote before and vote after on one eval record (``None`` each when it has no replies)."""
    rows = record.get("candidates") or []
    if not rows:
        return {"greedy": None, "before": None, "after": None}
    chunk = Chunk("c1", record["question"], Operation.MATH)
    gold = record["gold"]
    out: dict[str, bool | None] = {}
    greedy = next((r for r in rows if r["greedy"]), rows[0])
    out["greedy"] = program_answer(greedy["text"])[0] == gold
    for name, rule in (("before", False), ("after", True)):
        candidates = [_candidate(r, chunk, rule) for r in rows[:k]]
        result = apply_anchor(vote(candidates, "majority"), candidates)
        winner = result.winner
        value = winner.answer if winner is not None and winner.answer is not None else (winner and winner.display)
        out[name] = value == gold
    return out


def report(records: Sequence[dict[str, Any]], k: int) -> str:
    """Markdown: accuracy of greedy / before / after, and the questions where they differ."""
    scored = [(r, score_record(r, k)) for r in records]
    scored = [(r, s) for r, s in scored if s["greedy"] is not None]
    n = len(scored)
    lines = [f"{n} questions, k = {k} (the greedy anchor + {k - 1} samples at the eval's temperature)", ""]
    lines += ["| method | right |", "| --- | --- |"]
    labels = {
        "greedy": "one program-aided greedy reply",
        "before": "anchored majority, no number check",
        "after": "anchored majority, number check",
    }
    for key, label in labels.items():
        right = sum(bool(s[key]) for _, s in scored)
        lines.append(f"| {label} | {right}/{n} ({100 * right / max(n, 1):.1f} %) |")
    for a, b in (("before", "greedy"), ("after", "greedy"), ("after", "before")):
        won = sum(bool(s[a]) and not s[b] for _, s in scored)
        lost = sum(bool(s[b]) and not s[a] for _, s in scored)
        lines.append(f"\n{a} vs {b}: +{won} / -{lost}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write three_ops.jsonl")
    gen.add_argument("--out", type=Path, default=REPO / "bench-results" / "three_ops")
    gen.add_argument("--count", type=int, default=60)
    gen.add_argument("--seed", type=int, default=24)
    rep = sub.add_parser("report", help="greedy vs the vote before/after the number check, from an eval.py JSON")
    rep.add_argument("result", type=Path)
    rep.add_argument("-k", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "generate":
        if args.count < 1:
            parser.error("--count must be at least 1")
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "three_ops.jsonl"
        path.write_text("".join(json.dumps(q) + "\n" for q in questions(args.count, args.seed)), encoding="utf-8")
        print(f"wrote {args.count} questions to {path}")
        return 0
    try:
        data = json.loads(args.result.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        parser.error(f"cannot read {args.result}: {exc}")
    print(report(data.get("records", []), args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
