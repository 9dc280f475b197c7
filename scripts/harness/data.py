"""Questions the benchmarks ask: the evaluation data's capitals, and a fixed list of short questions."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO.parent / "shared" / "data"  # the evaluation data, never copied into the repo
DATA_FILE = "capitals.jsonl"


def load_questions(data_dir: Path) -> list[tuple[str, str]]:
    """``(question, capital)`` pairs of ``capitals.jsonl``. Raises ``OSError``, ``ValueError``, ``KeyError``."""
    pairs = []
    with (data_dir / DATA_FILE).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                pairs.append((row["question"].strip(), row["answer"].strip()))
    if not pairs:
        raise ValueError(f"{data_dir / DATA_FILE} has no questions")
    return pairs


def fold(text: str) -> str:
    """Case- and accent-insensitive form (the data README's rule for capitals)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(plain.casefold().replace("’", "'").split())


COUNTRIES = [
    "France", "Germany", "Italy", "Spain", "Portugal", "Japan", "China", "India", "Brazil", "Canada",
    "Australia", "Egypt", "Kenya", "Mexico", "Argentina", "Peru", "Chile", "Norway", "Sweden", "Finland",
    "Poland", "Greece", "Turkey", "Russia", "Ireland", "Austria", "Belgium", "Netherlands", "Denmark", "Hungary",
    "Thailand", "Vietnam", "Indonesia", "Nigeria", "Morocco", "Colombia", "Cuba", "Iran", "Iraq", "Israel",
    "Switzerland", "Ukraine", "Romania", "Bulgaria", "Croatia", "Serbia", "Czechia", "Slovakia", "Ghana", "Ethiopia",
]  # fmt: skip
TEMPLATES = ["What is the capital of {}?", "Which city is the capital of {}? Answer briefly."]


def questions(count: int) -> list[str]:
    """``count`` different short questions (capitals of countries), always the same list."""
    pool = [t.format(c) for t in TEMPLATES for c in COUNTRIES]
    if count > len(pool):
        raise SystemExit(f"bench_node: at most {len(pool)} different questions are available")
    return pool[:count]
