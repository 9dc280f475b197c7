"""Event-loop set-up shared by the command-line programs."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings at 0 (errors only at -1), info at 1 (``-v``), debug at 2 (``-vv``).

    vLLM logs errors only by default, warnings with ``-v``, info with ``-vv``.
    """
    levels = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    level = levels.get(max(-1, verbose), logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # vLLM configures its own logger from the environment when imported, and
    # logs to stdout by default: keep stdout for results.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR" if verbose <= 0 else "WARNING" if verbose == 1 else "INFO")
    if verbose < 2:
        for noisy in ("transformers", "websockets", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if verbose <= 0:  # e.g. "Triton is installed, but doesn't include CPU backend" on every start
        logging.getLogger("vllm").setLevel(logging.ERROR)
