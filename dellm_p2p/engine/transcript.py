"""Chat messages as a plain transcript, for base models that have no chat template.

A base model (Gemma 3 270M as embedded here) was never trained on a chat
format, but it continues a ``User: …`` / ``Assistant: …`` transcript; it would
then write the next ``User:`` turn itself, so the transcript comes with stop
sequences at the next turn. Prompts sent as raw ``prompt`` text never pass
through here: the coordinator writes base models' few-shot prompts and their
stops itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["TRANSCRIPT_STOPS", "has_chat_template", "render_transcript"]

#: Where a base model starts inventing the next turn (the transcript's own role labels), or, after a
#: blank line, anything else: Gemma 3 270M answered "The capital of Italy is Rome.\n\nAnswer briefly."
#: (echoing the system text) without the last one.
TRANSCRIPT_STOPS: tuple[str, ...] = ("\nUser:", "\nAssistant:", "\nSystem:", "\n\n")

_LABELS = {"user": "User", "assistant": "Assistant"}


def has_chat_template(tokenizer: object) -> bool:
    """Whether ``tokenizer`` (a Hugging Face tokenizer) carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_transcript(messages: Iterable[Mapping[str, str]]) -> str:
    """Render chat ``messages`` as a transcript that ends where the assistant's reply begins.

    System messages come first as plain paragraphs; user and assistant turns
    follow as ``User: …`` / ``Assistant: …`` lines; the text ends with
    ``"Assistant:"`` (no trailing space: the model's first token brings it).

    Args:
        messages: ``{"role": "system" | "user" | "assistant", "content": str}``
            in order (any other role is labelled with its capitalized name).

    Returns:
        The prompt text, e.g. ``"Be brief.\\n\\nUser: Hi\\nAssistant:"``.
    """
    system: list[str] = []
    turns: list[str] = []
    for message in messages:
        role, content = message["role"], message["content"].strip()
        if role in ("system", "developer"):
            system.append(content)
        else:
            turns.append(f"{_LABELS.get(role, role.capitalize())}: {content}")
    head = "\n\n".join(part for part in system if part)
    body = "\n".join([*turns, "Assistant:"])
    return f"{head}\n\n{body}" if head else body
