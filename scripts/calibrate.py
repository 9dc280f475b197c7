#!/usr/bin/env python
"""Is the low-agreement warning calibrated? Agreement against correctness, from ``scripts/eval.py`` results.

::

    .venv/bin/python scripts/calibrate.py bench-results/calib-capitals.json bench-results/eval-three_ops.json

For each question of each result file, the chunk vote's agreement (share of
the k answers backing the winner) and whether the answer was right, for one
method (``--method``, default ``swarm/k5/majority``: the anchored majority of
the greedy reply and four samples, all five collected; ``ask/k5`` is the
product path, whose early decision may stop before all five arrive). Printed
as markdown:

* a reliability table: per agreement value, how many questions and how many
  of them were right;
* the warning "agreement below t" at each candidate threshold t: how many it
  flags, its precision (flagged answers that were wrong) and recall (wrong
  answers it flagged), and F1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

THRESHOLDS = (0.3, 0.5, 0.7, 0.9, 1.0)


def points(records: Iterable[dict[str, Any]], method: str) -> list[tuple[float, bool]]:
    """``(agreement, correct)`` per question that ``method`` answered with an agreement."""
    out = []
    for record in records:
        entry = record.get("methods", {}).get(method) or {}
        if entry.get("agreement") is None:
            continue
        out.append((float(entry["agreement"]), bool(entry.get("correct"))))
    return out


def reliability(data: Sequence[tuple[float, bool]]) -> list[tuple[float, int, int]]:
    """``(agreement, questions, right)`` per distinct agreement value (rounded to 2 places), ascending."""
    table: dict[float, list[int]] = {}
    for agreement, correct in data:
        row = table.setdefault(round(agreement, 2), [0, 0])
        row[0] += 1
        row[1] += int(correct)
    return [(a, n, r) for a, (n, r) in sorted(table.items())]


def warning_scores(data: Sequence[tuple[float, bool]], threshold: float) -> dict[str, float | int | None]:
    """The warning "agreement < threshold" as a detector of wrong answers: flagged, precision, recall, F1."""
    flagged = [correct for agreement, correct in data if agreement < threshold - 1e-9]
    wrong = sum(not correct for _, correct in data)
    hits = sum(not correct for correct in flagged)
    precision = hits / len(flagged) if flagged else None
    recall = hits / wrong if wrong else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"flagged": len(flagged), "hits": hits, "wrong": wrong, "precision": precision, "recall": recall, "f1": f1}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def report(named: Sequence[tuple[str, Sequence[tuple[float, bool]]]], thresholds: Sequence[float]) -> str:
    lines = []
    for name, data in named:
        right = sum(c for _, c in data)
        lines += [f"### {name}: {len(data)} questions, {right} right", ""]
        lines += ["| agreement | questions | right | share right |", "| --- | --- | --- | --- |"]
        for agreement, n, r in reliability(data):
            lines.append(f"| {100 * agreement:.0f} % | {n} | {r} | {_pct(r / n)} |")
        header = "| warn when agreement < | flagged | precision (wrong of flagged) | recall (flagged of wrong) | F1 |"
        lines += ["", header]
        lines.append("| --- | --- | --- | --- | --- |")
        for t in thresholds:
            s = warning_scores(data, t)
            lines.append(
                f"| {100 * t:.0f} % | {s['flagged']} | {s['hits']}/{s['flagged']} ({_pct(s['precision'])}) "
                f"| {s['hits']}/{s['wrong']} ({_pct(s['recall'])}) | {s['f1']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="scripts/eval.py JSON results")
    parser.add_argument("--method", action="append", help="default: swarm/k5/majority and ask/k5 (repeatable)")
    args = parser.parse_args(argv)
    methods = args.method or ["swarm/k5/majority", "ask/k5"]
    named = []
    combined: dict[str, list[tuple[float, bool]]] = {m: [] for m in methods}
    for path in args.results:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"cannot read {path}: {exc}")
        dataset = data.get("dataset") or path.stem
        for method in methods:
            found = points(data.get("records", []), method)
            if found:
                named.append((f"{dataset}, {method}", found))
                combined[method] += found
    for method, found in combined.items():
        if found and len(args.results) > 1:
            named.append((f"all sets, {method}", found))
    print(report(named, THRESHOLDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
