"""Reading an engine's stream directly, without a node.

Timed (:func:`time_engine`), or as samples (:func:`collect_samples`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Run:
    """One timed request."""

    wall_ms: float
    ttft_ms: float | None
    tokens: int
    text: str
    finish_reason: str | None = None
    server_total_ms: float | None = None
    server_ttft_ms: float | None = None


async def time_engine(engine: Any, request: Any, request_id: str, timeout_s: float) -> Run:
    """Stream ``request`` from ``engine`` (a :class:`dellm_p2p.engine.Engine`) and time it.

    ``wall_ms`` runs from the call to the last delta, ``ttft_ms`` to the first
    delta with text [ms]. Raises ``TimeoutError`` after ``timeout_s`` [s] and
    whatever the engine raises.
    """
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    parts: list[str] = []
    reason = None
    async with asyncio.timeout(timeout_s):
        stream = engine.generate(request, request_id)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                if first is None and delta.text:
                    first = (time.perf_counter() - started) * 1000
                tokens += delta.tokens
                parts.append(delta.text)
                reason = delta.finish_reason or reason
    return Run((time.perf_counter() - started) * 1000, first, tokens, "".join(parts), reason)


async def collect_samples(
    engine: Any, request: Any, request_id: str, timeout_s: float
) -> list[tuple[str, list[float]]]:
    """The ``request.params.n`` samples of one request: ``(text, per-token logprobs)`` in choice order.

    Logprobs are empty unless the request asked for them. Raises
    ``TimeoutError`` after ``timeout_s`` [s] and whatever the engine raises.
    """
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, list[float]] = {}
    async with asyncio.timeout(timeout_s):
        stream = engine.generate(request, request_id)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                texts.setdefault(delta.index, []).append(delta.text)
                logprobs.setdefault(delta.index, []).extend(delta.logprobs or [])
    return [("".join(texts[i]), logprobs.get(i, [])) for i in sorted(texts)]
