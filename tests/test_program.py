"""Program-aided MATH answers: the safe arithmetic evaluator and reading expressions out of replies."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dellm_p2p.coordinator.decompose import chunk_prompt, decompose
from dellm_p2p.coordinator.program import (
    MAX_EXPRESSION_CHARS,
    ExpressionError,
    candidate_answer,
    evaluate,
    find_expression,
    format_number,
    missing_numbers,
    missing_operations,
    program_answer,
    program_prompt,
    uses_program,
)
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation
from dellm_p2p.coordinator.vote import apply_anchor, vote


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("98 + 45", 143),
        ("17 - 25", -8),
        ("(3 + 4) * 2", 14),
        ("7 / 2", Fraction(7, 2)),
        ("0.1 * 3", Fraction(3, 10)),  # exact, not 0.30000000000000004
        ("10% * 1000", 100),
        ("1,000 x 3", 3000),
        ("12 × 7", 84),
        ("84 ÷ 4", 21),
        ("2^10", 1024),
        ("2 ** -2", Fraction(1, 4)),
        ("-5 + 2", -3),
        ("$80,000 + $50,000", 130000),
        ("7 // 2", 3),
    ],
)
def test_valid_expressions(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "abc",
        "1 +",
        "(1 + 2",
        "__import__('os').system('true')",
        "len([1, 2])",
        "x + 1",
        "1 if 1 else 2",
        "[1, 2]",
        "'a' * 3",
        "1 < 2",
        "True + 1",
        "1 % 2 % ",
    ],
)
def test_malformed_expressions_raise_expression_error(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression)


@pytest.mark.parametrize(
    "expression",
    [
        *("5 / 0", "5 // 0", "0 ** -1", "2 ** 1000", "9 ** 9 ** 9", "10 ** 16", "2 ** 0.5", "99999999 * 99999999"),
        *("((1/7)**64)**64", "(((1/7)**64)**64)**64", "(1/3)**40 / 3**40"),  # exact fractions kept small
    ],
)
def test_division_by_zero_and_huge_values_raise_expression_error(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression)


def test_long_and_deep_expressions_are_refused():
    with pytest.raises(ExpressionError):
        evaluate("1 + " * MAX_EXPRESSION_CHARS + "1")
    assert evaluate("(" * 60 + "1" + ")" * 60) == 1  # parentheses alone add no depth
    with pytest.raises(ExpressionError):
        evaluate("-" * 60 + "1")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/^%().,x× \n=abc", max_size=80))
def test_evaluator_never_raises_anything_else(text):
    try:
        value = evaluate(text)
    except ExpressionError:
        return
    assert isinstance(value, Fraction)


@pytest.mark.parametrize(
    ("value", "key"),
    [(Fraction(143), "143"), (Fraction(-3), "-3"), (Fraction(1, 2), "0.5"), (Fraction(1, 3), "0.333333")],
)
def test_format_number(value, key):
    assert format_number(value) == key


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("98 + 45 = 193", ("143", "143", "98 + 45")),  # the model's own arithmetic after "=" is ignored
        ("17 - 14 = 17 + 14 = 22", ("3", "3", "17 - 14")),
        ("```\n12 * 7\n```", ("84", "84", "12 * 7")),
        ("15% of 80 is 0.15 * 80 = 1.15 * 80 = 9.25.", ("12", "12", "15% * 80")),
        ("The answer is 29.", ("29", "29", None)),  # no expression: the number it states
        ("144 divided by 12 equals 1.5.", ("12", "12", "144 / 12")),  # operators in words
        ("7 times 8 plus 1", ("57", "57", "7 * 8 + 1")),
        ("5 / 0", (None, "", None)),  # division by zero: no vote
        ("2 ** 1000", (None, "", None)),  # out of bounds: no vote, not some other number
        ("I don't know.", (None, "", None)),
        ("", (None, "", None)),
    ],
)
def test_program_answer(reply, answer):
    assert program_answer(reply) == answer


def test_find_expression_skips_prose_and_lone_numbers():
    assert find_expression("There are 3 apples.\nSo 3 + 4 = 8") == ("3 + 4", Fraction(7))
    assert find_expression("Question 1: 42") is None


def test_only_one_sentence_math_chunks_are_program_aided():
    direct = Chunk("c1", "What is 98 plus 45?", Operation.MATH)
    word_problem = Chunk("c1", "Janet has 16 eggs. She eats 3. How many are left?", Operation.MATH)
    lookup = Chunk("c1", "What is the capital of France?", Operation.LOOKUP)
    assert uses_program(direct) and not uses_program(direct, program_aided=False)
    assert not uses_program(word_problem) and not uses_program(lookup)
    assert chunk_prompt(direct, {}, program_aided=True) == program_prompt("What is 98 plus 45?")
    assert "math expression" not in chunk_prompt(word_problem, {}, program_aided=True)
    # A dependency's answer is part of the question the expression is asked for.
    _, second = decompose("Calculate 10% of 1000, then multiply that by 3")
    prompt = chunk_prompt(second, {"c1": "100"}, program_aided=True)
    assert prompt.startswith("Question: Earlier result (c1): 100\n") and "math expression" in prompt


# --------------------------------------------------- expressions that leave out a stated number (issue 24)


@pytest.mark.parametrize(
    ("expression", "question", "missing"),
    [
        ("4 - 7", "What is (4 - 7) - 3?", ["3"]),
        ("(4 - 7) - 3", "What is (4 - 7) - 3?", []),
        ("3 + 5", "If I have 3 apples, buy 5 more and eat 2, how many apples do I have?", ["2"]),
        ("3 + 5 - 2", "If I have 3 apples, buy 5 more and eat 2, how many apples do I have?", []),
        ("0.15 * 80", "What is 15% of 80?", []),  # a percentage may be written over 100
        ("15% * 80", "What is 15% of 80?", []),
        ("1000 * 10 / 100", "Calculate 10% interest on $1,000", []),  # "1,000" is 1000
        ("80 * 2", "What is 15% of 80?", ["15"]),
        ("2 * 5", "What is the 3rd multiple of 2, times 5?", []),  # an ordinal is not a stated number
        ("7 + 3", "What is my favourite number plus 3?", []),  # numbers from elsewhere are allowed
        ("12 * 2", "What is three times 12?", []),  # only numerals are required
    ],
)
def test_missing_numbers(expression, question, missing):
    assert missing_numbers(expression, question) == missing


@pytest.mark.parametrize(
    ("expression", "question", "missing"),
    [
        ("6 * 25", "What is 6 plus 25?", ["+"]),  # Gemma 3 270M's greedy reply on two-digit addition
        ("6 + 25", "What is 6 plus 25?", []),
        ("6 * 7 - 5", "What is 6 times 7, minus 5?", []),
        ("6 * 7", "What is 6 times 7, minus 5?", ["-"]),
        ("6 × 7", "What is 6 multiplied by 7?", []),
        ("12 / 3", "How many times does 3 go into 12?", []),  # "how many times" names no product
        ("100 / 4", "What is 100 divided by 4?", []),
        ("100 - 4", "What is 100 divided by 4?", ["/"]),
        ("3 + 4", "What is the sum of 3 and 4?", []),
        ("3 + 5 - 2", "If I have 3 apples, buy 5 more and eat 2, how many apples do I have?", []),  # no named word
        ("0.15 * 80", "What is 15% of 80?", []),
    ],
)
def test_missing_operations(expression, question, missing):
    assert missing_operations(expression, question) == missing


def test_an_expression_with_another_operation_than_the_question_names_gets_no_vote():
    chunk = Chunk("c1", "What is 6 plus 25?", Operation.MATH)
    assert candidate_answer(" 6 * 25", chunk) == (None, "150", "6 * 25")
    assert candidate_answer("6 + 25 = 125", chunk)[0] == "31"  # the expression counts, not the model's sum


def test_an_expression_that_leaves_out_a_number_gets_no_vote_but_keeps_its_display():
    chunk = Chunk("c1", "What is (4 - 7) - 3?", Operation.MATH)
    assert candidate_answer("4 - 7 = -3", chunk) == (None, "-3", "4 - 7")
    assert candidate_answer("(4 - 7) - 3 = -6", chunk) == ("-6", "-6", "(4 - 7) - 3")
    # Not program-aided: the reply's own number is read as before.
    assert candidate_answer("4 - 7 = -3", chunk, program_aided=False)[0] == "-3"


def test_the_greedy_reply_that_uses_every_number_beats_samples_that_drop_one():
    chunk = Chunk("c1", "What is (4 - 7) - 3?", Operation.MATH)

    def reply(text: str, greedy: bool = False) -> Candidate:
        key, display, expression = candidate_answer(text, chunk)
        return Candidate("p", text, key, display, greedy=greedy, expression=expression)

    candidates = [reply("(4 - 7) - 3", greedy=True)] + [reply("4 - 7 = -3") for _ in range(4)]
    result = apply_anchor(vote(candidates, "majority"), candidates)
    assert result.answer == "-6"
    # When no reply uses every number, the greedy reply is still what the user gets.
    dropped = [reply("4 - 7", greedy=True)] + [reply("7 - 3") for _ in range(4)]
    result = apply_anchor(vote(dropped, "majority"), dropped)
    assert result.winner is dropped[0]
