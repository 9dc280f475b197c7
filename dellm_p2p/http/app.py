"""The OpenAI-compatible HTTP API: a thin adapter over a :class:`~.gateway.Gateway`.

Endpoints (OpenAI API reference shapes):

* ``GET /v1/models``: ``dellm`` (the whole pipeline) plus every model an
  alive peer serves now.
* ``POST /v1/chat/completions`` and ``POST /v1/completions``: ``model:
  dellm`` runs the pipeline (decompose the last user message, route, vote,
  synthesize, reward), with its trace in an extra ``dellm`` field (when
  streaming, of the chunk carrying ``finish_reason``, the last with a choice); a peer model name goes to the best-ranked
  peer serving it, failing over to the next before its first token, no
  vote. Streaming is server-sent events ending with ``data: [DONE]``.
* ``GET /health``: 200 while at least one alive peer serves a model, else 503.
* ``GET /metrics``: Prometheus text format.

Errors are ``{"error": {"message", "type", "param", "code"}}``: 400 bad
JSON or parameter, 401 missing or wrong key, 404 unknown model or path,
413 body over the limit, 429 too many requests at once (``Retry-After``),
503 no peer (or every peer failed), 504 deadline. An unexpected exception
is logged and answered with a 500 carrying no traceback. A client that
disconnects cancels its question: the pipeline's tasks are cancelled and
the peers abort their generations.

``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>`` when the
settings hold a key (compared in constant time); ``/health`` is open, for
load balancers.

``GET /`` is the live dashboard (:mod:`.dashboard`): the page is open, its
data endpoints (``/dashboard/api/*``) need the key like ``/v1/*``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..client import PeerError
from ..coordinator.admission import QueueFullError
from ..coordinator.errors import AllPeersFailedError, DeadlineError, NoPeersError, QuestionError, SwarmError
from ..coordinator.events import Event, Final, PeerFailed, SwarmAnswer, SynthesisToken
from ..coordinator.history import estimate_tokens, split_conversation
from ..coordinator.pipeline import AskOptions, check_question
from ..protocol import Done, SamplingParams, Token
from .dashboard import Dashboard, add_dashboard
from .gateway import Gateway, UnknownModelError
from .limits import Limiter, RateLimited, RateLimits, client_key
from .metrics import ApiMetrics
from .schemas import (
    DELLM_MODEL,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionRequest,
    Delta,
    ErrorBody,
    ErrorResponse,
    MessageOut,
    ModelCard,
    ModelList,
    TextChoice,
    Usage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

DEFAULT_PEER_MAX_TOKENS = 256  # max_tokens of a peer-model request that gives none [tokens]
# Longest `model: dellm` answer [tokens]: the synthesis prompt (question and chunk answers) must fit
# beside it in a default 2,048-token window, and clients often send max_tokens far above that.
MAX_DELLM_ANSWER_TOKENS = 1024


@dataclass(frozen=True)
class ApiSettings:
    """Limits and the key of one API server.

    Attributes:
        api_key: the bearer key requests must carry (``None``: open).
        max_body_bytes: largest request body [bytes]; more gets 413.
        max_concurrent: peer-model completions answered at once; more get 429
            (``model: dellm`` questions wait in the admission queue instead).
        max_queue: ``model: dellm`` questions that may wait for the swarm at
            once (the gateway's admission queue); more get 429.
        request_timeout_s: deadline of a peer-model request [s]
            (``model: dellm`` questions use the pipeline's ``timeout_s``).
        retry_after_s: ``Retry-After`` of a 429 for too many peer-model requests [s].
        limits: per-client requests and tokens per minute (off by default; :mod:`.limits`).
    """

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_concurrent: int = 64
    max_queue: int = 1024
    request_timeout_s: float = 180.0
    retry_after_s: int = 1
    limits: RateLimits = field(default_factory=RateLimits)


class ApiError(Exception):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(
            error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def api_error(exc: BaseException) -> ApiError:
    """The HTTP error for an exception raised while answering."""
    match exc:
        case ApiError():
            return exc
        case QuestionError():
            return ApiError(400, str(exc), code="invalid_question")
        case QueueFullError() | RateLimited():
            code = "queue_full" if isinstance(exc, QueueFullError) else "rate_limit_exceeded"
            headers = {"Retry-After": str(exc.retry_after_s)}
            return ApiError(429, str(exc), type="rate_limit_error", code=code, headers=headers)
        case UnknownModelError():
            return ApiError(
                404,
                f"the model {exc} does not exist in this network; see GET /v1/models",
                code="model_not_found",
                param="model",
            )
        case NoPeersError():
            return ApiError(503, str(exc), type="server_error", code="no_peers")
        case AllPeersFailedError() | PeerError():
            return ApiError(503, str(exc), type="server_error", code="all_peers_failed")
        case DeadlineError() | TimeoutError():
            return ApiError(504, str(exc) or "the answer's deadline passed", type="server_error", code="timeout")
        case SwarmError():
            return ApiError(500, str(exc), type="server_error", code="swarm_error")
    log.error("unexpected error answering an API request", exc_info=exc)
    return ApiError(500, "internal error (logged on the node)", type="server_error", code="internal_error")


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


def _trace(answer: SwarmAnswer) -> dict[str, Any]:
    """The pipeline's trace as JSON-ready data (the ``dellm`` field)."""
    data = answer.to_dict()
    data.pop("text", None)
    return json.loads(json.dumps(data, default=str))


def create_app(gateway: Gateway, settings: ApiSettings | None = None) -> FastAPI:
    """The API app over ``gateway`` (see module docstring). Serve it with :mod:`.server` or any ASGI server."""
    api = _Api(gateway, settings or ApiSettings())
    app = FastAPI(title="dellm-p2p", version="1", docs_url="/docs", redoc_url=None)
    app.state.api = api

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return api.error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return api.error_response(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return api.error_response(api_error(exc))

    auth = [Depends(api.authorize)]
    app.add_api_route("/v1/models", api.list_models, methods=["GET"], dependencies=auth, response_model=ModelList)
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/completions", api.completions, methods=["POST"], dependencies=auth)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/metrics", api.metrics_text, methods=["GET"], dependencies=auth)
    too_many = partial(ApiError, 429, type="rate_limit_error", code="too_many_streams")
    add_dashboard(app, api.dashboard, api.authorize, too_many)
    app.state.on_close = [api.dashboard.close]  # HttpServer.close ends the dashboard's endless streams
    return app


class _Api:
    """The endpoints' state: gateway, settings, metrics, requests in flight."""

    def __init__(self, gateway: Gateway, settings: ApiSettings):
        self.gateway = gateway
        self.settings = settings
        self.metrics = ApiMetrics(gateway)
        self.active = 0
        self.started = int(time.time())
        self.dashboard = Dashboard(gateway)  # records the questions answered through the pipeline
        gateway.admission.max_queue = settings.max_queue
        self.limiter = Limiter(settings.limits) if settings.limits.enabled else None

    def error_response(self, exc: ApiError) -> JSONResponse:
        self.metrics.errors.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    # Guards.

    async def authorize(self, request: Request) -> None:
        """Raises a 401 :class:`ApiError` unless the request carries the key (when one is set)."""
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    async def read(self, request: Request, model: type[R]) -> R:
        """The body parsed as ``model``; 413 over the size limit, 400 for bad JSON or a bad field."""
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(
                413, f"the request body is {int(length):,} bytes; the limit is {limit:,}", code="request_too_large"
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise ApiError(413, f"the request body is over the limit of {limit:,} bytes", code="request_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:  # "[[[[…" 100,000 deep: the decoder's recursion limit, not a server fault
            raise ApiError(400, "the body is not valid JSON: nested too deeply", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except RecursionError:
            raise ApiError(400, "the body is nested too deeply", code="invalid_parameter") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise ApiError(
                400, f"{param}: {first['msg']}" if param else first["msg"], param=param, code="invalid_parameter"
            ) from None

    def admit(self, key: str, tokens: int, *, limited: bool = True) -> _Slot:
        """Admit one completion request of client ``key`` costing about ``tokens`` tokens.

        Charges the client's rate limits (429 with ``Retry-After`` when a bucket
        is empty) and, when ``limited`` (peer-model requests), takes one of
        ``max_concurrent`` slots (429 when none is free); ``model: dellm``
        questions queue in the gateway's admission queue instead.
        """
        if limited and self.active >= self.settings.max_concurrent:
            raise ApiError(
                429,
                f"{self.active} requests are being answered; the limit is "
                f"{self.settings.max_concurrent}; retry shortly",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        charged = self.limiter.admit(key, tokens) if self.limiter is not None else 0
        self.active += 1
        self.metrics.in_flight.inc()
        return _Slot(self, key, charged)

    def _release(self) -> None:
        self.active -= 1
        self.metrics.in_flight.dec()

    async def guarded(self, request: Request, work: Awaitable[T]) -> T:
        """Await ``work`` unless the client disconnects first (then cancel it and raise :class:`ClientGone`)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise ClientGone
        finally:
            for t in (task, watch):
                t.cancel()
            await asyncio.gather(task, watch, return_exceptions=True)

    # Endpoints.

    async def list_models(self) -> ModelList:
        serving = self.gateway.serving()
        cards = [ModelCard(id=DELLM_MODEL, created=self.started, owned_by="dellm-swarm", peers=len(serving))]
        cards += [
            ModelCard(id=name, created=self.started, owned_by="dellm-peers", peers=count)
            for name, count in sorted(self.gateway.models().items())
        ]
        self.metrics.requests.labels("models", "200").inc()
        return ModelList(data=cards)

    async def health(self) -> JSONResponse:
        serving = self.gateway.serving()
        body = {
            "status": "ok" if serving else "unavailable",
            "node_id": self.gateway.node_id,
            "models": self.gateway.models(),
            "peers": [
                {
                    "node_id": p.node_id,
                    "name": p.name,
                    "model": p.model,
                    "state": p.state.value,
                    "in_flight": p.in_flight,
                    "rtt_ms": p.rtt_ms,
                }
                for p in self.gateway.table.alive()
            ],
            "in_flight": {"node": self.gateway.in_flight(), "api": self.active},
        }
        return JSONResponse(body, status_code=200 if serving else 503)

    async def metrics_text(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def chat(self, request: Request) -> Response:
        body = await self.read(request, ChatCompletionRequest)
        try:
            messages = [m.plain() for m in body.messages]
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages", code="invalid_parameter") from None
        return await self.answer(request, body, "chat", messages=messages)

    async def completions(self, request: Request) -> Response:
        body = await self.read(request, CompletionRequest)
        return await self.answer(request, body, "completions", prompt=body.prompt_text())

    async def answer(
        self,
        request: Request,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        *,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
    ) -> Response:
        """Both completion endpoints: pick the door (pipeline or one peer model), stream or not."""
        key = client_key(body.user, request.headers.get("authorization"), request.client and request.client.host)
        estimate = estimate_tokens(messages or [{"role": "user", "content": prompt or ""}])
        slot = self.admit(
            key, estimate + (body.token_limit() or DEFAULT_PEER_MAX_TOKENS), limited=body.model != DELLM_MODEL
        )
        streaming = False
        try:
            if body.model == DELLM_MODEL:
                response = await self._pipeline(request, body, endpoint, messages, prompt, slot)
            else:
                response = await self._direct(request, body, endpoint, messages, prompt, slot)
            if isinstance(response, StreamingResponse):
                # The stream releases the slot when it ends; the background task too, in case it never started.
                streaming, response.background = True, BackgroundTask(slot.release)
            self.metrics.requests.labels(endpoint, "200").inc()
            return response
        except ClientGone:
            self.metrics.questions.labels(_kind(body.model), "cancelled").inc()
            return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
        except BaseException as exc:
            error = api_error(exc)
            self.metrics.requests.labels(endpoint, str(error.status)).inc()
            if not isinstance(exc, ApiError):
                self.metrics.questions.labels(_kind(body.model), "failed").inc()
            if isinstance(exc, Exception):
                raise error from None
            raise
        finally:
            if not streaming:
                slot.release()

    # model: dellm.

    def _options(self, body: ChatCompletionRequest | CompletionRequest) -> AskOptions:
        """The gateway's default options with the request's overrides; 400 for a bad one."""
        changes: dict[str, Any] = {}
        if body.temperature is not None:
            changes["temperature"] = body.temperature
        if body.top_p is not None:
            changes["top_p"] = body.top_p
        if (limit := body.token_limit()) is not None:
            changes["synthesis_max_tokens"] = min(limit, MAX_DELLM_ANSWER_TOKENS)
            changes["max_tokens"] = min(self.gateway.options.max_tokens, limit)
        if body.dellm is not None:
            changes |= body.dellm.model_dump(exclude_none=True)
        if body.n != 1:
            raise ApiError(
                400,
                "n > 1 is supported for peer models only (the swarm gives one answer)",
                param="n",
                code="invalid_parameter",
            )
        try:
            return dataclasses.replace(self.gateway.options, **changes).checked()
        except QuestionError as exc:
            raise ApiError(400, str(exc), param="dellm", code="invalid_parameter") from None

    async def _pipeline(
        self,
        request: Request,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        slot: _Slot,
    ) -> Response:
        options = self._options(body)
        if messages is not None:
            question, history = split_conversation(messages)
        else:
            question, history = prompt or "", []
        question = check_question(question, options.max_question_chars)
        started = time.perf_counter()
        rid = _request_id(endpoint)
        events = aiter(
            self.dashboard.track(
                rid, question, self.gateway.stream(question, history=history, options=options, client=slot.key)
            )
        )
        if body.stream:
            try:
                first = await self.guarded(request, _next(events))  # errors before any event get their status
            except BaseException:
                await events.aclose()
                raise
            sse = self._sse_pipeline(events, first, body, endpoint, rid, started, slot)
            return StreamingResponse(sse, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            answer, first_token = await self.guarded(request, _final(events))
        finally:
            await events.aclose()
        self._record(answer, started, first_token)
        slot.settle(sum(answer.usage.values()))
        usage = Usage.of(answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0))
        created = int(time.time())
        if endpoint == "chat":
            return JSONResponse(
                ChatCompletion(
                    id=rid,
                    created=created,
                    model=DELLM_MODEL,
                    usage=usage,
                    dellm=_trace(answer),
                    choices=[ChatChoice(index=0, message=MessageOut(content=answer.text), finish_reason="stop")],
                ).model_dump()
            )
        return JSONResponse(
            Completion(
                id=rid,
                created=created,
                model=DELLM_MODEL,
                usage=usage,
                dellm=_trace(answer),
                choices=[TextChoice(index=0, text=answer.text, finish_reason="stop")],
            ).model_dump()
        )

    def _record(self, answer: SwarmAnswer, started: float, first_token: float | None) -> None:
        self.metrics.question(answer)
        usage = (answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0))
        self._record_answered("dellm", usage, started, first_token)

    def _record_answered(
        self, kind: str, usage: tuple[int, int] | None, started: float, first_token: float | None
    ) -> None:
        """Metrics of one answered request: ``kind`` ``dellm`` or ``peer``, ``usage`` (prompt, completion) tokens,
        ``started`` / ``first_token`` as ``time.perf_counter()`` readings [s]."""
        self.metrics.questions.labels(kind, "answered").inc()
        if usage is not None:
            self.metrics.usage(*usage)
        self.metrics.latency.labels(kind).observe(time.perf_counter() - started)
        if first_token is not None:
            self.metrics.ttft.labels(kind).observe(first_token - started)

    async def _sse_pipeline(
        self,
        events: AsyncIterator[Event],
        first: Event,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        rid: str,
        started: float,
        slot: _Slot,
    ) -> AsyncIterator[str]:
        """The pipeline's answer as SSE: a role chunk, the synthesis text as it streams, the trace last."""
        chunk = _chunker(endpoint, rid, DELLM_MODEL)
        streamed: list[str] = []  # synthesis text of the current synthesizer
        first_token: float | None = None
        outcome = "cancelled"
        try:
            if endpoint == "chat":
                yield chunk(Delta(role="assistant", content=""))
            event: Event | None = first
            while event is not None:
                match event:
                    case SynthesisToken(text=text) if text:
                        first_token = first_token or time.perf_counter()
                        streamed.append(text)
                        yield chunk(Delta(content=text))
                    case PeerFailed(chunk_id="synthesis"):
                        streamed.clear()  # the next synthesizer starts over (its text follows what was sent)
                    case Final(answer=answer):
                        rest = "" if "".join(streamed).strip() == answer.text else answer.text
                        if rest and streamed:
                            rest = "\n\n" + rest  # synthesis broke off after streaming: the fallback follows
                        if rest:
                            first_token = first_token or time.perf_counter()
                            yield chunk(Delta(content=rest))
                        self._record(answer, started, first_token)
                        slot.settle(sum(answer.usage.values()))
                        yield chunk(Delta(), finish="stop", trace=_trace(answer))
                        if body.stream_options is not None and body.stream_options.include_usage:
                            usage = Usage.of(
                                answer.usage.get("prompt_tokens", 0), answer.usage.get("completion_tokens", 0)
                            )
                            yield chunk(None, usage=usage)
                        outcome = "answered"
                event = await anext(events, None)
        except Exception as exc:  # after the headers: the error goes in the stream, as OpenAI does
            outcome = "failed"
            yield _sse(api_error(exc).body())
        finally:  # bookkeeping first: under a disconnect every await here is cancelled again
            slot.release()
            if outcome != "answered":
                self.metrics.questions.labels("dellm", outcome).inc()
            await events.aclose()  # type: ignore[attr-defined]
        yield "data: [DONE]\n\n"

    # A peer model.

    async def _direct(
        self,
        request: Request,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        slot: _Slot,
    ) -> Response:
        try:
            params = SamplingParams(
                max_tokens=body.token_limit() or DEFAULT_PEER_MAX_TOKENS,
                temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
                top_p=1.0 if body.top_p is None else body.top_p,
                n=body.n,
                stop=body.stop_list(),
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            param = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_parameter") from None
        if prompt is not None and not prompt.strip():
            raise ApiError(400, "the prompt is empty", param="prompt", code="invalid_parameter")
        self.gateway.ranked(body.model)  # 404 now, not inside the stream
        started = time.perf_counter()
        items = aiter(
            self.gateway.direct(
                body.model, messages=messages, prompt=prompt, params=params, timeout_s=self.settings.request_timeout_s
            )
        )
        rid = _request_id(endpoint)
        if body.stream:
            try:
                first = await self.guarded(request, _next(items))
            except BaseException:
                await items.aclose()  # type: ignore[attr-defined]
                raise
            sse = self._sse_direct(items, first.item, body, endpoint, rid, started, slot)
            return StreamingResponse(sse, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            texts, done, first_token = await self.guarded(request, _collect(items, body.n))
        finally:
            await items.aclose()  # type: ignore[attr-defined]
        self._record_direct(done, started, first_token)
        slot.settle(done.usage.prompt_tokens + done.usage.completion_tokens)
        usage = Usage.of(done.usage.prompt_tokens, done.usage.completion_tokens)
        reasons = done.finish_reasons
        created = int(time.time())
        if endpoint == "chat":
            choices = [
                ChatChoice(index=i, message=MessageOut(content=t), finish_reason=_reason(reasons, i))
                for i, t in enumerate(texts)
            ]
            return JSONResponse(
                ChatCompletion(id=rid, created=created, model=body.model, usage=usage, choices=choices).model_dump(
                    exclude={"dellm"}
                )
            )
        text_choices = [TextChoice(index=i, text=t, finish_reason=_reason(reasons, i)) for i, t in enumerate(texts)]
        return JSONResponse(
            Completion(id=rid, created=created, model=body.model, usage=usage, choices=text_choices).model_dump(
                exclude={"dellm"}
            )
        )

    def _record_direct(self, done: Done | None, started: float, first_token: float | None) -> None:
        usage = None if done is None else (done.usage.prompt_tokens, done.usage.completion_tokens)
        self._record_answered("peer", usage, started, first_token)

    async def _sse_direct(
        self,
        items: AsyncIterator[Any],
        first: Token | Done,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        rid: str,
        started: float,
        slot: _Slot,
    ) -> AsyncIterator[str]:
        """A peer's token stream as SSE, one choice per sample; usage last when asked for."""
        chunk = _chunker(endpoint, rid, body.model)
        first_token: float | None = None
        outcome = "cancelled"
        try:
            if endpoint == "chat":
                for index in range(body.n):
                    yield chunk(Delta(role="assistant", content=""), index=index)
            item: Token | Done | None = first
            while item is not None:
                if isinstance(item, Token):
                    if item.text:
                        first_token = first_token or time.perf_counter()
                        yield chunk(Delta(content=item.text), index=item.index)
                else:
                    for index in range(body.n):
                        yield chunk(Delta(), index=index, finish=_reason(item.finish_reasons, index))
                    if body.stream_options is not None and body.stream_options.include_usage:
                        yield chunk(None, usage=Usage.of(item.usage.prompt_tokens, item.usage.completion_tokens))
                    self._record_direct(item, started, first_token)
                    slot.settle(item.usage.prompt_tokens + item.usage.completion_tokens)
                    outcome = "answered"
                nxt = await anext(items, None)
                item = nxt.item if nxt is not None else None
        except Exception as exc:
            outcome = "failed"
            yield _sse(api_error(exc).body())
        finally:  # bookkeeping first: under a disconnect every await here is cancelled again
            slot.release()
            if outcome != "answered":
                self.metrics.questions.labels("peer", outcome).inc()
            await items.aclose()  # type: ignore[attr-defined]
        yield "data: [DONE]\n\n"


class _Slot:
    """One admitted completion request of client ``key`` (``charged`` tokens to its limit up front);
    :meth:`release` frees it once, however often it is called."""

    def __init__(self, api: _Api, key: str, charged: int = 0):
        self._api: _Api | None = api
        self._limiter = api.limiter
        self.key, self.charged = key, charged

    def settle(self, used: int) -> None:
        """The request cost ``used`` tokens: charge the client's limit the difference to the estimate, once."""
        if self._limiter is not None and self.charged:
            self._limiter.settle(self.key, self.charged, used)
            self.charged = 0

    def release(self) -> None:
        if self._api is not None:
            self._api._release()
            self._api = None


def _kind(model: str) -> str:
    return "dellm" if model == DELLM_MODEL else "peer"


def _reason(reasons: list[str], index: int) -> str:
    """OpenAI's finish reason for a node's (``stop``, ``length``, ``cancelled``, ``error``)."""
    reason = reasons[index] if index < len(reasons) else "stop"
    return reason if reason in ("stop", "length") else "stop"


def _request_id(endpoint: str) -> str:
    """A response id in OpenAI's style: ``chatcmpl-…`` for chat, ``cmpl-…`` for plain completions."""
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def _chunker(endpoint: str, rid: str, model: str):
    """A function building one SSE line of the endpoint's chunk type."""
    created = int(time.time())

    def chunk(
        delta: Delta | None,
        *,
        index: int = 0,
        finish: str | None = None,
        trace: dict[str, Any] | None = None,
        usage: Usage | None = None,
    ) -> str:
        if endpoint == "chat":
            choices = [] if delta is None else [ChunkChoice(index=index, delta=delta, finish_reason=finish)]
            payload: BaseModel = ChatCompletionChunk(
                id=rid, created=created, model=model, choices=choices, usage=usage, dellm=trace
            )
        else:
            text_choices = (
                [] if delta is None else [TextChoice(index=index, text=delta.content or "", finish_reason=finish)]
            )
            payload = Completion(id=rid, created=created, model=model, choices=text_choices, usage=usage, dellm=trace)
        data = payload.model_dump(exclude_none=False)
        if trace is None:
            data.pop("dellm")
        return _sse(data)

    return chunk


async def _disconnected(request: Request) -> None:
    """Return once the client has disconnected (the body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _next(iterator: AsyncIterator[T]) -> T:
    """The next item (a coroutine, so it can run as a task); ``StopAsyncIteration`` becomes a :class:`SwarmError`."""
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        raise SwarmError("the answer stream ended before it began") from None


async def _final(events: AsyncIterator[Event]) -> tuple[SwarmAnswer, float]:
    """The answer, and when its first token was ready (first synthesis token, else the answer) [perf_counter s]."""
    first: float | None = None
    async for event in events:
        if isinstance(event, SynthesisToken) and event.text and first is None:
            first = time.perf_counter()
        if isinstance(event, Final):
            return event.answer, first or time.perf_counter()
    raise SwarmError("the pipeline ended without an answer")


async def _collect(items: AsyncIterator[Any], n: int) -> tuple[list[str], Done, float | None]:
    """A peer-model request run to the end: text per choice, the ``done`` frame, first-token time."""
    texts: dict[int, list[str]] = {}
    first_token: float | None = None
    async for direct in items:
        item = direct.item
        if isinstance(item, Token):
            if item.text and first_token is None:
                first_token = time.perf_counter()
            texts.setdefault(item.index, []).append(item.text)
        else:
            return ["".join(texts.get(i, [])) for i in range(n)], item, first_token or time.perf_counter()
    raise AllPeersFailedError("the peer's stream ended without done")
