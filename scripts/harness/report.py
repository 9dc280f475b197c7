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


def publish(
    result: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    json_path: Path | None,
    progress: Callable[[str], None],
) -> None:
    """Print a benchmark's tables (``report(result)``), then write its figures to ``json_path`` when given."""
    report(result)
    if json_path:
        write_json(json_path, result)
        progress(f"wrote {json_path}")


class Failed(Exception):
    """Raised by :func:`one_line_errors` once it has printed the reason; ``code`` is the exit status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def one_line_errors(tag: str, work: Callable[[], Any]) -> Any:
    """``work()``'s result; Ctrl-C prints ``interrupted`` and any error one line ``<tag>: <Type>: <reason>``
    on stderr (never a traceback), then :class:`Failed` carries the exit status (130 or 1)."""
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise Failed(130) from None
    except Exception as exc:
        print(f"{tag}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise Failed(1) from None
