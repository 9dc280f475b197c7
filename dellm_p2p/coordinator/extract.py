"""Extract the answer a reply commits to, so that votes compare answers, not phrasings.

Measured on the default 135M model (``/work/shared/notes/vllm-cpu.md``):
voting on each reply's folded first line scored 42.3% on capitals, below a
single greedy answer (49.0%), because "The capital of France is Paris." and
"Paris is the capital of France." are different strings. Voting on the
entity or number a reply commits to is what lets the swarm beat one node.

Everything here is free-text rules (no list of known answers), pure and
fast; it runs on every candidate before :mod:`~dellm_p2p.coordinator.vote`.

* :func:`fold` — the comparison key of any short text.
* :func:`extract_number` — the final number of a MATH reply.
* :func:`extract_entity` — the short entity of a factual reply.
* :func:`extract_answer` — dispatch on :class:`Operation`; returns
  ``(vote key, display)``.
* :data:`ANSWER_SUFFIX` — appended to chunk prompts so replies end with an
  ``Answer: …`` line, which :func:`extract_entity` and
  :func:`extract_number` read first.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

from dellm_p2p.coordinator.types import Operation

__all__ = [
    "ANSWER_SUFFIX",
    "FALLBACK_WORDS",
    "LONG_REPLY_WORDS",
    "OPEN_KEY_WORDS",
    "extract_answer",
    "extract_entity",
    "extract_number",
    "fold",
]

#: Appended to a chunk's prompt on a new line (the caller adds the newline).
#: One short sentence in simple English: the default model has 135M
#: parameters. Not useful for GENERATE chunks, whose answer is the text.
ANSWER_SUFFIX = 'End with one last line: "Answer: " and your short answer.'

#: A GENERAL reply longer than this many words (without an ``Answer:`` line)
#: is open-ended text: its key is the folded full text, not an entity.
LONG_REPLY_WORDS = 40
#: Words kept in the fallback key (folded first sentence) of a factual reply.
FALLBACK_WORDS = 12
#: Words kept in the key of an open-ended reply (GENERATE or long), compared
#: by token Jaccard similarity in :func:`~dellm_p2p.coordinator.vote.cluster_keys`.
OPEN_KEY_WORDS = 64

# --------------------------------------------------------------------------- fold

_ARTICLE = re.compile(r"^(?:the|an?|le|la|les|el|los|las|il|der|die|das)\s+(?=\S)")
# Whole-word abbreviations folded to their spelled-out form, so that
# "St. John's" and "Saint John's" get one key.
_ABBREVIATIONS = {"st": "saint", "mt": "mount", "ft": "fort"}
_QUOTES = str.maketrans({"’": "'", "‘": "'", "´": "'", "`": "'", "−": "-"})


def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def fold(text: str) -> str:
    """The comparison key of a short text: equal keys mean the same answer.

    Steps: Unicode NFKD and accents stripped ("São Tomé" → "sao tome"),
    casefolded; thousands separators dropped between digits ("1,000" →
    "1000"), a decimal point between digits and a leading minus sign kept
    ("-3.5" stays "-3.5", so numbers keep their value); other periods and
    apostrophes deleted so abbreviations and possessives join ("D.C." →
    "dc"); all other punctuation becomes a space ("Port-au-Prince" → "port au
    prince"); one leading article dropped (the/a/an, le/la/les/l',
    el/los/las, il, der/die/das); "st"/"mt"/"ft" spelled out; whitespace
    collapsed.

    Args:
        text: any text (typically a short answer).

    Returns:
        The key; ``""`` when nothing but punctuation and whitespace remains.
    """
    s = _strip_accents(text).casefold().translate(_QUOTES)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    # Protect value-bearing characters from the punctuation pass.
    s = re.sub(r"(?<=\d)\.(?=\d)", "\x00", s)
    s = re.sub(r"(?<![\w.])-(?=\d)", "\x01", s)
    s = re.sub(r"^[^\w\x01]+", "", s)
    s = re.sub(r"^l'(?=\w)", "", s)  # French elided article: l'Aquila
    s = re.sub(r"[.']", "", s)
    s = re.sub(r"[^\w\s\x00\x01]|_", " ", s)
    s = s.replace("\x00", ".").replace("\x01", "-")
    words = s.split()
    if len(words) > 1:
        s = _ARTICLE.sub("", " ".join(words))
        words = s.split()
    return " ".join(_ABBREVIATIONS.get(w, w) for w in words)


# ------------------------------------------------------------------ shared cleanup

_MARKDOWN = re.compile(r"\*+|__+|`+")
# A tiny model often keeps going with the next few-shot turn ("\nQ: …").
_NEXT_TURN = re.compile(r"\n[ \t]*(?:Q|Question|User|Human)[ \t]*:", re.IGNORECASE)
_CONTRACTION = re.compile(r"\b(it|that|this|he|she|what|who|there|here)['’]s\b", re.IGNORECASE)


def _clean(text: str) -> str:
    """Markdown, list bullets and list numbers removed, the reply cut before an invented next turn."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    match = _NEXT_TURN.search(text)
    if match and text[: match.start()].strip():
        text = text[: match.start()]
    text = _MARKDOWN.sub("", text)
    text = re.sub(r"(?m)^[ \t]*(?:#+|[-•>]+)[ \t]+", "", text)
    # A numbered list item ("1. The capital of Iraq is Baghdad."): the number is not the answer.
    text = re.sub(r"(?m)^[ \t]*\d{1,2}[.)][ \t]+(?=[^\W\d_])", "", text)
    return text.strip()


def _has_content(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _tokens(text: str) -> list[str]:
    """Folded word tokens without dropping articles (for repetition checks)."""
    return re.findall(r"\w+", _strip_accents(text).casefold())


# ------------------------------------------------------------------------- numbers

_NUMBER = (
    r"(?<![A-Za-z\d.])(?P<sign>[-−])?(?:[$€£¥₹]\s?)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?(?!\d)"
)
_NUMBER_RE = re.compile(_NUMBER)
# Explicit markers, strongest first; within a class the last occurrence wins
# (a reply's conclusion comes last). Each captures the clause after the marker.
_NUMBER_MARKERS = [
    re.compile(r"####\s*(?P<clause>[^\n]*)|\\boxed\{(?P<boxed>[^{}]*)\}"),
    re.compile(
        r"(?:\b(?:final\s+|correct\s+)?answer(?:\s+to\s+(?:this|the|your)\s+question)?"
        r"\s*(?:is|would\s+be|will\s+be|should\s+be|:|=)|(?m:^)[ \t]*A[ \t]*:)[ \t]*:?[ \t]*(?P<clause>[^\n]*)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:in\s+)?total(?:\s+(?:of|is|was|comes\s+to|will\s+be|=))?\s*:?\s*(?P<clause>[^\n]*)",
        re.IGNORECASE,
    ),
    re.compile(r"=\s*(?P<clause>[^\n=]*)"),
]
_IS_NUMBER_AT_END = re.compile(
    r"\b(?:is|are|was|equals|makes|gives|gets?)\s+" + _NUMBER + r"\s*(?:%\s*)?[.!]?\s*(?:\n|$)",
    re.IGNORECASE,
)


def _normalise_number(match: re.Match[str]) -> str:
    integer = match["int"].replace(",", "").lstrip("0") or "0"
    frac = (match["frac"] or ".")[1:].rstrip("0")
    value = integer + ("." + frac if frac else "")
    if match["sign"] and value != "0":
        value = "-" + value
    return value


def _sentence_end(clause: str) -> str:
    """The clause up to its first sentence end (a period not inside a number)."""
    return re.split(r"(?<!\d)[.!?](?!\d)|[.!?](?=\s|$)", clause, maxsplit=1)[0]


def _number_in_clause(clause: str) -> str | None:
    clause = _sentence_end(clause)
    # "The answer is 3 + 4 = 7" commits to what follows the last "=".
    if "=" in clause:
        clause = clause.rsplit("=", 1)[1]
    match = _NUMBER_RE.search(clause)
    return _normalise_number(match) if match else None


_SENTENCE_PIECE = re.compile(r"(?:[^.!?\n]|(?<=\d)\.(?=\d))*(?:[.!?\n]|$)")


def _drop_questions(text: str) -> str:
    """Remove sentences that end with "?": an echoed question commits to nothing."""
    # finditer consumes each piece once: linear, unlike a search for "…?" from every position.
    return "".join(p for p in _SENTENCE_PIECE.findall(text) if not p.endswith("?"))


def extract_number(text: str) -> str | None:
    """The final number a reply commits to, normalised.

    Order: an explicit marker ("#### X", ``\\boxed{X}``, "the answer is X" /
    "Answer: X" / a line "A: X", "total of X", "= X", then "is X." at the end
    of a line or of the reply); within one kind of marker the last occurrence
    wins; otherwise the last number in the reply. Sentences ending with "?"
    (echoed questions) and an invented next turn ("\\nQ: …") are ignored.

    Normalisation: thousands separators and currency symbols dropped
    ("$1,000.00" → "1000"), trailing decimal zeros dropped ("100.50" →
    "100.5"), leading zeros dropped, the sign kept ("-3"; a minus right
    after a digit is subtraction, not a sign), "10%" → "10". Written-out
    numbers ("forty-two") are not read.

    Args:
        text: the reply.

    Returns:
        The number as a string, or ``None`` when the reply has no number.
    """
    text = _drop_questions(_clean(text))
    for marker in _NUMBER_MARKERS:
        found = None
        for match in marker.finditer(text):
            found = _number_in_clause(match["clause"] or match.groupdict().get("boxed") or "") or found
        if found is not None:
            return found
    at_end = list(_IS_NUMBER_AT_END.finditer(text))
    if at_end:
        return _normalise_number(at_end[-1])
    numbers = list(_NUMBER_RE.finditer(text))
    return _normalise_number(numbers[-1]) if numbers else None


# ------------------------------------------------------------------------ entities

_STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or is are was were be been being do does did
    what which who whom whose where when why how it its this that these those i me my you your we
    our they their he she his her there here can could would should will shall may might must
    please tell name give list find look up search about as into than then so not""".split()
)
# Instruction words of the prompt (including ANSWER_SUFFIX) are not the subject.
_QUESTION_NOISE = _STOPWORDS | frozenset("answer short final last line sentence reply word words few one end".split())
_PRONOUNS = frozenset("it this that he she they these those".split())
_RELATIVES = frozenset("which who whom whose that where when what".split())
_DETERMINERS = frozenset("the its their his her my our your this that these those".split())
_POSSESSIVE_DETERMINERS = _DETERMINERS - {"the"}
_FILLER_SENTENCE = re.compile(
    r"^(?:sure|ok|okay|well|hello|hi|hey|certainly|absolutely|of course|great|good|"
    r"(?:great|good|nice) question|thanks|thank you|hmm+|let me (?:think|see|check))\W*$",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(
    r"^(?:(?:i\s+(?:think|believe|guess|know|suppose|am\s+(?:sure|certain|pretty\s+sure))|"
    r"i'm\s+(?:sure|certain|pretty\s+sure)|in\s+my\s+opinion|well|so|yes|yeah|probably|maybe|"
    r"perhaps|of\s+course|actually|sure|okay|ok)\b\s*(?:that\b\s*)?,?\s*)+",
    re.IGNORECASE,
)
_LEADING_ADVERBS = re.compile(
    r"^(?:(?:actually|probably|definitely|likely|most\s+likely|indeed|still|now|currently|"
    r"officially|simply|just|also|obviously|certainly|in\s+fact|clearly|surely|undoubtedly|"
    r"really|called|named|known\s+as)\b\s*)+",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^(?:i\s+(?:do\s+not|don't|cannot|can't|am\s+not\s+sure)|i'm\s+(?:not\s+sure|sorry)|"
    r"i\s+am\s+sorry|sorry|unknown|no\s+idea|not\s+sure)\b",
    re.IGNORECASE,
)
# Copulas split "subject is complement"; ":" only counts when its left side
# echoes the question ("Capital of France: Paris").
_COPULA = re.compile(
    r"\s+(?:is|was|are|were|(?:would|will|should|must|might|may|could)\s+be|remains)(?:\s*:)?\s+|\s*:\s+",
    re.IGNORECASE,
)
# Where an answer ends inside its clause: punctuation, or a word that starts
# a description of it ("Tokyo, which …", "Paris located in …", "Rome and …").
_CUT = re.compile(
    r",|;|:|\(|\[|\s[-–—]\s|[!?]|\.(?=\s|$)|\s+(?:which|who|whose|that|where|when|located|situated|"
    r"and|with|in|on|at|known|also|because|since|but|as|while|although|though|so|for|from|near|"
    r"being|is|was|are|has|had|it|if|or)\b",
    re.IGNORECASE,
)
_CONNECTORS = frozenset("of de del la le du des da do dos al el es van von and".split())
# A placeholder echoed from ANSWER_SUFFIX, e.g. "Answer: <short answer>".
_PLACEHOLDER = re.compile(r"<[^<>]*>|\byour short answer\b|\bshort answer\b", re.IGNORECASE)
_ENTITY_MARKER = re.compile(
    r"(?:\b(?:final\s+|correct\s+|right\s+)?answer(?:\s+to\s+(?:this|the|your)\s+question)?"
    r"\s*(?:is|would\s+be|will\s+be|should\s+be|:|=|-)|(?m:^)[ \t]*A[ \t]*:)[ \t]*:?[ \t]*(?P<value>[^\n]+)",
    re.IGNORECASE,
)
# The final line ANSWER_SUFFIX asks for; the only marker that makes a long GENERAL reply factual.
_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*:", re.IGNORECASE | re.MULTILINE)
_SENTENCE_STARTERS = r"(?:It|The|This|That|Its|He|She|They|There|In|A|An|I)"
_YES_NO_QUESTION = re.compile(
    r"^\s*(?:is|are|was|were|am|do|does|did|can|could|will|would|should|shall|has|have|had|may|might|must)\b",
    re.IGNORECASE,
)
_YES_NO_REPLY = re.compile(r"^\s*(yes|no)\b", re.IGNORECASE)
_MAX_ENTITY_WORDS = 4
_SENTENCES_SCANNED = 3
_MAX_COPULAS = 8
_MAX_COMPLEMENT_CHARS = 200


def _protect(text: str) -> str:
    """Hide the dots of initialisms and abbreviations ("D.C.", "St.") and the
    comma before an initialism ("Washington, D.C.") from sentence and clause cuts."""
    text = re.sub(r"\b(?:[A-Za-z]\.){2,}", lambda m: m.group().replace(".", "\x00"), text)
    text = re.sub(r"\b(St|Mt|Ft|Dr|Mr|Mrs|Ms|Jr|Sr|vs|etc|approx)\.", "\\1\x00", text)
    # A middle initial ("John F. Kennedy"), not a one-letter answer before a new sentence ("B. The …").
    text = re.sub(r"\b([A-Z])\.(?=\s+(?!" + _SENTENCE_STARTERS + r"\b)[A-Z][a-z])", "\\1\x00", text)
    return re.sub(r",(?=\s*(?:[A-Za-z]\x00){2,})", "\x01", text)


def _unprotect(text: str) -> str:
    return text.replace("\x00", ".").replace("\x01", ",")


def _sentences(text: str) -> list[str]:
    """Sentences of protected text: lines, then ``.!?`` followed by whitespace.

    An initialism ending a sentence ("… Washington, D.C. It is …") ends it
    when a capitalised pronoun or article follows.
    """
    out: list[str] = []
    text = re.sub(r"(?<=:)[ \t]*\n\s*", " ", text)  # "The capital is:\n\nParis"
    for line in text.split("\n"):
        line = re.sub(r"\x00(?=\s+" + _SENTENCE_STARTERS + r"\b)", "\x00.", line)
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if s.strip())
    return out


def _question_words(question: str) -> dict[str, float]:
    """Content words of the question → weight (2 for the first one, the usual
    head of "What is the capital of …", 1 for the others)."""
    words: dict[str, float] = {}
    for token in _tokens(re.sub(r"['’]s\b", "", question)):
        if token not in _QUESTION_NOISE and token not in words:
            words[token] = 2.0 if not words else 1.0
    return words


def _overlap(text: str, qwords: dict[str, float]) -> float:
    present = set(_tokens(re.sub(r"['’]s\b", "", text)))
    return sum(weight for word, weight in qwords.items() if word in present)


def _capitalised(text: str) -> bool:
    words = [w for w in re.findall(r"[^\s\"'“”‘’]+", text) if w.casefold() not in ("the", "a", "an")]
    return bool(words) and (words[0][0].isupper() or words[0][0].isdigit())


def _capitalised_runs(words: list[str]) -> list[list[str]]:
    """Runs of capitalised words, allowing lowercase connectors inside ("Andorra la Vella")."""
    runs: list[list[str]] = []
    current: list[str] = []
    for word in words:
        if word[:1].isupper() or word[:1].isdigit():
            current.append(word)
        elif current and word.casefold() in _CONNECTORS:
            current.append(word)
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    # A run cannot end with a connector.
    trimmed = []
    for run in runs:
        while run and run[-1].casefold() in _CONNECTORS:
            run = run[:-1]
        if run:
            trimmed.append(run)
    return trimmed


def _strip_edges(text: str) -> str:
    # str.strip, not a "[…]+$" regex: linear on long runs of spaces.
    text = text.strip().lstrip(_LEAD_JUNK).rstrip(_TRAIL_JUNK)
    # An initialism keeps its final dot ("D.C."; protected as \x00), other text loses it.
    while text.endswith("."):
        text = text[:-1].rstrip(_TRAIL_JUNK)
    return text


_LEAD_JUNK = " \t\n\"'“”‘’«»_–—:"
_TRAIL_JUNK = " \t\n\"'“”‘’«»_,;:!?"


def _strip_echo(text: str, qwords: dict[str, float]) -> str:
    """Drop leading/trailing runs of question words ("William Shakespeare wrote
    Hamlet" → "William Shakespeare") — only runs with a lowercase word other
    than a name connector, so that a proper name built on question words
    survives ("Mexico City", "City of San Marino")."""
    if not qwords:
        return text
    words = text.split()

    def echo(word: str) -> bool:
        tokens = _tokens(re.sub(r"['’]s$", "", word))
        return bool(tokens) and all(t in qwords or t in _STOPWORDS for t in tokens)

    def strippable(run: list[str]) -> bool:
        has_qword = any(t in qwords for w in run for t in _tokens(w))
        has_lower = any(w[:1].islower() and w.casefold() not in _CONNECTORS for w in run)
        return has_qword and has_lower

    end = len(words)
    while end > 0 and echo(words[end - 1]):
        end -= 1
    if 0 < end < len(words) and strippable(words[end:]):
        words = words[:end]
    start = 0
    while start < len(words) and echo(words[start]):
        start += 1
    if 0 < start < len(words) and strippable(words[:start]):
        words = words[start:]
    return " ".join(words)


def _valid(answer: str, qwords: dict[str, float]) -> bool:
    if not _has_content(answer) or _PLACEHOLDER.search(answer):
        return False
    tokens = _tokens(answer)
    if all(t in _STOPWORDS for t in tokens):
        return False
    if len(tokens) >= 3 and len(set(tokens)) == 1:
        return False
    # An echo of the question's common nouns ("the capital of France") is not
    # an answer; a capitalised name that happens to be a question word
    # ("Djibouti", "Luxembourg") is.
    content = [w for w in answer.split() if _tokens(w) and not all(t in _STOPWORDS for t in _tokens(w))]
    if qwords and all(all(t in qwords for t in _tokens(w)) for w in content):
        if any(w[:1].islower() for w in content) or (len(content) >= 2 and set(qwords) <= set(tokens)):
            return False
    return True


def _forward_answer(complement: str, qwords: dict[str, float]) -> str | None:
    """The answer in "… is X, …": X cut at its first clause boundary, ≤ 4 words."""
    answer, _ = _forward_answer_reduced(complement, qwords)
    return answer


def _forward_answer_reduced(complement: str, qwords: dict[str, float]) -> tuple[str | None, bool]:
    """:func:`_forward_answer`, and whether a longer clause had to be reduced to ≤ 4 words."""
    text = _strip_edges(complement)
    text = _LEADING_ADVERBS.sub("", text)
    text = re.sub(r"^(?:in|at|on|near)\s+(?=\S)", "", text)  # "It is in Japan" → Japan
    # Lowercase lead words only: a proper name is never a participle or a descriptor.
    text = re.sub(r"^[a-z]+\s+by\s+", "", text)  # passive: "written by X"
    text = re.sub(r"^(?:[a-z][\w'-]*\s+){0,3}?(?:called|named|known\s+as)\s+", "", text)
    text = re.sub(r"^(?i:the\s+)?(?:city|town|village|island|state|province|country)\s+of\s+(?=[A-Z])", "", text)
    match = _CUT.search(text)
    if match and match.start() > 0:
        text = text[: match.start()]
    text = _strip_edges(text)
    words = text.split()
    reduced = len(words) > _MAX_ENTITY_WORDS
    if reduced:
        runs = [r for r in _capitalised_runs(words) if len(r) <= _MAX_ENTITY_WORDS]
        words = runs[0] if runs else words[:_MAX_ENTITY_WORDS]
    text = _strip_edges(_strip_echo(" ".join(words), qwords))
    return (text if _valid(text, qwords) else None), reduced


def _subject(left: str) -> str:
    """The subject clause before a copula: after the last comma, without fillers."""
    left = re.split(r"[,;:(]", left)[-1]
    return _strip_edges(_LEADING_FILLER.sub("", _strip_edges(left)))


def _inverse_answer(subject: str, qwords: dict[str, float]) -> str | None:
    """The answer in "X is the capital of …": the subject, ≤ 4 words."""
    words = subject.split()
    first = _tokens(words[0]) if words else []
    if not first or first[0] in _PRONOUNS | _POSSESSIVE_DETERMINERS:
        return None
    if len(words) > _MAX_ENTITY_WORDS:
        runs = [r for r in _capitalised_runs(words) if len(r) <= _MAX_ENTITY_WORDS]
        words = runs[-1] if runs else words[-_MAX_ENTITY_WORDS:]
    text = _strip_edges(_strip_echo(" ".join(words), qwords))
    return text if _valid(text, qwords) else None


def _copula_candidates(sentence: str, qwords: dict[str, float], first_sentence: bool) -> list[tuple[float, str]]:
    """(score, answer) for each reading of each copula in the sentence.

    Forward ("The capital of France is Paris" → Paris) and inverse ("Paris
    is the capital of France" → Paris) readings are scored by how much of the
    question the other side echoes (head word weight 2), with small bonuses
    for a capitalised answer, a common-noun subject after a determiner ("The
    capital …", "Its capital …") or a pronoun subject in the first sentence
    (forward; a later "It" may mean anything) and an article-led complement
    (inverse), and penalties for an indefinite complement ("is a city",
    which describes rather than names) and for an answer picked out of a
    longer description.
    """
    out: list[tuple[float, str]] = []
    # A bounded number of copulas and complement length keeps long rambling replies linear.
    for match in itertools.islice(_COPULA.finditer(sentence), _MAX_COPULAS):
        left, right = sentence[: match.start()], sentence[match.end() : match.end() + _MAX_COMPLEMENT_CHARS]
        parts = re.split(r"[,;(]", left)
        if len(parts) >= 3 and not parts[-1].strip():
            # Appositive: "Canberra, the capital of Australia, is …" → Canberra.
            name = _inverse_answer(_strip_edges(_LEADING_FILLER.sub("", parts[-3].strip())), qwords)
            if name:
                score = _overlap(parts[-2], qwords) - _overlap(name, qwords) + 0.5 * _capitalised(name)
                out.append((score, name))
            continue
        subject = _subject(left)
        first = (_tokens(subject) or [""])[0]
        last = (_tokens(subject) or [""])[-1]
        if not subject or last in _RELATIVES or re.match(r"\s*not\b", right, re.IGNORECASE):
            continue
        colon = ":" in match.group()
        echo_left = _overlap(subject, qwords)
        if colon and echo_left == 0:
            continue
        forward, reduced = _forward_answer_reduced(right, qwords)
        if forward:
            pronoun = first_sentence and subject.casefold() in _PRONOUNS
            # "It is São Tomé" names the asked thing even when the name echoes the question.
            score = echo_left - (0.0 if pronoun else _overlap(forward, qwords))
            common_noun = first in _DETERMINERS and not _capitalised(subject)
            score += 0.5 * _capitalised(forward) + 0.5 * common_noun + 1.0 * pronoun - 0.5 * reduced
            score -= 1.0 * bool(re.match(r"\s*(?:a|an)\s", right, re.IGNORECASE))
            out.append((score, forward))
        if colon:
            continue
        inverse = _inverse_answer(subject, qwords)
        if inverse:
            score = _overlap(right, qwords) - _overlap(inverse, qwords)
            score += 0.5 * _capitalised(inverse) + 0.5 * bool(re.match(r"\s*(?:the|a|an)\s", right, re.IGNORECASE))
            out.append((score, inverse))
    return out


def _short_answer(sentence: str, qwords: dict[str, float]) -> str | None:
    """A copula-free sentence that is itself the answer ("Paris", "Paris, France")."""
    if _REFUSAL.match(sentence) or sentence.rstrip().endswith("?"):
        return None
    # Short: the whole sentence, or its first comma clause ("Paris, a city of …"), fits an entity.
    if len(re.split(r"[,;(]", sentence, maxsplit=1)[0].split()) > _MAX_ENTITY_WORDS:
        return None
    return _forward_answer(_LEADING_FILLER.sub("", sentence), qwords)


def _entity_in(text: str, qwords: dict[str, float]) -> str | None:
    sentences = [
        s for s in _sentences(text) if not _FILLER_SENTENCE.match(_unprotect(s)) and not s.rstrip().endswith("?")
    ][:_SENTENCES_SCANNED]
    best: tuple[float, str] | None = None
    for index, sentence in enumerate(sentences):
        candidates = _copula_candidates(sentence, qwords, first_sentence=index == 0)
        if index == 0 and not _COPULA.search(sentence):
            short = _short_answer(sentence, qwords)
            if short:
                return short
        for candidate in candidates:
            if best is None or candidate[0] > best[0]:
                best = candidate
    if best is not None and best[0] > 0:
        return best[1]
    return None


def _is_garbage(text: str) -> bool:
    if not _has_content(text):
        return True
    tokens = _tokens(text)
    if len(tokens) >= 2 and len(set(tokens)) == 1 and (len(tokens) >= 3 or tokens[0] in _STOPWORDS):
        return True
    return all(t in _STOPWORDS for t in tokens)


def extract_entity(text: str, question: str = "") -> str | None:
    """The short entity a factual reply names, as displayed (not folded).

    Strategy, first that applies:

    1. An explicit marker — "Answer: X", "The answer is: X", a line "A: X"
       (the last one) — gives X, itself read as below when it is a sentence.
    2. The first sentence (after greetings like "Sure!") when it has no
       copula and is short: "Paris", "**Berlin**", "Paris, France" → cut at
       the first comma.
    3. Copula patterns in the first three sentences: "The capital of France
       is Paris." (forward) or "Paris is the capital of France." (inverse);
       the side that echoes the question's words is the subject, the other
       the answer; "It is Paris." and "I think it's Ottawa." read forward.
       The highest-scoring reading wins (earliest on ties), if its score is
       positive.

    Answers are cut at the first comma, period, parenthesis, or a word that
    starts a description (" which", " and ", " located", " in", …) — except a
    comma before an initialism ("Washington, D.C.") — limited to 4 words (the
    first run of capitalised words when longer), stripped of markdown and
    quotes and of echoed question words ("France's capital is Paris" →
    "Paris"). Sentences ending with "?" and an invented next turn ("\\nQ:")
    are ignored.

    Args:
        text: the reply.
        question: the sub-question; its words tell the echoed subject from
            the answer. Optional: without it, capitalisation and articles decide.

    Returns:
        The entity, or ``None`` for an empty, whitespace-only or garbage reply
        (no letters or digits, one token repeated, only stopwords, a
        placeholder) or when no pattern matches.
    """
    text = re.sub(r"\\boxed\{([^{}]*)\}", r"\1", _clean(text))
    if _is_garbage(text):
        return None
    text = _protect(_CONTRACTION.sub(r"\1 is", text))
    qwords = _question_words(question)
    markers = list(_ENTITY_MARKER.finditer(text))
    if _YES_NO_QUESTION.match(question):
        # "Is Paris the capital of France?" → "Yes, Paris is …" commits to "Yes".
        leads = [m["value"] for m in reversed(markers)]
        leads += [s for s in _sentences(text) if not _FILLER_SENTENCE.match(s)][:1]
        for lead in leads:
            reply = _YES_NO_REPLY.match(lead)
            if reply:
                return reply[1].capitalize()
    for marker in reversed(markers):
        value = marker["value"]
        found = _entity_in(value, qwords) or _forward_answer(_sentences(value)[0] if _sentences(value) else "", qwords)
        if found:
            return _unprotect(found)
    found = _entity_in(text, qwords)
    return _unprotect(found) if found else None


# -------------------------------------------------------------------------- answers


def _first_sentence(text: str) -> str | None:
    cleaned = _protect(_clean(text))
    for sentence in _sentences(cleaned):
        plain = _unprotect(sentence)
        if _FILLER_SENTENCE.match(plain) or plain.rstrip().endswith("?"):
            continue
        if _PLACEHOLDER.search(plain):
            continue
        if _REFUSAL.match(plain) or _is_garbage(plain):
            return None
        return plain
    return None


def _commits_to_nothing(cleaned: str) -> bool:
    """A short refusal ("I don't know.") or an echoed placeholder ("Answer: <short answer>").

    Matters most for open-ended keys: identical refusals would agree with
    each other while distinct good texts do not.
    """
    if len(cleaned.split()) <= 20 and _REFUSAL.match(cleaned):
        return True
    return bool(re.fullmatch(r"(?:answer\s*:\s*)?<[^<>]*>\W*", cleaned, re.IGNORECASE))


def _truncate(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + ("…" if len(parts) > words else "")


def extract_answer(text: str, operation: Operation, question: str = "") -> tuple[str | None, str]:
    """The vote key and display answer of one reply.

    * MATH → :func:`extract_number` (key = the normalised number).
    * LOOKUP, COMPARE → :func:`extract_entity`; if no pattern matches, the
      first sentence truncated to :data:`FALLBACK_WORDS` words (a long reply:
      the full text, as for GENERATE).
    * GENERAL → as LOOKUP when the reply is short (≤ :data:`LONG_REPLY_WORDS`
      words) or has an ``Answer:`` line; otherwise as GENERATE.
    * GENERATE → the full reply as written; the key is its fold truncated to
      :data:`OPEN_KEY_WORDS` words, which
      :func:`~dellm_p2p.coordinator.vote.cluster_keys` compares by similarity.

    Args:
        text: the reply.
        operation: the chunk's operation.
        question: the chunk's text (helps :func:`extract_entity`).

    Returns:
        ``(key, display)``: ``key`` is ``fold(display)`` (for open-ended text,
        its first :data:`OPEN_KEY_WORDS` words), or ``None`` with display
        ``""`` when the reply commits to nothing (empty, garbage, a refusal
        such as "I don't know", no number for MATH).
    """
    if operation is Operation.MATH:
        number = extract_number(text)
        return (fold(number), number) if number is not None else (None, "")
    cleaned = _clean(text)
    if _is_garbage(cleaned):
        return None, ""
    long_reply = len(cleaned.split()) > LONG_REPLY_WORDS
    if operation is not Operation.GENERATE:
        if operation is not Operation.GENERAL or not long_reply or _ANSWER_LINE.search(cleaned):
            entity = extract_entity(text, question)
            if entity:
                return fold(entity) or None, entity
            if not long_reply:
                sentence = _first_sentence(text)
                if sentence is None:
                    return None, ""
                display = _truncate(sentence, FALLBACK_WORDS)
                return fold(display) or None, display
    if _commits_to_nothing(cleaned):
        return None, ""
    # Open-ended text is shown as written (its markdown is formatting, not noise).
    display = text.strip()
    key = " ".join(fold(display).split()[:OPEN_KEY_WORDS])
    return key or None, display
