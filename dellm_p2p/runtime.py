"""Event-loop set-up shared by the command-line programs."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import sys
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Set by quiet_third_party(); processes spawned from ours (vLLM's engine core) inherit it.
_QUIET_ENV = "DELLM_QUIET_THIRD_PARTY"
# PyTorch deprecation that vLLM's Triton dispatcher trips over on import: not ours to fix.
_REDUCE_OP_WARNING = "`torch.distributed.reduce_op` is deprecated"


M_ARENA_MAX = -8  # glibc malloc.h: mallopt parameter for the number of malloc arenas
NODE_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = NODE_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas of this process at ``arenas`` (``mallopt(M_ARENA_MAX)``); True if set.

    glibc gives threads their own arenas (up to 8 per core), each reserving
    64 MiB heaps that fill as its thread allocates. A node's threads (the
    executor that renders prompts with the tokenizer, the tokenizer's own
    pool) came and went under load, and the node process grew in steps of
    about 44 MiB, one per new arena, long after warm-up (issue 16, the
    30-minute soak in README Results). Call it before any thread starts.
    Does nothing (False) off glibc or when ``MALLOC_ARENA_MAX`` is set: then
    glibc has already read the operator's choice.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl or no libc.so.6: leave the allocator alone
        return False


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
        quiet_third_party()


def quiet_third_party() -> None:
    """Silence what vLLM, PyTorch, transformers and tqdm print on every start at default verbosity.

    Progress bars (weight loading, model conversion), PyTorch's C++
    warnings (e.g. "NUMA binding: Using MEMBIND policy") and a PyTorch
    deprecation warning raised inside vLLM. Set through the environment as
    well, because vLLM spawns its engine core as a fresh interpreter: that
    process imports our main module again (without running it), and
    :func:`_quiet_this_process` then runs there on import of this module,
    before vLLM logs its first warning. Variables the user set win.
    """
    for key, value in {
        "TQDM_DISABLE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TORCH_CPP_LOG_LEVEL": "ERROR",
        _QUIET_ENV: "1",
    }.items():
        os.environ.setdefault(key, value)
    env_filter = f"ignore:{_REDUCE_OP_WARNING}:FutureWarning"
    current = os.environ.get("PYTHONWARNINGS", "")
    if env_filter not in current:
        os.environ["PYTHONWARNINGS"] = f"{current},{env_filter}" if current else env_filter
    _quiet_this_process()


def _quiet_this_process() -> None:
    warnings.filterwarnings("ignore", message=re.escape(_REDUCE_OP_WARNING), category=FutureWarning)
    # Before vLLM configures its logger (from VLLM_LOGGING_LEVEL), import-time warnings would reach
    # logging's last-resort handler on stderr.
    logging.getLogger("vllm").setLevel(logging.ERROR)


if os.environ.get(_QUIET_ENV) == "1":  # a process started by a quiet one (multiprocessing's
    _quiet_this_process()  # parent_process() is not set yet while a spawned child imports its main module)
