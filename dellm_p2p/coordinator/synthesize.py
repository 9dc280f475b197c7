"""Synthesize: one LLM combines the chunks' voted answers into one coherent answer — without changing them.

The prompt follows the aggregate-and-synthesize step of Mixture-of-Agents
(Wang et al., 2024, "Mixture-of-Agents Enhances Large Language Model
Capabilities"): the model sees the user's question and the answer voted for
each part, and writes one answer. Kept short and plain: the default model
has 135M parameters.

The final answer keeps the vote: :func:`unkept_answers` checks that every
chunk's winning answer (a number or a short entity) can be found in the
synthesized text; when one cannot, or synthesis fails, the coordinator
returns :func:`fallback_answer` instead, a deterministic composition of the
voted replies. A single chunk is never synthesized: its winner's reply
(:func:`reply_text`) is the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .extract import fold
from .types import Candidate, Chunk, VoteResult

__all__ = ["SYSTEM_PROMPT", "fallback_answer", "reply_text", "synthesis_messages", "unkept_answers"]

SYSTEM_PROMPT = (
    "You combine answers from several assistants into one clear, correct reply. "
    "Use the given answers; do not change them and do not invent new facts."
)
#: Answer keys with more words than this are open-ended text: a paraphrase cannot be checked.
MAX_CHECKED_WORDS = 4

# A tiny model often goes on with an invented next turn ("\nQuestion: …", "\nUser: …").
_NEXT_TURN = re.compile(r"\n[ \t]*(?:Q|Question|User|Human|Assistant)[ \t]*:", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def reply_text(candidate: Candidate) -> str:
    """What the user is shown of one candidate's reply.

    A program-aided MATH reply shows its computation and value
    (``"98 + 45 = 143"``: the model's own arithmetic after its expression is
    often wrong); any other reply is its text, cut before an invented next
    turn, whitespace trimmed.
    """
    if candidate.expression is not None:
        return f"{candidate.expression} = {candidate.display}"
    text = candidate.text.replace("\r\n", "\n")
    match = _NEXT_TURN.search(text)
    if match and text[: match.start()].strip():
        text = text[: match.start()]
    return text.strip()


def _answer_line(vote: VoteResult | None) -> str:
    if vote is None or vote.winner is None:
        return "(no answer)"
    return reply_text(vote.winner)


def synthesis_messages(question: str, chunks: Sequence[Chunk], votes: dict[str, VoteResult]) -> list[dict[str, str]]:
    """Chat messages asking for one answer that covers every chunk.

    Parts are listed as ``- <chunk text>: <voted reply>`` bullets (numbered
    lists made the default model echo and nest the numbering).

    Args:
        question: the user's question.
        chunks: the chunks in order.
        votes: vote result per chunk id (a chunk without a winner is listed as unanswered).

    Returns:
        ``[{"role": "system", ...}, {"role": "user", ...}]``.
    """
    lines = [f"Question: {question.strip()}", "", "Answers to its parts:"]
    for chunk in chunks:
        lines.append(f"- {chunk.text}: {_answer_line(votes.get(chunk.id))}")
    lines += ["", "Write one short, coherent answer to the question that keeps these answers."]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _numbers(text: str) -> set[str]:
    return {fold(m.group()).replace(",", "") for m in _NUMBER.finditer(text)}


def unkept_answers(text: str, chunks: Sequence[Chunk], votes: dict[str, VoteResult]) -> list[str]:
    """Chunk ids whose winning answer cannot be found in a synthesized ``text``.

    A numeric answer must appear among the text's numbers ("100" in "… is
    $100."; "1,000" and "1000" are equal); an entity of at most
    :data:`MAX_CHECKED_WORDS` words (its display and its vote key) that is
    a name (shown with a capital letter) must appear as whole words of the
    folded text (case, accents and punctuation ignored). Open-ended answers
    (longer keys, or a lower-case phrase cut from running text) and chunks
    without a winning answer are not checked: a paraphrase cannot be told
    from a contradiction by rules.

    Returns:
        Ids in chunk order; empty when every checkable answer is kept.
    """
    folded = f" {fold(text)} "
    numbers = _numbers(text)
    missing = []
    for chunk in chunks:
        vote = votes.get(chunk.id)
        if vote is None or vote.answer is None or vote.winner is None:
            continue
        shown = vote.winner.display or vote.answer
        if _NUMBER.fullmatch(shown.strip()):
            if fold(shown).replace(",", "") not in numbers:
                missing.append(chunk.id)
            continue
        key = fold(shown)
        if not key or len(key.split()) > MAX_CHECKED_WORDS or len(vote.answer.split()) > MAX_CHECKED_WORDS:
            continue
        if not shown.strip()[:1].isupper():
            continue  # not a name ("often determined by a"): a phrase cut from open-ended text, not checkable
        if f" {key} " not in folded:
            missing.append(chunk.id)
    return missing


def fallback_answer(chunks: Sequence[Chunk], votes: dict[str, VoteResult]) -> str:
    """The voted replies composed without a model: what the user gets when synthesis fails or drops a vote.

    One chunk: its winner's :func:`reply_text`. Several: one short section
    per chunk, the chunk's text on its own line and the winner's reply under
    it, sections separated by a blank line — no echo of the whole question and
    no numbering added.
    """
    if len(chunks) == 1:
        return _answer_line(votes.get(chunks[0].id))
    return "\n\n".join(f"{chunk.text}\n{_answer_line(votes.get(chunk.id))}" for chunk in chunks)
