"""The SIMULATION: an engine without a model, for benchmarks only.

:class:`SimulatedEngine` streams a fixed answer at a fixed token rate after a
fixed latency; a simulated question has one right answer
(:func:`sim_right_answer`) and :data:`SIM_WRONG_ANSWERS` wrong ones.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

from dellm_p2p.engine import Delta, Engine, EngineStats, GenerationRequest, ModelInfo, PromptTooLongError

SIM_MODEL = "SIMULATED-no-model"  # the model name a simulated node announces

SIM_WRONG_ANSWERS = 20  # wrong answers a simulated node draws from, per question


def sim_right_answer(question: int) -> int:
    """The right answer to simulated question ``question`` (what accurate nodes say), in [1000, 9999)."""
    return 1000 + (question * 7919) % 8999


class SimulatedEngine(Engine):
    """SIMULATED engine (no model): streams ``tokens`` words, the first after
    ``first_token_s`` + ``token_interval_s``, then one every ``token_interval_s``.

    Token times are absolute (from the request's start), so event-loop jitter
    delays a token but does not slow the rate. The answer ends with
    ``Answer: 42`` so every node agrees and the vote is decided — unless
    :attr:`accuracy` is set (the learning phase): then each sample ends with
    the right answer to the prompt's ``question <q>`` (:func:`sim_right_answer`)
    with probability ``accuracy``, else with one of :data:`SIM_WRONG_ANSWERS`
    wrong ones drawn at random (two wrong samples agree 1 time in 20, right
    ones always). :attr:`peak` is the most requests it ran at once.
    """

    def __init__(self, tokens: int = 20, token_interval_s: float = 0.005, first_token_s: float = 0.0):
        words = "Six times seven is forty-two , so the value the question asks for is 42 and nothing else".split()
        body = (words * (1 + tokens // len(words)))[: max(0, tokens - 2)]
        self.words = [*body, "Answer:", "42"][-tokens:] if tokens >= 2 else ["42"][:tokens]
        self.token_interval_s = token_interval_s
        self.first_token_s = first_token_s
        self.max_model_len = 4096
        self.requests = 0
        self.tokens_out = 0
        self.running: set[str] = set()
        self.accuracy: float | None = None  # hidden accuracy (learning phase), None: always "42"
        self.rng = random.Random(0)
        self.peak = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(SIM_MODEL, self.max_model_len, "simulated")

    def _final_word(self, text: str) -> str:
        """The answer one sample commits to: right with probability :attr:`accuracy`, else a random wrong one."""
        if self.accuracy is None:
            return self.words[-1]
        match = re.search(r"question (\d+)", text)
        right = sim_right_answer(int(match.group(1)) if match else 0)
        if self.rng.random() < self.accuracy:
            return str(right)
        return str(right + 1 + self.rng.randrange(SIM_WRONG_ANSWERS))

    async def start(self) -> None:
        pass

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        text = request.prompt if request.prompt is not None else " ".join(m.content for m in request.messages or [])
        prompt_tokens = len(text.split())
        if prompt_tokens >= self.max_model_len:
            raise PromptTooLongError(prompt_tokens, self.max_model_len)
        loop = asyncio.get_running_loop()
        started = loop.time()
        words = self.words[: request.params.max_tokens]
        finals = [self._final_word(text) for _ in range(request.params.n)]
        self.requests += 1
        self.running.add(request_id)
        self.peak = max(self.peak, len(self.running))
        try:
            for position, word in enumerate(words):
                due = started + self.first_token_s + (position + 1) * self.token_interval_s
                await asyncio.sleep(max(0.0, due - loop.time()))
                last = position == len(words) - 1
                for index in range(request.params.n):
                    self.tokens_out += 1
                    yield Delta(
                        index=index,
                        text=(" " if position else "") + (finals[index] if position == len(self.words) - 1 else word),
                        tokens=1,
                        logprobs=[-0.1] if request.params.logprobs else None,
                        finish_reason=("stop" if len(words) == len(self.words) else "length") if last else None,
                        prompt_tokens=prompt_tokens,
                        queued_ms=0.0,
                    )
        finally:
            self.running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.running.discard(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(requests_total=self.requests, tokens_generated=self.tokens_out, running=len(self.running))

    async def close(self) -> None:
        pass
