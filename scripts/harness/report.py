"""What every benchmark prints besides its tables: progress lines on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_progress(tag: str) -> Callable[[str], None]:
    """A function that prints ``[tag HH:MM:SS] message`` to stderr (the benchmark's progress, never its figures)."""

    def progress(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return progress


def parse_sizes(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--sizes`` ("10,100,500") as network sizes N; a bad value ends the program with ``parser.error`` (exit 2)."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes: not a comma-separated list of integers: {text!r}")
    if not sizes or min(sizes) < 2:
        parser.error("--sizes: every N must be at least 2")
    return sizes


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to ``path`` (folders created) as indented UTF-8 JSON. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def add_ask_options(parser: argparse.ArgumentParser, *, max_tokens: int, deadline_s: float) -> None:
    """``--redundancy``, ``--max-tokens`` and ``--deadline``: how a benchmark asks each question."""
    parser.add_argument("--redundancy", type=int, default=3, help="answers per chunk, k (default 3)")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens per answer (default {max_tokens})")
    parser.add_argument(
        "--deadline", type=float, default=deadline_s, help=f"one question's deadline [s] (default {deadline_s:g})"
    )
