"""Command-line options several benchmarks share: network sizes, how a question is asked, a simulated engine's pace."""

from __future__ import annotations

import argparse


def parse_sizes(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--sizes`` ("10,100,500") as network sizes N; a bad value ends the program with ``parser.error`` (exit 2)."""
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes: not a comma-separated list of integers: {text!r}")
    if not sizes or min(sizes) < 2:
        parser.error("--sizes: every N must be at least 2")
    return sizes


def add_ask_options(parser: argparse.ArgumentParser, *, max_tokens: int, deadline_s: float) -> None:
    """``--redundancy``, ``--max-tokens`` and ``--deadline``: how a benchmark asks each question."""
    parser.add_argument("--redundancy", type=int, default=3, help="answers per chunk, k (default 3)")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens per answer (default {max_tokens})")
    parser.add_argument(
        "--deadline", type=float, default=deadline_s, help=f"one question's deadline [s] (default {deadline_s:g})"
    )


def add_simulation_options(
    parser: argparse.ArgumentParser, *, tokens: int, token_ms: float, first_token_ms: float
) -> None:
    """``--tokens``, ``--token-ms`` and ``--first-token-ms``: how long and how fast a SIMULATED engine answers."""
    parser.add_argument(
        "--tokens", type=int, default=tokens, help=f"simulated answer length [tokens] (default {tokens})"
    )
    parser.add_argument(
        "--token-ms", type=float, default=token_ms, help=f"simulated time per token [ms] (default {token_ms:g})"
    )
    parser.add_argument(
        "--first-token-ms",
        type=float,
        default=first_token_ms,
        help=f"simulated latency before tokens [ms] (default {first_token_ms:g})",
    )
