"""The engine interface: what a node needs from a language-model backend.

An engine streams generation deltas for chat messages or a raw prompt,
aborts requests, and reports model info and counters. Implementations:
:class:`~dellm_p2p.engine.vllm_engine.VllmEngine` (vLLM's ``AsyncLLM`` in the
node) and :class:`~dellm_p2p.engine.openai_engine.OpenAICompatEngine` (an
existing OpenAI-compatible server).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..protocol import ChatMessage, SamplingParams


class EngineError(RuntimeError):
    """The engine failed to serve a request (one-line reason in ``str``)."""


class PromptTooLongError(EngineError):
    """The prompt does not fit the model's context window.

    Attributes:
        prompt_tokens: length of the prompt [tokens], ``None`` if the backend did not say.
        max_model_len: the model's context window [tokens].
    """

    def __init__(self, prompt_tokens: int | None, max_model_len: int):
        size = f"{prompt_tokens} tokens" if prompt_tokens is not None else "too long"
        super().__init__(f"prompt is {size}; the context window is {max_model_len} tokens")
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


@dataclass(frozen=True)
class ModelInfo:
    """What an engine serves.

    Attributes:
        name: model name announced to peers.
        max_model_len: context window [tokens].
        backend: ``vllm`` or ``openai``.
    """

    name: str
    max_model_len: int
    backend: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: exactly one of ``messages`` (chat) or ``prompt`` (raw text)."""

    params: SamplingParams
    messages: Sequence[ChatMessage] | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of one choice's output.

    Attributes:
        index: choice index, 0..n-1.
        text: new text (may be empty when only ``finish_reason`` is new).
        tokens: number of tokens in this delta [tokens].
        logprobs: natural-log probability of each sampled token in this delta
            (``len == tokens``), or ``None`` when not requested or unknown.
        finish_reason: ``stop`` or ``length`` on the choice's last delta.
        prompt_tokens: length of the prompt [tokens], when known.
        queued_ms: time the request waited before the engine first scheduled
            it (prompt rendering plus scheduler queue) [ms], when known.
    """

    index: int
    text: str
    tokens: int
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    queued_ms: float | None = None


@dataclass
class EngineStats:
    """Counters since the engine started (tokens are generated tokens)."""

    requests_total: int = 0
    requests_aborted: int = 0
    tokens_generated: int = 0
    running: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Engine(abc.ABC):
    """A language-model backend shared by every request of a node.

    Engines are used from one asyncio event loop; ``generate`` may be called
    concurrently, and the engine batches concurrent requests itself.
    """

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """Model name, context window and backend (valid after :meth:`start`)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model and warm it up. Raises :class:`EngineError` on failure."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        """Stream deltas for ``request`` until every choice has a finish reason.

        Closing the iterator early (or cancelling the task consuming it) aborts
        the request inside the engine, so no compute is wasted.

        Raises:
            PromptTooLongError: the prompt does not fit the context window.
            EngineError: the backend failed.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running request; a finished or unknown id is ignored."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Counters since start; ``running`` is what the backend still computes."""

    def failure(self) -> str | None:
        """A one-line reason once the engine can serve no request any more (its
        process died, e.g. killed by the kernel for memory), else ``None``.

        A node polls it (:meth:`dellm_p2p.node.Node.engine_failure`): a node
        whose engine is gone would otherwise keep answering every request at
        once with an error, and being idle and fast, attract more of them.
        """
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the engine's processes and connections. Idempotent."""
