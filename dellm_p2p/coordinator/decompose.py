"""Decompose: split a user's question into :class:`~dellm_p2p.coordinator.types.Chunk` s.

Two ways, both pure (no I/O):

* :func:`decompose` — the DELLM design's decomposition rules: split on
  sequencing words, semicolons, numbered steps and bullets, and on "and"
  between two full instructions; classify each piece by keywords; link a
  piece to the previous one when it refers back to it ("that much", "the
  result").
* :func:`parse_llm_decomposition` — validate a model's JSON plan (asked for
  with :data:`LLM_DECOMPOSE_PROMPT`); any invalid reply raises
  :class:`DecompositionError` so the caller falls back to the rules.

:func:`render_chunk_prompt` turns a chunk plus the answers it depends on into
the text sent to a peer.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError, field_validator

from .extract import ANSWER_SUFFIX
from .program import program_prompt, uses_program
from .types import Chunk, Operation

__all__ = [
    "LLM_DECOMPOSE_PROMPT",
    "OPERATION_PRIORITY",
    "DecompositionError",
    "chunk_prompt",
    "classify",
    "complexity",
    "decompose",
    "parse_llm_decomposition",
    "render_chunk_prompt",
    "with_conversation",
]

#: Fewer words than this is a phrase, not a task: merged into a neighbour.
MIN_CHUNK_WORDS = 3
#: Longest dependency answer quoted in a chunk prompt [characters]; the peers are tiny models.
MAX_CONTEXT_CHARS = 300

Span = tuple[int, int]
# Characters looked at around a candidate split point (keeps long inputs linear).
_WINDOW = 80


class DecompositionError(ValueError):
    """A model's decomposition is unusable (the message is one line saying why)."""


# --- Vocabulary -------------------------------------------------------------------------------

# Imperative verbs that open an instruction. Used to decide whether "X and Y" is two tasks and
# whether "next" is a sequencing word; "<verb> of" ("list of", "name of") is a noun, not a verb.
_INSTRUCTION = (
    r"(?:calculate|compute|find|search|look\s+(?:up|for|into)|list|name|compare|write|rewrite|create|compose"
    r"|draft|generate|summari[sz]e|explain|describe|tell|give|translate|convert|estimate|determine|show|suggest"
    r"|recommend|identify|evaluate|solve|check|get|add|subtract|multiply|divide|count|plan|make|rank|define"
    r"|outline|analy[sz]e|predict|provide|research)\b(?!\s+of\b)"
)
# A question clause: wh-word plus an auxiliary ("what is", "how many"), not a bare "why it matters".
_WH_CLAUSE = (
    r"(?:what|who|where|when|which|how|why)(?:'s|\s+(?:is|are|was|were|does|do|did|can|could|should|would|will"
    r"|has|have|much|many|long|far|old|big))\b"
)
_CLAUSE_START = re.compile(rf"(?i)(?:{_INSTRUCTION}|{_WH_CLAUSE})")
# Politeness before the verb does not stop a clause from being an instruction.
_POLITE = re.compile(
    r"(?i)(?:please\s+|kindly\s+|(?:can|could|would|will)\s+you\s+(?:please\s+)?|i\s+(?:want|need|would\s+like)"
    r"\s+you\s+to\s+|help\s+me\s+)"
)
# Ordinals that open a step ("First, …", "Secondly find …"); "First World War" keeps its "First".
_ORDINAL = re.compile(
    rf"(?i)(?:first\s+of\s+all|firstly|first|secondly|second|thirdly|third|to\s+(?:start|begin)|and)"
    rf"(?:\s*,\s*|\s+(?={_INSTRUCTION}|{_WH_CLAUSE}))"
)
_LEADING_JUNK = re.compile(r"(?:[\s,;:!?]|[.\-–—*•](?=\s))+")
_TRAILING_JUNK = re.compile(r"[\s,;:.\-–—]+$")

_SEQUENCING = re.compile(r"(?i)\b(?:(and)\s+)?(then|next|finally|lastly|also|afterwards|after\s+that)\b")
# "then" that is not a step: "since then", "back then", and the "than" typo after comparatives.
_NOT_BEFORE_THEN = frozenset(
    "since until till by back from just even only right now better worse more less rather other greater smaller"
    " larger bigger higher lower faster slower older younger".split()
)
_AND = re.compile(r"(?i)(?:\s*,\s*|\s+)and\s+")
_SEMICOLON = re.compile(r";")
_BULLET = re.compile(r"(?m)^[ \t]*[-*•][ \t]+")
# "1." / "1)" / "Step 1:"; the look-behind keeps decimals ("3.5"), money and "x1." out.
_NUMBERED = re.compile(r"(?i)(?<![\w.,$])(?:step\s*(\d{1,2})\s*[:.)\-–—]?|(\d{1,2})[.)])(?=\s)")

# Anaphora: the chunk uses the previous chunk's answer ("paying that much", "multiply the result").
_ANAPHORA = re.compile(
    r"(?i)\b(?:that|it|this|the\s+(?:result|answer|same)|those|them|above)\b"
    r"(?!\s+(?:year|month|week|day|morning|afternoon|evening|night|time|weekend|season)\b)"
)
_NOT_ANAPHORA = re.compile(r"(?i)\b(?:so|such)\s+that\b")

_OPENING_QUOTES = {'"': '"', "“": "”", "«": "»", "'": "'", "‘": "’"}
_PROTECTED = "\x00"

# Keyword patterns per operation; each match scores one point (case-insensitive, whole words).
_KEYWORDS: dict[Operation, tuple[re.Pattern[str], ...]] = {
    Operation.COMPARE: tuple(
        re.compile(p, re.IGNORECASE)
        for p in (
            r"\b(?:compare[sd]?|comparing|comparison)\b",
            r"\bversus\b",
            r"\bvs\b",
            r"\bdifferences?\s+between\b",
            r"\b(?:better|worse)\s+than\b",
            r"\bwhich\s+is\s+(?:better|worse)\b",
            r"\bpros\s+and\s+cons\b",
        )
    ),
    Operation.MATH: tuple(
        re.compile(p, re.IGNORECASE)
        for p in (
            r"\b(?:calculate[sd]?|calculating|calculation|compute[sd]?|computing)\b",
            r"\bhow\s+(?:much|many)\b",
            r"\bpercent(?:age)?s?\b",
            r"\d\s*%",
            r"\bsums?\b(?!\s+up\b)",
            r"\b(?:add|adds|added)\b",
            # Word operators count next to an operand: "12 times 7", not "how times have changed".
            r"(?:\d|\b(?:result|answer|it|that|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve"
            r"|twenty|hundred|thousand))\s+(?:times|plus|minus)\b",
            # ... or before a numeral: "my favourite number plus 3" (not "plus one fun fact").
            r"\b(?:times|plus|minus)\s+\d",
            r"\b(?:multiply|multiplied|multiplying|multiplication)\b",
            r"\b(?:divide|divided|dividing|division)\b",
            r"\binterest\s+(?:rates?|on|earned|of)\b|\b(?:compound|simple|annual|monthly|\d%?)\s+interest\b",
            r"\baverage\b",
            r"\d\s*[+*/×÷^]\s*\d|\d\s+[-x]\s+\d",
        )
    ),
    Operation.GENERATE: tuple(
        re.compile(p, re.IGNORECASE)
        for p in (
            r"\b(?:write|rewrite|create|compose|draft|generate)\b",
            r"\b(?:summari[sz]e|summary|sum\s+up)\b",
            r"\b(?:explain|describe)\b",
            r"\b(?:story|stories|poems?|essays?|e-?mails?|haiku)\b",
        )
    ),
    Operation.LOOKUP: tuple(
        re.compile(p, re.IGNORECASE)
        for p in (
            r"\b(?:find|search|look\s+up|lookup)\b",
            r"\b(?:what|who|where)(?:'s|\s+(?:is|are|was|were))\b",
            r"\b(?:when|which)\b",
            r"\blist\b",
            r"\bbest\b",
            r"\bcapital\s+of\b",
            r"\bname\s+the\b",
        )
    ),
}

#: Tie-break order when two operations score the same number of keyword hits (earlier wins).
#: Comparing and computing are the most specific asks, open-ended writing next, a plain look-up last.
OPERATION_PRIORITY: tuple[Operation, ...] = (
    Operation.COMPARE,
    Operation.MATH,
    Operation.GENERATE,
    Operation.LOOKUP,
    Operation.GENERAL,
)

# Complexity base per operation: look-ups are short factual answers, comparisons need two of them.
_COMPLEXITY_BASE = {
    Operation.LOOKUP: 0.2,
    Operation.GENERAL: 0.25,
    Operation.MATH: 0.3,
    Operation.GENERATE: 0.4,
    Operation.COMPARE: 0.45,
}
_COMPLEXITY_WORDS = 40


# --- Public API -------------------------------------------------------------------------------


def classify(text: str) -> Operation:
    """The :class:`Operation` a piece of text asks for, by keywords.

    Each keyword match (case-insensitive, whole words) scores one point for its
    operation; the highest score wins and ties go to the earlier operation in
    :data:`OPERATION_PRIORITY` (COMPARE > MATH > GENERATE > LOOKUP). No match
    gives GENERAL. So "what is 12 times 7" is MATH (tie with LOOKUP), "what is
    the capital of France" LOOKUP, "write a poem" GENERATE.

    Source: the DELLM design's decomposition rules.
    """
    masked = _mask_protected(text, parentheses=False)  # "(12 * 7)" is still math; a quoted "poem" is not a request
    best, best_score = Operation.GENERAL, 0
    for op in OPERATION_PRIORITY[:-1]:  # priority order, so ">" keeps the earlier one on a tie
        score = sum(len(p.findall(masked)) for p in _KEYWORDS[op])
        if score > best_score:
            best, best_score = op, score
    return best


def complexity(text: str, operation: Operation) -> float:
    """How hard a chunk is, in [0, 1]: ``base(operation) + 0.5 * min(words, 40) / 40``.

    ``base`` is LOOKUP 0.2, GENERAL 0.25, MATH 0.3, GENERATE 0.4, COMPARE 0.45;
    ``words`` counts whitespace-separated tokens holding a letter or digit. The
    result is clamped to [0, 1] and rounded to 3 decimals, so longer text and a
    harder operation both score higher.

    Source: the DELLM design's decomposition rules.
    """
    words = _word_count(text)
    value = _COMPLEXITY_BASE[operation] + 0.5 * min(words, _COMPLEXITY_WORDS) / _COMPLEXITY_WORDS
    return round(min(1.0, max(0.0, value)), 3)


def decompose(question: str, *, max_chunks: int = 8) -> list[Chunk]:
    """Split ``question`` into ordered chunks with the DELLM design's decomposition rules.

    Split points, outside quotes ("…", '…', “…”) and parentheses only:

    * numbered steps ("1. … 2. …", "1) … 2) …", "Step 1: …", counting up from 1)
      and lines starting with a ``-``, ``*`` or ``•`` bullet;
    * ``;``;
    * the sequencing words "then", "and then", "after that", "afterwards",
      "next", "finally", "lastly", "also" ("then" not after "if …", "since",
      "back" …; the others only at a clause boundary; "next" only before an
      instruction);
    * "and" / ", and" when both sides are instructions of their own
      ("Calculate X and find Y"; not "salt and pepper", "compare A and B").

    Pieces of fewer than 3 words are merged back into a neighbour (the previous
    one, else the next), a piece ending in ":" (a list header) into the next,
    and pieces past ``max_chunks`` into the last chunk. Sequencing words,
    leading ordinals ("First,") and the punctuation around split points are
    stripped; the last chunk keeps the question's final "?" or ".". When one
    chunk remains its text is the whole trimmed question.

    Each chunk gets an operation (:func:`classify`), a complexity
    (:func:`complexity`) and ``depends_on=("c<k-1>",)`` when it refers back to
    the previous chunk ("that", "that much", "it", "this", "the result", "the
    answer", "those", "them", "the same", "above").

    Args:
        question: the user's question.
        max_chunks: most chunks to return (>= 1).

    Returns:
        Chunks ``c1``, ``c2``, … in question order; at least one.

    Raises:
        ValueError: "the question is empty" for empty or whitespace-only input;
            ``max_chunks`` below 1.
    """
    text = question.strip()
    if not text:
        raise ValueError("the question is empty")
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
    masked = _mask_protected(text)

    spans: list[Span] = [(0, len(text))]
    spans = _cut(spans, lambda s, e: _structural_separators(masked, s, e))
    spans = _cut(spans, lambda s, e: _sequencing_separators(masked, s, e))
    spans = _cut(spans, lambda s, e: _and_separators(masked, s, e))
    spans = [(s, e) for s, e in spans if _has_alnum(text[s:e])]

    spans = _merge_headers(text, spans)
    spans = _merge_short(text, spans)
    spans = _merge_statements(text, masked, spans)
    if len(spans) > max_chunks:
        spans = [*spans[: max_chunks - 1], (spans[max_chunks - 1][0], spans[-1][1])]

    if len(spans) <= 1:
        pieces = [(0, len(text))]
    else:
        pieces = [_clean(text, s, e, last=i == len(spans) - 1) for i, (s, e) in enumerate(spans)]

    chunks: list[Chunk] = []
    for i, (s, e) in enumerate(pieces):
        chunk_text = text[s:e]
        operation = classify(chunk_text)
        refers_back = i > 0 and _refers_back(masked[s:e])
        chunks.append(
            Chunk(
                id=f"c{i + 1}",
                text=chunk_text,
                operation=operation,
                complexity=complexity(chunk_text, operation),
                depends_on=(f"c{i}",) if refers_back else (),
            )
        )
    return chunks


def render_chunk_prompt(chunk: Chunk, answers: dict[str, str]) -> str:
    """The text sent to a peer for ``chunk``.

    The chunk's conversation context first (:attr:`Chunk.context`, set by
    :func:`with_conversation`), then one line ``Earlier result (<id>): <answer>`` per dependency whose answer is
    in ``answers`` and not blank (whitespace collapsed, cut to 300 characters:
    the peers are tiny models), then the chunk text. Unknown dependencies are
    left out. Without any it is just ``chunk.text``.
    """
    lines = [chunk.context] if chunk.context else []
    for dep in chunk.depends_on:
        answer = " ".join((answers.get(dep) or "").split())
        if not answer:
            continue
        if len(answer) > MAX_CONTEXT_CHARS:
            answer = answer[: MAX_CONTEXT_CHARS - 1].rstrip() + "…"
        lines.append(f"Earlier result ({dep}): {answer}")
    lines.append(chunk.text)
    return "\n".join(lines)


def chunk_prompt(chunk: Chunk, answers: dict[str, str], *, program_aided: bool = False) -> str:
    """The user message the coordinator sends for ``chunk``: :func:`render_chunk_prompt`,
    plus :data:`~dellm_p2p.coordinator.extract.ANSWER_SUFFIX` on a new line for MATH chunks only.

    With ``program_aided`` a MATH chunk is instead wrapped in
    :func:`~dellm_p2p.coordinator.program.program_prompt` (asking for the
    arithmetic expression that answers it; see :func:`~dellm_p2p.coordinator.program.uses_program`).

    Why only MATH: on ../shared/data/capitals.jsonl (194 questions, default
    135M model) the suffix made one sample at T=0.7 right 21.6% of the time
    against 37.6% for the bare question, and the weighted vote of 7 samples
    42.3% against 52.1%: the tiny model writes junk on the ``Answer:`` line
    it is asked for. A MATH reply's final number is what the vote compares,
    and the ``Answer:`` line is where the model states it.
    """
    prompt = render_chunk_prompt(chunk, answers)
    if uses_program(chunk, program_aided):
        return program_prompt(prompt)
    return f"{prompt}\n{ANSWER_SUFFIX}" if chunk.operation is Operation.MATH else prompt


# The chunk speaks of the user or the assistant, or refers back: it may need what earlier turns said.
_PERSONAL = re.compile(r"(?i)\b(?:i|me|my|mine|myself|we|us|our|ours|you|your|yours)\b")


def _quote(text: str, limit: int) -> str:
    """``text`` with whitespace collapsed, its newest ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-(limit - 1) :].lstrip()


def with_conversation(chunks: Iterable[Chunk], history: Iterable[Mapping[str, str]]) -> list[Chunk]:
    """``chunks`` with :attr:`Chunk.context` set from the conversation's earlier turns where they refer to them.

    A chunk refers to the conversation when it speaks of the user or the
    assistant ("my", "I", "your", …) or refers back ("that", "it", "the
    result"): it then carries ``Earlier in this conversation the user said:
    <the user's earlier turns>`` (newest :data:`MAX_CONTEXT_CHARS`
    characters) and, when it refers back, ``Your previous answer: <the last
    assistant turn>``. Facts the user stated are what a later question
    builds on ("My favourite number is 7." → "what is my favourite number
    plus 3?"), and a program-aided chunk's expression needs the number in
    the question it restates. The pipeline sends such a chunk without the
    earlier chat messages: given them, the default 135M model answered
    "What is my name" with "I'm glad to hear that.", given this line alone
    with "Alice, welcome…". Of four wordings tried (one node, greedy), this
    one alone had the program-aided reply write "7 + 3" (the others: "The
    answer is 7.").

    Args:
        chunks: the decomposed chunks.
        history: the earlier messages (``{"role", "content"}``), oldest first.

    Returns:
        New chunks (the input is not changed); the same chunks without history.
    """
    turns = [(m.get("role"), m.get("content") or "") for m in history]
    said = " ".join(content for role, content in turns if role == "user" and content.strip())
    answered = next((content for role, content in reversed(turns) if role == "assistant" and content.strip()), "")
    out = []
    for chunk in chunks:
        lines = []
        back = _refers_back(_mask_protected(chunk.text))
        if said and (back or _PERSONAL.search(chunk.text)):
            lines.append(f"Earlier in this conversation the user said: {_quote(said, MAX_CONTEXT_CHARS)}")
        if answered and back:
            lines.append(f"Your previous answer: {_quote(answered, MAX_CONTEXT_CHARS)}")
        out.append(dataclasses.replace(chunk, context="\n".join(lines)) if lines else chunk)
    return out


_OPERATION_NAMES = "|".join(op.value for op in Operation)

#: Prompt asking a model for a JSON decomposition; fill with ``.format(question=...)``.
LLM_DECOMPOSE_PROMPT = (
    "Split the question into simple subtasks. Reply with ONLY a JSON list, no other text.\n"
    'Each item: {{"task": "<subtask>", "operation": "' + _OPERATION_NAMES + '", '
    '"depends_on": [<numbers of earlier items it needs, counting from 0>]}}\n'
    'Example question: "Calculate 10% of 1000, then find savings accounts paying that much"\n'
    'Example answer: [{{"task": "Calculate 10% of 1000", "operation": "MATH", "depends_on": []}}, '
    '{{"task": "Find savings accounts paying that much", "operation": "LOOKUP", "depends_on": [0]}}]\n'
    "Question: {question}\n"
    "JSON:"
)


def parse_llm_decomposition(text: str, question: str, *, max_chunks: int = 8) -> list[Chunk]:
    """Chunks from a model's reply to :data:`LLM_DECOMPOSE_PROMPT`.

    The reply's first JSON array (prose and ```json fences around it are
    ignored; an array of objects is preferred over e.g. a "[1]" in the prose)
    must hold 1..``max_chunks`` objects ``{"task": str, "operation": str,
    "depends_on": [int]}``: ``operation`` one of the :class:`Operation` values
    in any case (missing: classified by keywords), ``depends_on`` 0-based
    indices of earlier items (missing or null: none). Every task must share a
    content word with ``question``; this rejects a small model echoing the
    prompt's example instead of splitting the question.

    Returns:
        Chunks ``c1``, ``c2``, … with ``depends_on`` as chunk ids and a
        complexity from :func:`complexity`.

    Raises:
        DecompositionError: on any invalid reply (no JSON array, empty list,
            non-object item, non-string or blank task, unknown operation,
            dependency forward/on itself/out of range, more than
            ``max_chunks`` items, a task unrelated to the question).
        ValueError: "the question is empty"; ``max_chunks`` below 1.
    """
    if not question.strip():
        raise ValueError("the question is empty")
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
    data = _first_json_array(text)
    if data is None:
        raise DecompositionError("no valid JSON array in the reply")
    if not data:
        raise DecompositionError("the JSON list is empty")
    if len(data) > max_chunks:
        raise DecompositionError(f"{len(data)} subtasks, more than the limit of {max_chunks}")
    try:
        subtasks = _SUBTASKS.validate_python(data)
    except ValidationError as exc:
        raise DecompositionError(_one_line(exc)) from None

    question_words = _content_stems(question)
    chunks: list[Chunk] = []
    for i, sub in enumerate(subtasks):
        bad = [d for d in sub.depends_on if not 0 <= d < i]
        if bad:
            raise DecompositionError(f"subtask {i} depends on {bad[0]}, which is not an earlier subtask")
        if not _content_stems(sub.task) & question_words:
            raise DecompositionError(f"subtask {i} ({sub.task[:60]!r}) shares no word with the question")
        operation = sub.operation or classify(sub.task)
        chunks.append(
            Chunk(
                id=f"c{i + 1}",
                text=sub.task,
                operation=operation,
                complexity=complexity(sub.task, operation),
                depends_on=tuple(f"c{d + 1}" for d in sorted(set(sub.depends_on))),
            )
        )
    return chunks


# --- LLM reply validation ---------------------------------------------------------------------


class _Subtask(BaseModel):
    """One item of a model's decomposition."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task: StrictStr
    operation: Operation | None = None
    depends_on: list[StrictInt] = Field(default_factory=list)

    @field_validator("task")
    @classmethod
    def _task_not_blank(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the task is blank")
        return value

    @field_validator("operation", mode="before")
    @classmethod
    def _operation_any_case(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"operation must be a string, got {value!r}")
        try:
            return Operation(value.strip().upper())
        except ValueError:
            raise ValueError(f"unknown operation {value!r}") from None

    @field_validator("depends_on", mode="before")
    @classmethod
    def _depends_on_null(cls, value: Any) -> Any:
        return [] if value is None else value


_SUBTASKS = TypeAdapter(list[_Subtask])


def _first_json_array(text: str) -> list[Any] | None:
    """The first JSON array in ``text`` that holds objects, else the first array at all."""
    decoder = json.JSONDecoder()
    first: list[Any] | None = None
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if not value or isinstance(value[0], dict):
            return value
        if first is None:
            first = value
    return first


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = error["loc"]
    where = f"subtask {loc[0]}" if loc and isinstance(loc[0], int) else "subtask"
    field = ".".join(str(part) for part in loc[1:])
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a JSON object"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}{' ' + field if field else ''}: {message}".replace("\n", " ")


_STOPWORDS = frozenset(
    "the and for with what who where when which how why that this then than from into about are was were "
    "its it's you your please can could would will should does did has have had also next finally".split()
)


def _content_stems(text: str) -> set[str]:
    """Lower-case 5-letter prefixes of content words and whole numbers, for a loose overlap test."""
    words = re.findall(r"[^\W_]+", text.lower())
    return {w[:5] for w in words if (len(w) >= 3 or w.isdigit()) and w not in _STOPWORDS}


# --- Rule helpers -----------------------------------------------------------------------------


def _mask_protected(text: str, *, parentheses: bool = True) -> str:
    """``text`` with quoted and parenthesized parts replaced by NULs (same length, same offsets).

    Split points and keywords are searched in the masked text, so nothing
    inside quotes or parentheses splits a question. An apostrophe ("don't",
    "users'") is not a quote: a single quote opens only after a non-letter and
    closes only before one. An unclosed double quote or parenthesis protects
    the rest of the text (never split what may be quoted); an unclosed single
    quote is taken as an apostrophe.
    """
    out = list(text)
    n = len(text)
    closers: dict[str, list[int]] = {}  # valid closing single quotes, found once
    i = 0
    while i < n:
        ch = text[i]
        end = -1
        if ch == "(" and parentheses:
            depth = 0
            for j in range(i, n):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    end = j
                    break
            else:
                end = n - 1
        elif ch in _OPENING_QUOTES:
            single = ch in "'‘"
            if not (single and i > 0 and text[i - 1].isalnum()):
                end = _closing_quote(text, i, _OPENING_QUOTES[ch], single, closers)
                if end < 0 and not single:
                    end = n - 1
        if end >= 0:
            out[i : end + 1] = _PROTECTED * (end + 1 - i)
            i = end + 1
        else:
            i += 1
    return "".join(out)


def _closing_quote(text: str, start: int, close: str, single: bool, closers: dict[str, list[int]]) -> int:
    if not single:
        return text.find(close, start + 1)
    # A single quote closes only before a non-letter: the "’" of "don’t" inside ‘…’ does not.
    if close not in closers:
        closers[close] = [m.start() for m in re.finditer(rf"{re.escape(close)}(?![^\W_])", text)]
    positions = closers[close]
    k = bisect.bisect_right(positions, start)
    return positions[k] if k < len(positions) else -1


def _cut(spans: list[Span], finder: Callable[[int, int], Iterable[Span]]) -> list[Span]:
    """Split every span at the separators ``finder`` reports inside it (separators are dropped)."""
    out: list[Span] = []
    for s, e in spans:
        pos = s
        for a, b in finder(s, e):
            if a < pos:
                continue  # overlaps the previous separator
            out.append((pos, a))
            pos = b
        out.append((pos, e))
    return out


def _structural_separators(masked: str, s: int, e: int) -> list[Span]:
    seps = [m.span() for m in _SEMICOLON.finditer(masked, s, e)]
    seps += [m.span() for m in _BULLET.finditer(masked, s, e)]
    seps += _numbered_markers(masked[s:e], s)
    return sorted(seps)


def _numbered_markers(region: str, offset: int) -> list[Span]:
    """Markers of a numbered list counting up from 1; a lone "1." or "and 3." is not a list.

    A "N." marker is *strong* at the start, after a newline or after ``.;:!?,)``
    ("Add 2 and 3. 2. Multiply" → the second "2."); the chain prefers strong
    markers and must start with a strong 1.
    """
    cands = []
    for m in _NUMBERED.finditer(region):
        number = int(m.group(1) or m.group(2))
        before = region[max(0, m.start() - _WINDOW) : m.start()].rstrip(" \t")
        strong = bool(m.group(1)) or (before[-1] in "\n.;:!?,)" if before else m.start() <= _WINDOW)
        cands.append((m.start(), m.end(), number, strong))
    chain = [c for c in cands if c[2] == 1 and c[3]][:1]
    while chain:
        following = [c for c in cands if c[0] >= chain[-1][1] and c[2] == chain[-1][2] + 1]
        if not following:
            break
        chain.append(next((c for c in following if c[3]), following[0]))
    if len(chain) < 2:
        return []
    return [(a + offset, b + offset) for a, b, _, _ in chain]


def _sequencing_separators(masked: str, s: int, e: int) -> list[Span]:
    region = masked[s:e]
    seps: list[Span] = []
    cond_from = 0  # an "if" after this position makes the next "then" part of a conditional
    for m in _SEQUENCING.finditer(region):
        with_and = bool(m.group(1))
        word = m.group(2).lower().split()[0]
        before = region[max(0, m.start() - _WINDOW) : m.start()]
        prev = _last_word(before)
        if word == "then":
            if prev in _NOT_BEFORE_THEN and not with_and:
                continue
            if re.search(r"(?i)\bif\b", region[cond_from : m.start()]):
                cond_from = m.end()
                continue
        else:
            at_boundary = with_and or _at_clause_boundary(before, m.start() <= _WINDOW) or prev in ("then", "also")
            if not at_boundary:
                continue
            if word == "next" and not _CLAUSE_START.match(region[m.end() : m.end() + _WINDOW].lstrip(" \t,:")):
                continue  # "next week", "next to"
        seps.append((m.start() + s, m.end() + s))
        cond_from = m.end()
    return seps


def _and_separators(masked: str, s: int, e: int) -> list[Span]:
    """ "and" between two instructions: "Calculate X and find Y", not "salt and pepper"."""
    region = masked[s:e]
    seps: list[Span] = []
    left_start = 0
    for m in _AND.finditer(region):
        if not _CLAUSE_START.match(region, m.end()):
            continue
        if not _starts_clause(region, left_start, m.start()):
            continue
        seps.append((m.start() + s, m.end() + s))
        left_start = m.end()
    return seps


def _starts_clause(text: str, pos: int, end: int) -> bool:
    """``text[pos:end]`` opens with an instruction or a question clause (after "please" etc.)."""
    pos = _skip_leading(text, pos, end)
    polite = _POLITE.match(text, pos, end)
    if polite:
        pos = polite.end()
    return bool(_CLAUSE_START.match(text, pos, end))


def _at_clause_boundary(before: str, at_start: bool) -> bool:
    """``before`` (the text before a word, or its last characters) ends a clause."""
    stripped = before.rstrip()
    if not stripped:
        return at_start
    return stripped[-1] in ",.;:!?" or "\n" in before[len(stripped) :]


def _last_word(text: str) -> str:
    m = re.search(r"([^\W_]+)[\W_]*$", text)
    return m.group(1).lower() if m else ""


def _skip_leading(text: str, pos: int, end: int | None = None) -> int:
    """Past punctuation, bullets and step openers ("First,", "and") at ``pos``."""
    end = len(text) if end is None else end
    while True:
        junk = _LEADING_JUNK.match(text, pos, end)
        if junk and junk.end() > pos:
            pos = junk.end()
            continue
        ordinal = _ORDINAL.match(text, pos, end)
        if ordinal and ordinal.end() > pos:
            pos = ordinal.end()
            continue
        return pos


def _clean(text: str, s: int, e: int, *, last: bool) -> Span:
    """The span without leading openers/punctuation; trailing ``,;:.`` dropped except on the last chunk."""
    s = _skip_leading(text, s)
    piece = text[s:e]
    if last:
        return s, s + len(piece.rstrip())
    junk = _TRAILING_JUNK.search(piece)
    return s, s + (junk.start() if junk else len(piece))


def _merge_headers(text: str, spans: list[Span]) -> list[Span]:
    """A piece ending in ":" introduces the next ("Do the following: 1. …"): join them."""
    spans = list(spans)
    out: list[Span] = []
    i = 0
    while i < len(spans):
        s, e = spans[i]
        if text[s:e].rstrip().endswith(":") and i + 1 < len(spans):
            spans[i + 1] = (s, spans[i + 1][1])
        else:
            out.append((s, e))
        i += 1
    return out


def _merge_short(text: str, spans: list[Span]) -> list[Span]:
    """Merge pieces under :data:`MIN_CHUNK_WORDS` words into the previous piece, else the next.

    One pass (questions may be long): a short piece joins the last kept piece;
    short pieces before any kept piece accumulate until they reach the limit.
    """
    out: list[Span] = []
    pending: Span | None = None  # leading short pieces waiting for the next one
    pending_words = 0
    for s, e in spans:
        if pending is not None:
            words = pending_words + _word_count(text[pending[1] : e])
            s = pending[0]
        else:
            words = _word_count(text[slice(*_clean(text, s, e, last=True))])
        if words >= MIN_CHUNK_WORDS:
            out.append((s, e))
            pending = None
        elif out:
            out[-1] = (out[-1][0], e)
        else:
            pending, pending_words = (s, e), words
    if pending is not None:  # every piece was short: one piece
        out.append(pending)
    return out


_LINE_START = re.compile(r"[:;\n]")
_STEP_NUMBER = re.compile(r"\s*(?:step\s*)?\d{1,2}\s*[.):]\s+", re.IGNORECASE)


def _asks(text: str, masked: str, s: int, e: int) -> bool:
    """Does the piece ask for something: a "?", or an instruction or wh-clause where it or one of its lines starts?

    Openers ("First,", bullets, "1.", "please") are skipped; a list header
    ("Do the following:") counts through the line after it.
    """
    if "?" in masked[s:e]:
        return True
    for start in (s, *(s + m.end() for m in _LINE_START.finditer(masked, s, e))):
        pos = _skip_leading(text, start, e)
        if step := _STEP_NUMBER.match(text, pos, e):
            pos = _skip_leading(text, step.end(), e)
        if polite := _POLITE.match(text, pos, e):
            pos = polite.end()
        if _CLAUSE_START.match(text, pos, e):
            return True
    return False


def _merge_statements(text: str, masked: str, spans: list[Span]) -> list[Span]:
    """A piece that asks for nothing is context, not a task: join it to the next piece (the last one: to the previous).

    "Josh buys a house for $80,000 and then puts in $50,000 in repairs. How
    much profit did he make?" stays one chunk: its first piece only states a
    fact, and a peer asked it alone has nothing to answer (measured: the rules
    had split 14 of the first 100 GSM8K word problems this way).
    """
    if len(spans) < 2:
        return spans
    out: list[Span] = []
    start: int | None = None  # start of statements waiting for the next piece
    for s, e in spans:
        if _asks(text, masked, s, e):
            out.append((s if start is None else start, e))
            start = None
        elif start is None:
            start = s
    if start is not None:  # trailing statements belong to the last task (or are the whole question)
        if out:
            out[-1] = (out[-1][0], spans[-1][1])
        else:
            out.append((start, spans[-1][1]))
    return out


def _refers_back(masked_text: str) -> bool:
    text = _NOT_ANAPHORA.sub(" ", masked_text)
    return bool(_ANAPHORA.search(text))


def _word_count(text: str) -> int:
    return sum(1 for token in text.split() if _has_alnum(token))


def _has_alnum(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
