"""`dellm peers`' second table: what the network learned about each model, per chunk kind."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from ..protocol import ModelFitness


def model_fitness_rows(models: Sequence[ModelFitness]) -> list[dict]:
    """JSON-ready rows: model, kind, agreed, rewards and the posterior mean of agreement.

    ``reliability`` is the Beta(1, 1) posterior mean (1 + agreed) / (2 + rewards),
    the value the coordinator's vote and anchor use (:meth:`FitnessBook.model_posterior`).
    Sorted by kind, then best model first.
    """
    rows = [
        {
            "model": m.model,
            "kind": m.kind,
            "agreed": m.agreed,
            "rewards": m.rewards,
            "reliability": round((1 + m.agreed) / (2 + m.rewards), 4),
        }
        for m in models
    ]
    return sorted(rows, key=lambda r: (r["kind"], -r["reliability"], r["model"]))


def model_fitness_table(models: Sequence[ModelFitness]) -> Table | None:
    """The table of :func:`model_fitness_rows`, or ``None`` when nothing was learned yet."""
    rows = model_fitness_rows(models)
    if not rows:
        return None
    table = Table(title="model fitness by chunk kind (agreement with the vote)")
    for column in ("kind", "model", "agreed / rewards", "reliability"):
        table.add_column(column, justify="right" if column in ("agreed / rewards", "reliability") else "left")
    for r in rows:
        table.add_row(r["kind"], r["model"], f"{r['agreed']} / {r['rewards']}", f"{r['reliability']:.3f}")
    return table
