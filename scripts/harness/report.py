"""What every benchmark prints besides its tables: progress lines on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def make_progress(tag: str) -> Callable[[str], None]:
    """A function that prints ``[tag HH:MM:SS] message`` to stderr (the benchmark's progress, never its figures)."""

    def progress(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return progress
