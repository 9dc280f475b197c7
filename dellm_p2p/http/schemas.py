"""Request and response bodies of the HTTP API, in the shapes of the OpenAI API reference.

Requests ignore unknown fields, as OpenAI's server does (clients send
``frequency_penalty``, ``seed``, ``logit_bias``, … freely); the fields
they declare are validated, and a bad one is a 400 naming it. Responses
carry an extra ``dellm`` field with the pipeline's trace for ``model:
dellm``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..protocol import MAX_CHOICES, MAX_STOP_STRINGS

DELLM_MODEL = "dellm"  # the whole pipeline as one model name


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    """A content part; only ``text`` parts are understood (no images or audio)."""

    type: str
    text: str | None = None


class MessageIn(_Request):
    """One chat message; ``developer`` counts as ``system`` (OpenAI's newer name for it)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string.

        Raises:
            ValueError: a content part that is not text.
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported (text only)")
            parts.append(part.text)
        return "".join(parts)

    def plain(self) -> dict[str, str]:
        """``{"role", "content"}`` as the pipeline takes it."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Request):
    include_usage: bool = False


class DellmOptions(_Request):
    """Per-request pipeline settings for ``model: dellm`` (``extra_body={"dellm": {...}}`` in the openai client)."""

    strategy: str | None = None
    redundancy: Annotated[int, Field(ge=1, le=16)] | None = None
    decompose: Literal["rules", "llm", "none"] | None = None
    synthesize: bool | None = None
    anchor: bool | None = None
    program_aided: bool | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None
    chunk_timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = None


Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)] | None


class _Sampling(_Request):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: Stop = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    user: str | None = None
    dellm: DellmOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: Stop) -> list[str] | None:
        if isinstance(value, str):
            return [value] if value else None
        return value

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[MessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# Responses.


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class MessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: MessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    dellm: dict[str, Any] | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    dellm: dict[str, Any] | None = None


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(BaseModel):
    """``text_completion`` objects; streamed chunks have the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    dellm: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    peers: int = Field(description="alive peers serving it (all of them for dellm)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
