"""Front an existing OpenAI-compatible server as a node's engine.

This is how a node serves a model that outgrows one machine: ``vllm serve``
with tensor/pipeline parallelism across GPUs or machines (Ray), Ollama, or a
llama.cpp server keeps the model; the node streams from it with the ``openai``
client and speaks the dellm protocol to peers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from .base import (
    Delta,
    Engine,
    EngineError,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    PromptTooLongError,
)

log = logging.getLogger(__name__)


class OpenAICompatEngine(Engine):
    """Stream from ``{base_url}/chat/completions`` and ``/completions``.

    Args:
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name on that server; ``None`` takes the first one it lists.
        api_key: bearer token, if the server wants one.
        max_model_len: context window [tokens] when the server does not report
            it (vLLM reports it in ``/models``).
        timeout_s: connect and per-read timeout [s].

    Token counts per delta come from the returned logprobs when they are
    requested, and otherwise count one token per streamed chunk (servers
    such as vLLM send one chunk per token); usage at the end is the server's.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_model_len: int = 2048,
        timeout_s: float = 60.0,
    ):
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._api_key = api_key or "unused"
        self._max_model_len = max_model_len
        self._timeout_s = timeout_s
        self._client: Any = None
        self._streams: dict[str, Any] = {}
        self._stats = EngineStats()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self._model or "?", self._max_model_len, "openai")

    async def start(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=self._base_url, api_key=self._api_key, timeout=self._timeout_s, max_retries=0
        )
        try:
            models = [m async for m in self._client.models.list()]
        except openai.OpenAIError as exc:
            raise EngineError(f"cannot reach the OpenAI-compatible server at {self._base_url}: {exc}") from exc
        chosen = next((m for m in models if self._model in (None, m.id)), None)
        if chosen is None:
            names = ", ".join(m.id for m in models) or "none"
            raise EngineError(f"model {self._model!r} is not served at {self._base_url} (it serves: {names})")
        self._model = chosen.id
        reported = getattr(chosen, "max_model_len", None) or (chosen.model_extra or {}).get("max_model_len")
        if isinstance(reported, int) and reported > 0:
            self._max_model_len = reported

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        import openai

        if self._client is None:
            raise EngineError("engine is not started")
        p = request.params
        common: dict[str, Any] = dict(
            model=self._model,
            max_tokens=min(p.max_tokens, self._max_model_len),
            temperature=p.temperature,
            top_p=p.top_p,
            n=p.n,
            stop=list(p.stop) or None,
            stream=True,
            stream_options={"include_usage": True},
        )
        self._stats.requests_total += 1
        finished: set[int] = set()
        try:
            if request.messages is not None:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                stream = await self._client.chat.completions.create(
                    messages=messages, logprobs=p.logprobs or None, **common
                )
            else:
                stream = await self._client.completions.create(
                    prompt=request.prompt, logprobs=0 if p.logprobs else None, **common
                )
            self._streams[request_id] = stream
            async for chunk in stream:
                usage = getattr(chunk, "usage", None)
                prompt_tokens = usage.prompt_tokens if usage else None
                for choice in chunk.choices:
                    delta = _choice_delta(choice, p.logprobs, prompt_tokens)
                    if choice.finish_reason:
                        finished.add(choice.index)
                    self._stats.tokens_generated += delta.tokens
                    yield delta
                if prompt_tokens is not None and not chunk.choices:
                    # The usage-only last chunk: report the prompt length.
                    yield Delta(index=0, text="", tokens=0, prompt_tokens=prompt_tokens)
        except openai.BadRequestError as exc:
            text = str(exc)
            if "context" in text and ("length" in text or "window" in text):
                raise PromptTooLongError(None, self._max_model_len) from exc
            raise EngineError(f"the server rejected the request: {text}") from exc
        except openai.OpenAIError as exc:
            raise EngineError(f"the OpenAI-compatible server failed: {exc}") from exc
        finally:
            stream = self._streams.pop(request_id, None)
            if len(finished) < p.n:
                self._stats.requests_aborted += 1
                if stream is not None:
                    # Closing the HTTP response makes vLLM's server abort the request.
                    await asyncio.shield(stream.close())

    async def abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            await stream.close()

    def stats(self) -> EngineStats:
        return EngineStats(
            requests_total=self._stats.requests_total,
            requests_aborted=self._stats.requests_aborted,
            tokens_generated=self._stats.tokens_generated,
            running=len(self._streams),
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _choice_delta(choice: Any, want_logprobs: bool, prompt_tokens: int | None) -> Delta:
    """Turn one streamed chat or completion choice into a :class:`Delta`."""
    if hasattr(choice, "delta"):  # chat completion chunk
        text = choice.delta.content or "" if choice.delta else ""
        lp = choice.logprobs.content if choice.logprobs and choice.logprobs.content else None
        logprobs = [float(t.logprob) for t in lp] if lp else None
    else:  # text completion chunk
        text = choice.text or ""
        lp = choice.logprobs.token_logprobs if choice.logprobs else None
        logprobs = [float(v) for v in lp if v is not None] if lp else None
    tokens = len(logprobs) if logprobs is not None else (1 if text else 0)
    return Delta(
        index=choice.index,
        text=text,
        tokens=tokens,
        logprobs=logprobs if want_logprobs else None,
        finish_reason=choice.finish_reason,
        prompt_tokens=prompt_tokens,
    )
