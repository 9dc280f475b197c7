"""A SIMULATED engine for fast server tests: no model, deterministic output.

It streams the words of a fixed reply at a fixed rate and honours the engine
contract (abort on close, prompt-length check, counters), so the server's
protocol handling can be tested in milliseconds. Never used by the product.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dellm_p2p.engine import (
    Delta,
    Engine,
    EngineError,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    PromptTooLongError,
)


class SimulatedEngine(Engine):
    """Replies ``reply`` word by word, one word per ``token_interval_s``.

    A prompt containing ``FAIL`` (or any prompt once ``broken`` is set)
    raises :class:`EngineError` mid-stream; one longer than
    ``max_model_len`` words raises :class:`PromptTooLongError`. ``replies``
    maps a prompt substring to the reply used for prompts containing it;
    ``sampled_replies`` does the same for requests with temperature > 0 and
    is looked at first (sample ``i`` of ``n`` takes the ``i``-th of a
    ``|``-separated list, cycling), so a test can make greedy and sampled
    answers differ.
    """

    def __init__(
        self, reply: str = "The capital of France is Paris.", token_interval_s: float = 0.005, max_model_len: int = 512
    ):
        self.reply = reply.split(" ")
        self.token_interval_s = token_interval_s
        self.max_model_len = max_model_len
        self.counters = EngineStats()
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.broken = False
        self.replies: dict[str, str] = {}
        self.sampled_replies: dict[str, str] = {}
        self.prompts: list[str] = []
        self.temperatures: list[float] = []

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("simulated", self.max_model_len, "simulated")

    async def start(self) -> None:
        pass

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        text = request.prompt if request.prompt is not None else " ".join(m.content for m in request.messages or [])
        prompt_tokens = len(text.split())
        if prompt_tokens >= self.max_model_len:
            raise PromptTooLongError(prompt_tokens, self.max_model_len)
        p = request.params
        self.prompts.append(text)
        self.temperatures.append(p.temperature)
        reply = next((r.split(" ") for key, r in self.replies.items() if key in text), self.reply)
        sampled = next((r.split("|") for key, r in self.sampled_replies.items() if key in text), None)
        per_sample = [reply] * p.n
        if sampled and p.temperature > 0:
            per_sample = [sampled[i % len(sampled)].strip().split(" ") for i in range(p.n)]
        reply = max(per_sample, key=len)
        words = reply[: p.max_tokens]
        self.counters.requests_total += 1
        self.running.add(request_id)
        completed = False
        try:
            for position in range(len(words)):
                await asyncio.sleep(self.token_interval_s)
                if ("FAIL" in text or self.broken) and position == 1:
                    raise EngineError("simulated engine failure")
                last = position == len(words) - 1
                reason = None if not last else ("stop" if len(words) == len(reply) else "length")
                for index in range(p.n):
                    if position >= len(per_sample[index]):
                        continue  # this sample's reply is shorter
                    self.counters.tokens_generated += 1
                    yield Delta(
                        index=index,
                        text=(" " if position else "") + per_sample[index][position],
                        tokens=1,
                        logprobs=[-0.5] if p.logprobs else None,
                        finish_reason=reason,
                        prompt_tokens=prompt_tokens,
                        queued_ms=0.1,
                    )
            completed = True
        finally:
            if not completed:
                self.aborted.append(request_id)
            self.running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.running.discard(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(
            requests_total=self.counters.requests_total,
            tokens_generated=self.counters.tokens_generated,
            requests_aborted=len(self.aborted),
            running=len(self.running),
        )

    async def close(self) -> None:
        pass
