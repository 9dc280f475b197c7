"""vLLM's asynchronous engine inside the node.

``AsyncLLM`` runs the model in its own engine-core process; this process only
tokenizes and streams, so concurrent requests from many peers are batched by
vLLM's scheduler with no lock and no thread per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
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
from .transcript import TRANSCRIPT_STOPS, has_chat_template, render_transcript

log = logging.getLogger(__name__)

# Time the engine core gets beyond its worker's shutdown budget before vLLM kills it [s].
_SHUTDOWN_MARGIN_S = 3.0

# Environment the engine processes get on a CPU unless this process already sets the variable.
# oneDNN keeps a global cache of JIT-compiled primitives (default 1,024 entries): one matmul per
# distinct batch size [tokens] the engine has run, so a node under varied load kept compiling and
# keeping new ones, and its vLLM worker grew for as long as it served (issue 16: +26 MiB/min after
# 15 minutes; see README Results). vLLM's CPU linear layers already keep their own cache of 32
# primitives per weight shape (csrc/cpu/dnnl_helper.cpp), so the global one only duplicated it:
# with it off the worker levels off after a few minutes.
CPU_ENGINE_ENV: Mapping[str, str] = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}


def engine_environment(extra: Mapping[str, str] | None = None, *, cpu: bool) -> dict[str, str]:
    """The environment variables vLLM's engine processes should start with.

    On a CPU: :data:`CPU_ENGINE_ENV`, except variables this process's
    environment already sets (an operator's choice wins over a default).
    Then ``extra`` (the node's ``engine_env`` setting) over everything.
    """
    env = {key: value for key, value in CPU_ENGINE_ENV.items() if key not in os.environ} if cpu else {}
    env.update(extra or {})
    return env


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block (processes spawned in it inherit them), then restore."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VllmEngine(Engine):
    """Serve one local model with ``vllm.v1.engine.async_llm.AsyncLLM``.

    Args:
        model: local Hugging Face directory or a model id in the local cache.
        name: model name announced to peers.
        dtype: ``float32`` on CPU (the default model degenerates in bfloat16,
            see shared/notes/vllm-cpu.md), ``auto`` on GPU.
        max_model_len: context window [tokens].
        kv_cache_gib: CPU KV-cache size [GiB] (``VLLM_CPU_KVCACHE_SPACE``),
            rounded up to a whole GiB (vLLM's CPU backend refuses fractions);
            ignored when that variable is already set.
        warmup: run one short request in :meth:`start`; the first request
            after loading takes about 20 s on CPU, so a node warms up before
            it announces itself ready.
        cpu_bind: cores for vLLM's CPU worker (``VLLM_CPU_OMP_THREADS_BIND``).
        engine_kwargs: extra ``AsyncEngineArgs`` fields (e.g.
            ``tensor_parallel_size`` on a GPU box).
        engine_env: environment variables for the engine processes only, over
            the measured CPU defaults (see :func:`engine_environment`).
        cpu: whether vLLM runs on the CPU here (``None``: no CUDA device).
        adapter: a LoRA adapter directory (``peft`` format) to serve every
            request with, through vLLM's LoRA support (``enable_lora``; on a
            CPU ``PunicaWrapperCPU``, checked with the default model in
            float32); the model is then announced as ``<name>:<adapter_id>``.
        adapter_id: the adapter's id (``lora-…``, see :mod:`dellm_p2p.learn.adapters`).
        adapter_rank: its LoRA rank (vLLM reserves at least rank 8).
    """

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        dtype: str = "float32",
        max_model_len: int = 2048,
        kv_cache_gib: float = 1.0,
        warmup: bool = True,
        cpu_bind: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        engine_env: Mapping[str, str] | None = None,
        cpu: bool | None = None,
        adapter: str | None = None,
        adapter_id: str | None = None,
        adapter_rank: int = 8,
    ):
        self._adapter = adapter
        self._adapter_id = adapter_id or "adapter"
        self._adapter_rank = adapter_rank
        self._model = model
        self._name = name or model
        self._dtype = dtype
        self._max_model_len = max_model_len
        self._kv_cache_gib = kv_cache_gib
        self._warmup = warmup
        self._cpu_bind = cpu_bind
        self._engine_kwargs = engine_kwargs or {}
        self._engine_env = dict(engine_env or {})
        self._cpu = cpu
        self._llm: Any = None
        self._tokenizer: Any = None
        self._stats = EngineStats()
        self._live: set[str] = set()

    @property
    def info(self) -> ModelInfo:
        name = f"{self._name}:{self._adapter_id}" if self._adapter else self._name
        return ModelInfo(name, self._max_model_len, "vllm")

    async def start(self) -> None:
        # vLLM 0.32's CPU backend reads this as a whole number of GiB ("0.5" fails its config): round up.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(self._kv_cache_gib))))
        # Engine-internal sockets stay on loopback; nothing else is reachable anyway.
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Read by the engine processes vLLM spawns now, not by this one: restored afterwards.
        spawn_env = engine_environment(self._engine_env, cpu=vllm_on_cpu() if self._cpu is None else self._cpu)
        if self._cpu_bind:
            spawn_env["VLLM_CPU_OMP_THREADS_BIND"] = self._cpu_bind
        try:
            with environment(spawn_env):
                # Importing vllm and building the engine blocks for tens of seconds.
                self._llm = await asyncio.to_thread(self._build)
            self._max_model_len = int(self._llm.model_config.max_model_len)
            self._tokenizer = self._llm.get_tokenizer()
        except Exception as exc:
            raise EngineError(f"vLLM could not load {self._model}: {exc}") from exc
        if self._warmup:
            await self._run_warmup()

    def _build(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        lora = (
            {"enable_lora": True, "max_loras": 1, "max_lora_rank": max(8, self._adapter_rank)} if self._adapter else {}
        )
        args = AsyncEngineArgs(
            **lora,
            model=self._model,
            dtype=self._dtype,
            max_model_len=self._max_model_len,
            enforce_eager=True,
            disable_log_stats=False,  # keeps per-request queue/first-token metrics
            # The weight-loading progress bar only with -v: the node prints its own progress lines.
            **{"use_tqdm_on_load": log.isEnabledFor(logging.INFO), **self._engine_kwargs},
        )
        return AsyncLLM.from_engine_args(args)

    async def _run_warmup(self) -> None:
        from ..protocol import ChatMessage, SamplingParams

        started = time.perf_counter()
        request = GenerationRequest(SamplingParams(max_tokens=4), messages=[ChatMessage(role="user", content="Hi")])
        async for _ in self.generate(request, "dellm-warmup"):
            pass
        # Warm-up is not peer traffic.
        self._stats = EngineStats()
        log.info("warm-up took %.1f s", time.perf_counter() - started)

    async def render_prompt(self, request: GenerationRequest) -> tuple[str, int]:
        """Return the prompt text and its length [tokens].

        Chat ``messages`` go through the model's chat template; a base model
        without one (Gemma 3 270M) gets a plain ``User:``/``Assistant:``
        transcript instead (:func:`~.transcript.render_transcript`; its stops
        are added by :meth:`transcript_stops`). A raw ``prompt`` is left as is.
        Runs the tokenizer in a worker thread: a long prompt must not stall
        the event loop that serves every peer.
        """

        def render() -> tuple[str, int]:
            if request.messages is not None:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
                if has_chat_template(self._tokenizer):
                    text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                else:
                    text = render_transcript(messages)
            else:
                text = request.prompt or ""
            return text, len(self._tokenizer.encode(text, add_special_tokens=False))

        return await asyncio.to_thread(render)

    def transcript_stops(self, request: GenerationRequest) -> list[str]:
        """Stop sequences ``request`` needs beyond its own: the next turn of a transcript prompt (base models)."""
        if request.messages is None or has_chat_template(self._tokenizer):
            return []
        return [stop for stop in TRANSCRIPT_STOPS if stop not in request.params.stop]

    async def generate(self, request: GenerationRequest, request_id: str) -> AsyncIterator[Delta]:
        if self._llm is None:
            raise EngineError("engine is not started")
        from vllm import SamplingParams as VllmParams
        from vllm.sampling_params import RequestOutputKind

        entered = time.perf_counter()
        prompt, prompt_tokens = await self.render_prompt(request)
        render_ms = (time.perf_counter() - entered) * 1000
        if prompt_tokens >= self._max_model_len:
            raise PromptTooLongError(prompt_tokens, self._max_model_len)
        p = request.params
        # A request may not run past the context window: clamp instead of failing.
        max_tokens = min(p.max_tokens, self._max_model_len - prompt_tokens)
        params = VllmParams(
            n=p.n,
            max_tokens=max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            stop=[*p.stop, *self.transcript_stops(request)] or None,
            logprobs=0 if p.logprobs else None,
            output_kind=RequestOutputKind.DELTA,
        )
        self._stats.requests_total += 1
        self._live.add(request_id)
        finished = False
        try:
            async for out in self._llm.generate(prompt, params, request_id, lora_request=self._lora_request()):
                queued_ms = _queued_ms(out.metrics, render_ms)
                for choice in out.outputs:
                    ids = list(choice.token_ids)
                    if not ids and not choice.text and choice.finish_reason is None:
                        continue
                    self._stats.tokens_generated += len(ids)
                    yield Delta(
                        index=choice.index,
                        text=choice.text,
                        tokens=len(ids),
                        logprobs=_sampled_logprobs(ids, choice.logprobs) if p.logprobs else None,
                        finish_reason=choice.finish_reason,
                        prompt_tokens=prompt_tokens,
                        queued_ms=queued_ms,
                    )
                finished = out.finished
        except (PromptTooLongError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise EngineError(f"vLLM failed on request {request_id}: {exc}") from exc
        finally:
            self._live.discard(request_id)
            if not finished:
                self._stats.requests_aborted += 1
                await self.abort(request_id)

    def _lora_request(self) -> Any:
        """vLLM's ``LoRARequest`` for the served adapter (``None`` without one)."""
        if not self._adapter:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(self._adapter_id, 1, self._adapter)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        running = len(self._live)
        if self._llm is not None:
            running = self._llm.output_processor.get_num_unfinished_requests()
        return EngineStats(
            requests_total=self._stats.requests_total,
            requests_aborted=self._stats.requests_aborted,
            tokens_generated=self._stats.tokens_generated,
            running=running,
        )

    def failure(self) -> str | None:
        """``vLLM's engine stopped (...)`` once ``AsyncLLM.errored`` (engine core or worker gone), else ``None``."""
        llm = self._llm
        if llm is None or not getattr(llm, "errored", False):
            return None
        detail = " ".join(str(getattr(llm, "dead_error", "") or "").split())[:200]
        return f"vLLM's engine stopped ({detail or 'its process exited'})"

    async def close(self) -> None:
        """Shut the engine processes down, waiting for them to exit on their own.

        vLLM's default gives its engine core 5 s before killing it, but the
        core itself waits up to ``VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS`` (5 s)
        for its worker and 4 s more after a SIGTERM; a core killed in
        between never unlinks its shared-memory queues ("resource_tracker:
        There appear to be 1 leaked shared_memory objects"), which happened
        whenever a request was cancelled at shutdown. So the core gets the
        worker's whole budget plus a margin [s].
        """
        llm, self._llm = self._llm, None
        if llm is not None:
            # vLLM cancels its output handler only after the core has exited; meanwhile the
            # handler would see the core go and log an EngineDeadError traceback.
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()
            worker_s = float(os.environ.get("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", "5"))
            await asyncio.to_thread(llm.shutdown, worker_s + 4 + _SHUTDOWN_MARGIN_S)
            # AsyncLLM.__del__ calls shutdown() again, at interpreter exit when
            # the object outlives us, and then fails on torn-down module
            # globals with a printed TypeError. Once is enough.
            llm.shutdown = lambda *args, **kwargs: None


def vllm_on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (no CUDA device)."""
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


def _queued_ms(metrics: Any, render_ms: float) -> float | None:
    """Prompt rendering plus vLLM's scheduler wait (``scheduled_ts - queued_ts``) [ms]."""
    queued = getattr(metrics, "queued_ts", None)
    scheduled = getattr(metrics, "scheduled_ts", None)
    if not queued or not scheduled:
        return None
    return round(render_ms + max(0.0, scheduled - queued) * 1000, 3)


def _sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float] | None:
    """Pick the sampled token's logprob out of vLLM's per-position dicts."""
    if not logprobs:
        return None
    values: list[float] = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        entry = candidates.get(token_id) if candidates else None
        values.append(float(entry.logprob) if entry is not None else float("nan"))
    return values
