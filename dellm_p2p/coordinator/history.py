"""Conversations: the earlier turns a question carries, trimmed to fit a context window.

A chat is a list of OpenAI-style messages (``{"role", "content"}``). The
coordinator decomposes only the last user message (the *question*); the
messages before it are the *history*, which every chunk prompt and the
synthesis carry in front of their own messages (:func:`with_history`).

Peers announce their context window in the handshake (``hello.max_model_len``),
but the peer table does not keep it, so the window is the smallest among
the chosen peers whose connection is open, else :data:`DEFAULT_CONTEXT_TOKENS`.
Token counts are estimated without a tokenizer at :data:`CHARS_PER_TOKEN`
characters per token (conservative: English runs about 4 per token with
the default model's tokenizer, so the estimate over-counts and trims a
little early rather than overflowing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .errors import QuestionError

DEFAULT_CONTEXT_TOKENS = 2048  # a peer whose window is unknown (the default node's max_model_len) [tokens]
CHARS_PER_TOKEN = 3.0  # conservative estimate for trimming [characters / token]
MESSAGE_OVERHEAD_TOKENS = 8  # chat-template role markers per message [tokens]
SAFETY_TOKENS = 32  # kept free for template preamble and estimate error [tokens]
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


def estimate_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """Estimated prompt tokens of chat ``messages`` (content at :data:`CHARS_PER_TOKEN` plus per-message overhead)."""
    return sum(int(len(m["content"]) / CHARS_PER_TOKEN) + 1 + MESSAGE_OVERHEAD_TOKENS for m in messages)


def split_conversation(messages: Sequence[Mapping[str, str]]) -> tuple[str, list[Message]]:
    """``(question, history)``: the last user message, and the messages before it.

    Messages after the last user message (an assistant prefill) are dropped:
    the swarm answers the question afresh.

    Raises:
        QuestionError: no user message, an unknown role or a non-string content.
    """
    checked = check_messages(messages)
    last = max((i for i, m in enumerate(checked) if m["role"] == "user"), default=None)
    if last is None:
        raise QuestionError("the conversation has no user message")
    return checked[last]["content"], checked[:last]


def check_messages(messages: Sequence[Mapping[str, str]]) -> list[Message]:
    """Plain ``{"role", "content"}`` copies of ``messages``.

    Raises:
        QuestionError: a role other than system, user or assistant, or a content that is not a string.
    """
    out = []
    for number, m in enumerate(messages, 1):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise QuestionError(f"message {number}: role must be one of {', '.join(ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise QuestionError(f"message {number}: content must be a string")
        out.append({"role": role, "content": content})
    return out


def fit_history(history: Sequence[Mapping[str, str]], budget_tokens: int) -> list[Message]:
    """The newest part of ``history`` that fits ``budget_tokens`` (estimated), dropping the oldest turns first.

    System messages are kept ahead of the turns while they fit (they say who
    the assistant is); the turns go oldest first, a whole message at a time.
    """
    system = [dict(m) for m in history if m["role"] == "system"]
    turns = [dict(m) for m in history if m["role"] != "system"]
    budget = budget_tokens - estimate_tokens(system)
    if budget < 0:  # even the system messages do not fit: the newest turns matter more
        system, budget = [], budget_tokens
    kept: list[Message] = []
    for message in reversed(turns):
        cost = estimate_tokens([message])
        if cost > budget:
            break
        kept.append(message)
        budget -= cost
    return system + kept[::-1]


def with_history(
    history: Sequence[Mapping[str, str]],
    tail: Sequence[Mapping[str, str]],
    *,
    context_tokens: int,
    max_tokens: int,
) -> list[Message]:
    """``tail`` (a chunk prompt or the synthesis messages) preceded by the earlier turns that fit.

    The budget is ``context_tokens − max_tokens − estimate(tail) −``
    :data:`SAFETY_TOKENS`. System contents (the tail's first, then the
    history's) are merged into one leading system message: several system
    messages, or one after a user turn, break some chat templates.

    Args:
        history: earlier messages, oldest first.
        tail: this request's own messages.
        context_tokens: the smallest context window among the peers that get it [tokens].
        max_tokens: tokens the answer may take [tokens].
    """
    tail = [dict(m) for m in tail]
    if not history:
        return tail
    budget = context_tokens - max_tokens - estimate_tokens(tail) - SAFETY_TOKENS
    kept = fit_history(history, budget) if budget > 0 else []
    systems = [m["content"] for m in tail if m["role"] == "system"] + [
        m["content"] for m in kept if m["role"] == "system"
    ]
    head = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
    return head + [m for m in kept if m["role"] != "system"] + [m for m in tail if m["role"] != "system"]
