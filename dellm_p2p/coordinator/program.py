"""Program-aided answers for MATH chunks: the peers write the arithmetic, the coordinator computes it.

Program-aided language models (PAL, Gao et al. 2022) and Program of Thoughts
(Chen et al. 2022) let the model write the computation and leave the
arithmetic to an interpreter. Here the "program" is one arithmetic
expression and the interpreter is :func:`evaluate`, a small walker over
Python's *parsed* syntax tree that allows numbers, ``+ - * /``, ``//``,
``%`` after a number as "percent", ``**``/``^`` with bounded exponents and
parentheses — never Python's ``eval``.

Measured with the default 135M model (``../shared/notes/vllm-cpu.md``):
asked :data:`PROGRAM_PROMPT`, greedy, the first expression of its reply was
right for 40/40 two-digit subtractions and 40/40 multiplications, where the
same model answering in words gets nearly none ("17 - 14 = 17 + 14 = 22":
the expression is right, its own arithmetic is not).

* :func:`program_prompt` — the user message for a MATH chunk.
* :func:`find_expression` — the first expression in a reply that evaluates.
* :func:`evaluate` — the value of one expression, or an :class:`ArithmeticError`.
* :func:`program_answer` — ``(vote key, display, expression)`` of a reply,
  falling back to the number the reply states.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

from .types import Chunk, Operation

__all__ = [
    "MAX_ABS_VALUE",
    "MAX_BITS",
    "MAX_EXPONENT",
    "MAX_EXPRESSION_CHARS",
    "PROGRAM_PROMPT",
    "ExpressionError",
    "candidate_answer",
    "evaluate",
    "find_expression",
    "format_number",
    "missing_numbers",
    "missing_operations",
    "program_answer",
    "program_prompt",
    "uses_program",
]

#: The MATH chunk prompt; ``{question}`` is the chunk text (with any earlier results above it).
#: The wording is the one measured in ../shared/notes/vllm-cpu.md ("the expression only" made
#: the model answer in words instead: 7/40).
PROGRAM_PROMPT = (
    "Question: {question}\nWrite this as a math expression with numbers and the symbols + - * /, nothing else."
)
#: Largest |exponent| of ``**`` / ``^`` (2**64 is fine, 10**10000 is a denial of service).
MAX_EXPONENT = 64
#: Largest |value| of any intermediate result; beyond it the expression gets no vote.
MAX_ABS_VALUE = Fraction(10) ** 15
#: Largest numerator or denominator of any intermediate value [bits]: bounds the work of exact
#: arithmetic on replies from untrusted peers ("((1/7)**64)**64…" would otherwise take seconds).
MAX_BITS = 1024
#: Longest expression evaluated [characters]; longer runs are prose, not a computation.
MAX_EXPRESSION_CHARS = 200
#: Decimals kept when a result is not an integer (as :func:`~dellm_p2p.coordinator.extract.extract_number`
#: keys compare decimals as written, 6 places is finer than any answer a question asks for).
DECIMALS = 6


class ExpressionError(ArithmeticError):
    """An expression that does not evaluate: malformed, division by zero, too large (one-line message)."""


# ----------------------------------------------------------------------------- evaluate

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
}


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ExpressionError("only whole-number exponents are evaluated")
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exponent} is beyond ±{MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise ExpressionError("division by zero")
    # Bound the work before computing: the result's numerator and denominator have at most
    # |e| times the bits of the base's (tiny fractions raised again and again would grow without it).
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(int(exponent)) > MAX_BITS:
        raise ExpressionError("result too large")
    return base ** int(exponent)


def _walk(node: ast.AST, depth: int = 0) -> Fraction:
    if depth > 50:
        raise ExpressionError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _walk(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _walk(node.operand, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _walk(node.left, depth + 1), _walk(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            value = _power(left, right)
        elif type(node.op) in _BINARY:
            if isinstance(node.op, ast.Div | ast.FloorDiv) and right == 0:
                raise ExpressionError("division by zero")
            value = _BINARY[type(node.op)](left, right)
        else:
            raise ExpressionError(f"operator {type(node.op).__name__} is not arithmetic here")
        if abs(value) > MAX_ABS_VALUE or value.denominator.bit_length() > MAX_BITS:
            raise ExpressionError("result too large")
        return value
    raise ExpressionError(f"{type(node).__name__} is not a number or an arithmetic operation")


# A number, a percent sign after it, word operators between numbers, and the symbols models use.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES = re.compile(r"(?<=[\d)])\s*[x×·]\s*(?=[\d(])")
_SYMBOLS = str.maketrans({"÷": "/", "−": "-", "–": "-", "^": "**", "$": " ", "€": " ", "£": " "})


def _normalise(expression: str) -> str:
    text = _THOUSANDS.sub("", expression.translate(_SYMBOLS))
    text = _TIMES.sub(" * ", text)
    return _PERCENT.sub(r"(\1/100)", text)


def evaluate(expression: str) -> Fraction:
    """The exact value of one arithmetic expression.

    Accepts numbers (``1,000`` and ``3.5`` too), ``+ - * / //``, ``×``/``x``/``·``
    between numbers, ``÷``, powers ``**`` or ``^`` with whole exponents up to
    ±:data:`MAX_EXPONENT`, parentheses, ``$``/``€``/``£`` (ignored), and
    ``%`` after a number read as /100 ("10% * 1000" is 100). Computed with
    :class:`~fractions.Fraction`, so "0.1 * 3" is exactly 0.3.

    Args:
        expression: e.g. ``"(17 + 25) * 2"``; at most :data:`MAX_EXPRESSION_CHARS` characters.

    Returns:
        The value as a :class:`~fractions.Fraction`.

    Raises:
        ExpressionError: malformed text, a name or call, division by zero, an
            exponent out of bounds, or any intermediate |value| over
            :data:`MAX_ABS_VALUE`. Never anything else.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = _normalise(expression).strip()
    if not text:
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"not an arithmetic expression ({type(exc).__name__})") from None
    try:
        return _walk(tree)
    except (ZeroDivisionError, OverflowError, RecursionError, ValueError) as exc:
        raise ExpressionError(f"does not evaluate ({type(exc).__name__})") from None


def format_number(value: Fraction) -> str:
    """The vote key of a value: an integer as written ("42", "-3"), else up to :data:`DECIMALS` decimals ("0.5")."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(round(value, DECIMALS)):.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ------------------------------------------------------------------------ find in a reply

# Runs of characters an expression is made of; "x" only between digits (rewritten first).
_RUN = re.compile(r"(?<![\w.])-?[\d(][\d\s.,+\-*/×÷·^()%$€£]*(?![A-Za-z])")
_OPERATOR = re.compile(r"[+\-*/×÷·^]")
# "15% of 80" is a product.
_PERCENT_OF = re.compile(r"(\d\s*%)\s+of\s+(?=[\d$€£(])", re.IGNORECASE)
# Operators written as words between two numbers ("144 divided by 12").
_WORD_OPERATORS = {"plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "divided by": "/"}
_WORD_OPERATOR = re.compile(r"(?<=\d)\s+(plus|minus|times|multiplied\s+by|divided\s+by)\s+(?=[\d$€£(])", re.IGNORECASE)


def _candidates(segment: str) -> list[str]:
    """Expression-looking runs of one segment, each also with unbalanced edges and dangling operators trimmed."""
    out = []
    segment = _PERCENT_OF.sub(r"\1 * ", _TIMES.sub(" * ", segment))
    segment = _WORD_OPERATOR.sub(lambda m: f" {_WORD_OPERATORS[' '.join(m.group(1).lower().split())]} ", segment)
    for match in _RUN.finditer(segment):
        run = match.group().strip().rstrip(".,")
        while run and run[-1] in "+-*/×÷·^(":
            run = run[:-1].rstrip()
        while run.count("(") > run.count(")") and run.startswith("("):
            run = run[1:].lstrip()
        while run.count(")") > run.count("(") and run.endswith(")"):
            run = run[:-1].rstrip()
        if run:
            out.append(run)
    return out


def find_expression(text: str) -> tuple[str, Fraction] | None:
    """The first arithmetic expression in a reply that evaluates, with its value.

    The reply is read in segments split at ``=``, "is", newlines, ``:`` and
    ``;`` ("17 - 14 = 3" gives "17 - 14", not the model's own arithmetic after
    the "="); a segment's runs of number-and-operator characters (not glued to
    letters, so "1e308" or "x2" are not runs) are tried in order, and only runs
    with a binary operator count (a lone "42" or "15%" is a stated number, see
    :func:`program_answer`); "15% of 80" reads as "15% * 80", and "plus",
    "minus", "times", "multiplied by" and "divided by" between two numbers as
    their symbols. Code fences and backticks are ignored.

    Returns:
        ``(expression, value)``, or ``None`` when no run evaluates.

    Raises:
        ExpressionError: the first run that parses does not evaluate (division
            by zero, a power or value out of bounds): such a reply must not
            fall back to some other number in it.
    """
    cleaned = text.replace("`", " ").replace("\\times", "*").replace("\\div", "/")
    for segment in re.split(r"[=\n:;]|\bis\b", cleaned):
        for run in _candidates(segment):
            if not _OPERATOR.search(run.lstrip("-")):
                continue
            try:
                return run, evaluate(run)
            except ExpressionError as exc:
                if str(exc).startswith(("not an arithmetic", "empty", "expression longer")):
                    continue  # not an expression after all: look further
                raise
    return None


def program_prompt(question: str) -> str:
    """The user message asking a peer for the expression that answers ``question`` (:data:`PROGRAM_PROMPT`)."""
    return PROGRAM_PROMPT.format(question=question.strip())


def program_answer(text: str) -> tuple[str | None, str, str | None]:
    """``(vote key, display, expression)`` of a reply to :func:`program_prompt`.

    The value of :func:`find_expression` when one evaluates; otherwise the
    number the reply states (:func:`~dellm_p2p.coordinator.extract.extract_number`,
    expression ``None``); otherwise ``(None, "", None)``: no vote. A division
    by zero or an out-of-bounds power is not a value: such a reply gets no
    vote (never a crash, and never some other number of the reply).
    """
    from .extract import extract_number  # extract imports nothing from here; kept local to stay one-way

    try:
        found = find_expression(text)
    except ExpressionError:
        return None, "", None
    if found is not None:
        expression, value = found
        key = format_number(value)
        return key, key, " ".join(expression.split())
    number = extract_number(text)
    if number is None:
        return None, "", None
    return number, number, None


# A sentence end with more text after it: the chunk has at least two sentences.
_SENTENCE_BREAK = re.compile(r"[.!?](?=\s+\S)")


def uses_program(chunk: Chunk, program_aided: bool = True) -> bool:
    """Whether ``chunk`` is asked program-aided (:func:`program_prompt`, :func:`program_answer`).

    Only when ``program_aided`` (``AskOptions.program_aided``), and only for a
    MATH chunk that is one sentence — a direct computation ("What is 98 plus
    45?", "Calculate 10% interest on $1000"). A word problem of several
    sentences is asked plainly: its expression needs reasoning the default
    model does not do (measured on the first 40 GSM8K questions, greedy: the
    first expression of a program-aided reply right 0 times, a plain reply's
    final number 2 times; two-digit addition: 60/60 program-aided, 9/60 plain).
    """
    if not program_aided or chunk.operation is not Operation.MATH:
        return False
    return _SENTENCE_BREAK.search(chunk.text.strip()) is None


# A number as the question states it: "3", "4.5", "1,000", "15%" (the sign is not part of it: "-7" uses 7);
# not an ordinal ("3rd") nor part of a word ("x2", "COVID-19" keeps 19: written apart, it is a number).
_STATED = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\.?\d)(?!st\b|nd\b|rd\b|th\b)(\s*(?:%|percent\b))?")


def _stated(text: str) -> list[tuple[Fraction, bool]]:
    """Distinct ``(value, is_percent)`` of the numerals in ``text``, in order."""
    out: list[tuple[Fraction, bool]] = []
    for match in _STATED.finditer(text):
        value = Fraction(match.group(1).replace(",", "") + (match.group(2) or ""))
        item = (value, bool(match.group(3)))
        if item not in out:
            out.append(item)
    return out


def missing_numbers(expression: str, question: str) -> list[str]:
    """The numbers ``question`` states that ``expression`` leaves out (as written in the question), in order.

    A stated number counts as used when the expression holds the same value
    ("1,000" and "1000.0" are 1000); a percentage also when it holds the
    value over 100 ("15%" is used by "0.15 * 80"). Only numerals count:
    "three apples" requires nothing, and numbers the expression adds (a
    dependency's answer, a number from earlier in the conversation, a unit
    factor) are allowed. "(4 - 7) - 3" answered with "4 - 7" leaves out
    ``["3"]``.

    Args:
        expression: the arithmetic the reply wrote (:func:`find_expression`).
        question: the chunk's text as the user wrote it.
    """
    used = {value for value, _ in _stated(expression)}
    missing = []
    for value, percent in _stated(question):
        if value in used or (percent and value / 100 in used):
            continue
        missing.append(format_number(value))
    return missing


# An operation the question names in so many words, and the symbol an expression computing it must hold.
# "how many times" asks for a quotient, so "times" there names no product.
_NAMED_OPERATIONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("+", re.compile(r"(?i)\b(?:plus|add|added|sum)\b")),
    ("-", re.compile(r"(?i)\b(?:minus|subtract|subtracted|take\s+away)\b")),
    ("*", re.compile(r"(?i)(?<!how many )\b(?:times|multiplied|multiply|product)\b")),
    ("/", re.compile(r"(?i)\b(?:divided|divide|quotient)\b")),
)
# Symbols as an expression may write them ("×", "x" between numbers are normalised by evaluate's reader).
_SYMBOL_FORMS = {"+": "+", "-": "-−–", "*": "*×·x", "/": "/÷:"}


def missing_operations(expression: str, question: str) -> list[str]:
    """The operations ``question`` names in words ("plus", "minus", "times", "divided") that ``expression``
    does not use, as symbols (``"+"``, ``"-"``, ``"*"``, ``"/"``), in that order.

    "What is 6 plus 25?" answered with "6 * 25" misses ``["+"]``. Only
    explicit arithmetic words count (not "more", "left", "each", which word
    problems use either way), and "how many times" names no product.
    Measured on two-digit addition with Gemma 3 270M in the swarm
    (docs/results.md): its greedy "6 * 25" for "What is 6 plus 25?" was
    the anchor that won the vote.

    Args:
        expression: the arithmetic the reply wrote (:func:`find_expression`).
        question: the chunk's text as the user wrote it.
    """
    return [
        symbol
        for symbol, words in _NAMED_OPERATIONS
        if words.search(question) and not any(form in expression for form in _SYMBOL_FORMS[symbol])
    ]


def candidate_answer(text: str, chunk: Chunk, program_aided: bool = True) -> tuple[str | None, str, str | None]:
    """``(vote key, display, expression)`` of one reply to ``chunk``, the way the coordinator reads it.

    :func:`program_answer` when the chunk was asked program-aided
    (:func:`uses_program`), else :func:`~dellm_p2p.coordinator.extract.extract_answer`
    with expression ``None``.

    A program-aided reply whose expression leaves out a number the chunk
    states (:func:`missing_numbers`) or an operation it names in words
    (:func:`missing_operations`) gets no vote: its key is ``None``, its
    display and expression are kept (so it can still be shown, e.g. as the
    greedy anchor when no reply used every number). Measured on a held-out
    set of three-operation questions (``scripts/three_ops.py``,
    docs/results.md): samples writing "4 - 7" for "What is (4 - 7) - 3?"
    outvoted the greedy reply's "-6".
    """
    if uses_program(chunk, program_aided):
        key, display, expression = program_answer(text)
        if key is not None and expression is not None:
            if missing_numbers(expression, chunk.text) or missing_operations(expression, chunk.text):
                return None, display, expression
        return key, display, expression
    from .extract import extract_answer

    answer, display = extract_answer(text, chunk.operation, chunk.text)
    return answer, display, None
