"""What every benchmark writes besides its tables: progress lines on stderr, figures as JSON."""

from __future__ import annotations

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


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to ``path`` (folders created) as indented UTF-8 JSON. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
