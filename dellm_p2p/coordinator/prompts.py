"""One prompt builder for every peer: chat for instruct models, few-shot completion for base models.

The coordinator asks each peer in the form its model was trained for, chosen
by the model's card (:func:`dellm_p2p.models.card_for` on the model name the
peer announces; an unknown model is taken for an instruct model, since
serving engines apply its chat template):

* **Instruct models** get chat messages: the chunk prompt of
  :func:`~dellm_p2p.coordinator.decompose.chunk_prompt` as the last user
  message, the conversation's earlier turns before it (the pipeline trims
  them to the context window).
* **Base models** (no chat template, e.g. Gemma 3 270M) get a raw completion
  prompt: a few worked examples ("shots") of the chunk's kind, the earlier
  turns as question/answer pairs, then the chunk, with stop sequences so the
  model does not run on into an invented next shot. Few-shot prompting is how
  base models are evaluated and used (Brown et al. 2020, "Language Models are
  Few-Shot Learners"); measured on Gemma 3 270M, greedy, capitals: a
  two-shot ``Q:/A:`` prompt got 25 of the first 40 countries, zero-shot 2
  (../shared/notes/vllm-cpu.md).

The shots never name a country's capital, so no question of the capitals
evaluation set appears in a prompt. Answer extraction and program-aided
arithmetic read both kinds of reply the same way
(:func:`~dellm_p2p.coordinator.program.candidate_answer`): a base model's
MATH shot ends in an expression line, which :func:`~dellm_p2p.coordinator.program.find_expression`
finds as it does in an instruct model's reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..models import card_for
from .decompose import chunk_prompt, render_chunk_prompt
from .program import uses_program
from .types import Chunk, Operation

__all__ = [
    "BASE_STOP",
    "FACT_SHOTS",
    "PROGRAM_SHOTS",
    "WORD_PROBLEM_SHOTS",
    "PeerPrompt",
    "base_prompt",
    "build_prompt",
    "is_instruct",
]

#: Short factual questions answered in a few words (LOOKUP, COMPARE, GENERAL chunks).
FACT_SHOTS: tuple[tuple[str, str], ...] = (
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the capital city of the US state of Texas?", "Austin"),
    ("What is the chemical symbol for gold?", "Au"),
)
#: Program-aided MATH: the reply is the arithmetic expression (the coordinator computes it).
PROGRAM_SHOTS: tuple[tuple[str, str], ...] = (
    ("What is 12 plus 30?", "12 + 30"),
    ("What is 9 minus 14?", "9 - 14"),
    ("Calculate 15% of 80.", "15% * 80"),
    ("What is 6 times 7, minus 5?", "6 * 7 - 5"),
)
#: Word problems (several sentences) answered with a short worked solution ending in "The answer is N.".
WORD_PROBLEM_SHOTS: tuple[tuple[str, str], ...] = (
    (
        "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?",
        "3 boxes of 4 apples is 3 * 4 = 12 apples. After eating 2, 12 - 2 = 10 are left. The answer is 10.",
    ),
    (
        "A book costs $8 and a pen costs $2. How much do 2 books and 3 pens cost?",
        "2 books cost 2 * 8 = 16 dollars. 3 pens cost 3 * 2 = 6 dollars. 16 + 6 = 22. The answer is 22.",
    ),
)
#: Stop sequences of a base model's completion: the start of the next shot (or a blank line).
BASE_STOP: tuple[str, ...] = ("\nQ:", "\n\n", "\nQuestion:")
#: Longest earlier-turn text kept per message in a base prompt [characters]: small windows.
MAX_TURN_CHARS = 600


@dataclass(frozen=True)
class PeerPrompt:
    """What one peer is sent for one chunk: exactly one of ``messages`` (chat) or ``prompt`` (completion).

    Attributes:
        messages: chat messages (``{"role", "content"}``) for an instruct model;
            the earlier turns are *not* included (the pipeline adds those that
            fit the chosen peers' context windows).
        prompt: the whole completion prompt for a base model, earlier turns included.
        stop: stop sequences for the completion (empty for chat).
    """

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    stop: tuple[str, ...] = ()


def is_instruct(model: str | None) -> bool:
    """Whether a peer announcing ``model`` gets chat messages (True) or a few-shot completion (False).

    From the model's card (:func:`dellm_p2p.models.card_for`), also for a base
    model served with an adapter (``<base>:<adapter>``); a model without a
    card is taken for an instruct model: an engine serving it applies its chat template.
    """
    if not model:
        return True
    card = card_for(model) or card_for(model.split(":", 1)[0])
    return card is None or card.instruct


def _shots(chunk: Chunk, program_aided: bool) -> tuple[tuple[tuple[str, str], ...], str]:
    """The shots and the answer label for ``chunk``'s kind."""
    if uses_program(chunk, program_aided):
        return PROGRAM_SHOTS, "Expression"
    if chunk.operation is Operation.MATH:
        return WORD_PROBLEM_SHOTS, "A"
    return FACT_SHOTS, "A"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TURN_CHARS else text[: MAX_TURN_CHARS - 1].rstrip() + "…"


def base_prompt(
    chunk: Chunk,
    answers: Mapping[str, str],
    *,
    program_aided: bool = True,
    history: Sequence[Mapping[str, str]] = (),
) -> str:
    """The few-shot completion prompt for a base model (see the module docstring).

    Layout: any system message as a plain first line, the shots as ``Q: …`` /
    ``<label>: …`` pairs, then the earlier turns of the conversation (a user
    turn as ``Q:``, an assistant turn as ``A:``), then ``Q: <chunk>`` with
    any dependency's answer on an ``Earlier result`` line above it, and the
    label the model completes (``A:`` or ``Expression:``).

    Args:
        chunk: the chunk to ask.
        answers: known answers of earlier chunks by id (its dependencies).
        program_aided: ask a one-sentence MATH chunk for an expression.
        history: the conversation's earlier messages, oldest first.

    Returns:
        The prompt text, ending with ``"<label>:"`` (no trailing space:
        tokenizers start the answer with its own space).
    """
    shots, label = _shots(chunk, program_aided)
    system: list[str] = []
    lines: list[str] = []
    for message in history:
        content = _one_line(message.get("content", ""))
        if not content:
            continue
        role = message.get("role")
        if role == "system":
            system.append(content)
        elif role == "user":
            lines.append(f"Q: {content}")
        else:
            lines.append(f"A: {content}")
    shot_lines = [f"Q: {q}\n{label}: {a}" for q, a in shots]
    question = render_chunk_prompt(chunk, dict(answers)).replace("\n", " ")
    return "\n".join([*system, *shot_lines, *lines, f"Q: {question}", f"{label}:"])


def build_prompt(
    chunk: Chunk,
    answers: Mapping[str, str],
    model: str | None,
    *,
    program_aided: bool = True,
    history: Sequence[Mapping[str, str]] = (),
) -> PeerPrompt:
    """What to send a peer serving ``model`` for ``chunk``: chat or a few-shot completion by its card.

    Args:
        chunk: the chunk to ask.
        answers: known answers of earlier chunks by id.
        model: the model name the peer announces (``None``: unknown, chat).
        program_aided: ``AskOptions.program_aided``.
        history: the conversation's earlier messages (only a base prompt
            embeds them, and not for a chunk that quotes the conversation
            in its :attr:`~.types.Chunk.context`; chat messages get them
            from the pipeline).
    """
    if is_instruct(model):
        text = chunk_prompt(chunk, dict(answers), program_aided=program_aided)
        return PeerPrompt(messages=[{"role": "user", "content": text}])
    # A chunk that quotes the conversation (Chunk.context) goes without the earlier turns, as chat does.
    turns = () if chunk.context else history
    return PeerPrompt(prompt=base_prompt(chunk, answers, program_aided=program_aided, history=turns), stop=BASE_STOP)
