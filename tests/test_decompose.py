"""Decompose: rule-based splitting, classification, dependencies, chunk prompts, LLM plan parsing."""

from __future__ import annotations

import json
import time

import pytest

from dellm_p2p.coordinator.decompose import (
    LLM_DECOMPOSE_PROMPT,
    DecompositionError,
    chunk_prompt,
    classify,
    complexity,
    decompose,
    parse_llm_decomposition,
    render_chunk_prompt,
)
from dellm_p2p.coordinator.extract import ANSWER_SUFFIX
from dellm_p2p.coordinator.types import Chunk, Operation

M, L, C, G, X = Operation.MATH, Operation.LOOKUP, Operation.COMPARE, Operation.GENERATE, Operation.GENERAL


def shape(question: str, **kwargs) -> list[tuple[str, str, Operation, tuple[str, ...]]]:
    return [(c.id, c.text, c.operation, c.depends_on) for c in decompose(question, **kwargs)]


# --- The DELLM design's examples ---------------------------------------------------------------


def test_dellm_example_with_anaphora():
    assert shape("Calculate 10% of 1000, then find savings accounts paying that much") == [
        ("c1", "Calculate 10% of 1000", M, ()),
        ("c2", "find savings accounts paying that much", L, ("c1",)),
    ]


def test_dellm_example_without_anaphora():
    assert shape("Calculate 10% interest on $1000 then find the best savings accounts") == [
        ("c1", "Calculate 10% interest on $1000", M, ()),
        ("c2", "find the best savings accounts", L, ()),
    ]


# --- Split points ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        # Numbered steps: "3." after "and" is part of the step, the second "2." starts one.
        (
            "1. Add 2 and 3. 2. Multiply the result by 4.",
            [("c1", "Add 2 and 3", M, ()), ("c2", "Multiply the result by 4.", M, ("c1",))],
        ),
        (
            "1) Find the capital of Peru 2) Write a haiku about it",
            [("c1", "Find the capital of Peru", L, ()), ("c2", "Write a haiku about it", G, ("c1",))],
        ),
        (
            "Step 1: add 2 and 2. Step 2: multiply that by 10. Step 3: write a story about the number.",
            [
                ("c1", "add 2 and 2", M, ()),
                ("c2", "multiply that by 10", M, ("c1",)),
                ("c3", "write a story about the number.", G, ()),
            ],
        ),
        # A list header joins the first item.
        (
            "Do the following:\n1. Calculate 5 plus 3\n2. Multiply it by 2",
            [("c1", "Do the following:\n1. Calculate 5 plus 3", M, ()), ("c2", "Multiply it by 2", M, ("c1",))],
        ),
        (
            "- find the capital of Peru\n- compute 2 + 2\n* write a haiku about cats",
            [
                ("c1", "find the capital of Peru", L, ()),
                ("c2", "compute 2 + 2", M, ()),
                ("c3", "write a haiku about cats", G, ()),
            ],
        ),
        # Semicolons.
        (
            "Find the capital of France; write a poem about it",
            [("c1", "Find the capital of France", L, ()), ("c2", "write a poem about it", G, ("c1",))],
        ),
        (
            "What is the tallest mountain; how high is it?",
            [("c1", "What is the tallest mountain", L, ()), ("c2", "how high is it?", X, ("c1",))],
        ),
        # "also" at a clause boundary.
        (
            "Explain recursion in Python. Also give an example of a recursive function.",
            [
                ("c1", "Explain recursion in Python", G, ()),
                ("c2", "give an example of a recursive function.", X, ()),
            ],
        ),
        (
            "Find the population of Tokyo and also list its largest districts",
            [("c1", "Find the population of Tokyo", L, ()), ("c2", "list its largest districts", L, ())],
        ),
        # Several sequencing words; the leading "First," is stripped.
        (
            "First, calculate 12 * 7, next find a number bigger than that, and finally write a poem about it.",
            [
                ("c1", "calculate 12 * 7", M, ()),
                ("c2", "find a number bigger than that", L, ("c1",)),
                ("c3", "write a poem about it.", G, ("c2",)),
            ],
        ),
        (
            "Compute the sum of 3 and 4. After that, write a limerick about the result",
            [("c1", "Compute the sum of 3 and 4", M, ()), ("c2", "write a limerick about the result", G, ("c1",))],
        ),
        # "and" between two instructions.
        (
            "Calculate the tax on $500 and find the best bank",
            [("c1", "Calculate the tax on $500", M, ()), ("c2", "find the best bank", L, ())],
        ),
        (
            "Add 2 and 3 and multiply the sum by 4",
            [("c1", "Add 2 and 3", M, ()), ("c2", "multiply the sum by 4", M, ())],
        ),
        (
            "What is the capital of France, and what is the population of Paris?",
            [("c1", "What is the capital of France", L, ()), ("c2", "what is the population of Paris?", L, ())],
        ),
        # A leading fragment joins the next piece, a trailing one the previous.
        (
            "Hi; what is the capital of France; then write a poem, please",
            [("c1", "Hi; what is the capital of France", L, ()), ("c2", "write a poem, please", G, ())],
        ),
        # Splits outside quotes and parentheses still happen.
        (
            'Translate "and then" to French, then write a sentence using it',
            [("c1", 'Translate "and then" to French', X, ()), ("c2", "write a sentence using it", G, ("c1",))],
        ),
        (
            "Find the best pizza (cheap and then tasty) then write a review of it",
            [("c1", "Find the best pizza (cheap and then tasty)", L, ()), ("c2", "write a review of it", G, ("c1",))],
        ),
    ],
)
def test_split_points(question, expected):
    assert shape(question) == expected


@pytest.mark.parametrize(
    "question",
    [
        # Inside quotes or parentheses.
        'Translate "eat and then sleep" to French',
        "Translate 'eat and then sleep; also run' to French",
        "Translate “eat, then sleep; then run” into German",
        "Explain this code (first parse; then evaluate the tree)",
        # "and" joining nouns, not instructions.
        "salt and pepper",
        "Compare Paris and London",
        "What is the distance between Paris and London?",
        "Add 2 and 3",
        # Fragments under 3 words merge back.
        "then",
        "also this",
        "Calculate 5 times 3 then double it",
        "Explain recursion and then",
        # Not sequencing: conditionals, "back then", "next week", "also" mid-clause, "than" typo.
        "If it rains then what should I wear tomorrow?",
        "What happened back then in Rome?",
        "What is the weather next week in Berlin?",
        "I also need to know the capital of Peru",
        "Is Python better then Java for beginners",
        "The battery finally died so what should I buy?",
        # An apostrophe is not a quote.
        "Don't forget the users' data and explain what's wrong",
        # A lone "1." is not a list.
        "1. Calculate the area of a circle with radius 2",
        "What is 3.5 times 2?",
    ],
)
def test_no_split(question):
    chunks = decompose(question)
    assert len(chunks) == 1
    assert chunks[0].id == "c1"
    assert chunks[0].text == question.strip()
    assert chunks[0].depends_on == ()


@pytest.mark.parametrize("question", ["  What is the capital of France?  ", "\n write a poem\t", "Hello"])
def test_single_chunk_is_whole_trimmed_question(question):
    (chunk,) = decompose(question)
    assert chunk == Chunk("c1", question.strip(), chunk.operation, chunk.complexity, ())


def test_chunks_are_never_short_phrases():
    questions = [
        "Calculate X then Y; also z",
        "Find a; then b; then write a very long essay about c",
        "- a\n- b\n- c\n- write a poem about the sea",
    ]
    for question in questions:
        chunks = decompose(question)
        assert len(chunks) == 1 or all(len(c.text.split()) >= 3 for c in chunks), chunks


def test_separator_punctuation_stripped_final_punctuation_kept():
    chunks = decompose("Find the capital of Peru. Then, what is its population?")
    assert [c.text for c in chunks] == ["Find the capital of Peru", "what is its population?"]
    chunks = decompose("Calculate 10% of 1000; then find savings accounts paying that much.")
    assert [c.text for c in chunks] == ["Calculate 10% of 1000", "find savings accounts paying that much."]


def test_depends_only_on_the_previous_chunk():
    chunks = decompose(
        "Find the capital of France; calculate 12 * 7 with a calculator; then write a poem about that number"
    )
    assert [c.depends_on for c in chunks] == [(), (), ("c2",)]
    assert chunks[0].depends_on == ()  # the first chunk never depends


@pytest.mark.parametrize(
    "question",
    [
        "a; " * 3000,
        "then " * 5000,
        "calculate 1 plus 2 now; " * 2000,
        "x and " * 5000 + "find y",
        "(" * 5000,
        "'a " * 5000,
        "- x\n" * 3000,
        "Calculate x and find y and " * 1000,
        "if a then " * 3000,
    ],
)
def test_long_inputs_stay_fast(question):
    started = time.process_time()  # this process's CPU time: other load on the machine does not count
    chunks = decompose(question)
    assert 1 <= len(chunks) <= 8
    assert time.process_time() - started < 2.0  # linear-ish: ~0.05 s here; quadratic would take seconds


# --- max_chunks ---------------------------------------------------------------------------


STEPS = "; ".join(f"calculate {n} plus {n} now" for n in range(1, 11))


@pytest.mark.parametrize("max_chunks", [1, 2, 3, 8])
def test_max_chunks_merges_the_tail(max_chunks):
    chunks = decompose(STEPS, max_chunks=max_chunks)
    assert len(chunks) == min(max_chunks, 10)
    assert [c.id for c in chunks] == [f"c{i}" for i in range(1, len(chunks) + 1)]
    if max_chunks == 1:
        assert chunks[0].text == STEPS
    else:
        assert chunks[0].text == "calculate 1 plus 1 now"
        assert chunks[-1].text.startswith(f"calculate {max_chunks} plus")
        assert chunks[-1].text.endswith("calculate 10 plus 10 now")


def test_default_cap_is_eight():
    assert len(decompose(STEPS)) == 8


def test_bad_max_chunks():
    with pytest.raises(ValueError, match="max_chunks"):
        decompose("What is 2 + 2?", max_chunks=0)


@pytest.mark.parametrize("question", ["", "   ", "\n\t "])
def test_empty_question(question):
    with pytest.raises(ValueError, match=r"^the question is empty$"):
        decompose(question)


# --- Classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "operation"),
    [
        ("what is 12 times 7", M),  # tie MATH/LOOKUP → MATH
        ("What is the capital of France", L),
        ("write a poem", G),
        ("Calculate 10% of 1000", M),
        ("12 * 7", M),
        ("How many legs does a spider have?", M),
        ("Divide 144 by 12", M),
        ("Find the average of 3, 5 and 7", M),  # tie MATH/LOOKUP → MATH
        ("Find the best savings accounts", L),
        ("Who is the president of Brazil", L),
        ("What is the address of the Louvre", L),  # "add" only as a whole word
        ("List the planets of the solar system", L),
        ("Compare Python and Java", C),
        ("Python vs Java for web servers", C),
        ("Explain the difference between TCP and UDP", C),  # tie COMPARE/GENERATE → COMPARE
        ("Which is better, tea or coffee?", C),  # tie COMPARE/LOOKUP → COMPARE
        ("pros and cons of remote work", C),
        ("Summarize the plot of Hamlet", G),
        ("Describe what happens when water boils", G),  # tie GENERATE/LOOKUP → GENERATE
        ("Write an email comparing two phones", G),  # 2 GENERATE hits beat 1 COMPARE hit
        ("Write a story about how many stars there are", G),
        ("Sum up this chapter", G),
        ("Describe how times have changed", G),  # "times" without an operand is not math
        ('Translate "write a poem" into Spanish', X),  # quoted words are not the request
        ("CALCULATE THE SUM", M),
        ("What is (12 * 7)?", M),  # parentheses hide split points, not keywords
        ("Hello there", X),
        ("Tell me a joke", X),
    ],
)
def test_classify(text, operation):
    assert classify(text) is operation
    assert decompose(text)[0].operation is operation


# --- Complexity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hi", "What is 2 + 2?", "Compare " + "very " * 200 + "long things", "Write an essay " * 30, STEPS],
)
def test_complexity_in_unit_interval(text):
    for chunk in decompose(text):
        assert 0.0 <= chunk.complexity <= 1.0
    for op in Operation:
        assert 0.0 <= complexity(text, op) <= 1.0


def test_complexity_grows_with_length_and_difficulty():
    short = "Find the capital of Peru"
    long = "Find the capital of Peru and the name of its oldest university and the year it was founded"
    assert complexity(long, L) > complexity(short, L)
    assert complexity(short, C) > complexity(short, G) > complexity(short, M) > complexity(short, L)
    assert decompose("Compare the economic policies of France and Germany since 1990")[0].complexity > (
        decompose("Who is Ada Lovelace?")[0].complexity
    )


# --- render_chunk_prompt ------------------------------------------------------------------


def test_render_without_dependencies():
    chunk = Chunk("c1", "Calculate 10% of 1000", M)
    assert render_chunk_prompt(chunk, {}) == "Calculate 10% of 1000"
    assert render_chunk_prompt(chunk, {"c9": "irrelevant"}) == "Calculate 10% of 1000"


def test_render_with_dependency_answer():
    chunk = Chunk("c2", "find savings accounts paying that much", L, depends_on=("c1",))
    assert render_chunk_prompt(chunk, {"c1": "  100\n"}) == (
        "Earlier result (c1): 100\nfind savings accounts paying that much"
    )


def test_render_skips_unknown_or_blank_answers_and_shortens_long_ones():
    chunk = Chunk("c3", "write a poem about it", G, depends_on=("c1", "c2"))
    assert render_chunk_prompt(chunk, {}) == "write a poem about it"
    assert render_chunk_prompt(chunk, {"c1": "   "}) == "write a poem about it"
    prompt = render_chunk_prompt(chunk, {"c1": "word " * 200, "c2": "Lima"})
    first, second, last = prompt.split("\n")
    assert first.startswith("Earlier result (c1): word word") and first.endswith("…")
    assert len(first) < 340
    assert second == "Earlier result (c2): Lima"
    assert last == "write a poem about it"


def test_render_follows_decompose():
    c1, c2 = decompose("Calculate 10% of 1000, then find savings accounts paying that much")
    assert render_chunk_prompt(c2, {c1.id: "100"}) == "Earlier result (c1): 100\nfind savings accounts paying that much"


# --- LLM decomposition --------------------------------------------------------------------

QUESTION = "Calculate 10% of 1000, then find savings accounts paying that much"
PLAN = [
    {"task": "Calculate 10% of 1000", "operation": "MATH", "depends_on": []},
    {"task": "Find savings accounts paying that much", "operation": "LOOKUP", "depends_on": [0]},
]


def test_prompt_template():
    prompt = LLM_DECOMPOSE_PROMPT.format(question="Who wrote Hamlet?")
    assert prompt.rstrip().endswith("Question: Who wrote Hamlet?\nJSON:")
    assert "JSON" in prompt and '"depends_on"' in prompt
    for op in Operation:
        assert op.value in prompt


EXPECTED = [
    Chunk("c1", "Calculate 10% of 1000", M, complexity("Calculate 10% of 1000", M)),
    Chunk(
        "c2",
        "Find savings accounts paying that much",
        L,
        complexity("Find savings accounts paying that much", L),
        ("c1",),
    ),
]


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps(PLAN),
        f"Sure! Here are the subtasks:\n```json\n{json.dumps(PLAN, indent=2)}\n```\nHope this helps [1].",
        "Subtasks [see below]: " + json.dumps(PLAN) + " done",
        json.dumps({"subtasks": PLAN}),
        json.dumps([{**PLAN[0], "operation": "math"}, {**PLAN[1], "operation": " Lookup "}]),
    ],
)
def test_parse_valid(reply):
    assert parse_llm_decomposition(reply, QUESTION) == EXPECTED


def test_parse_missing_fields_use_defaults():
    reply = json.dumps([{"task": "Calculate 10% of 1000"}, {"task": "find savings accounts", "depends_on": None}])
    chunks = parse_llm_decomposition(reply, QUESTION)
    assert [(c.operation, c.depends_on) for c in chunks] == [(M, ()), (L, ())]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("no plan, sorry", "no valid JSON array"),
        ('[{"task": "Calculate 10% of 1000",}]', "no valid JSON array"),  # invalid JSON
        ('{"task": "Calculate 10% of 1000"}', "no valid JSON array"),  # not a list
        ("[]", "empty"),
        ("```json\n[]\n```", "empty"),
        ("[1, 2]", "JSON object"),
        ('["Calculate 10% of 1000"]', "JSON object"),
        (json.dumps([{"task": 1000}]), "task"),
        (json.dumps([{"task": "   "}]), "blank"),
        (json.dumps([{"operation": "MATH"}]), "task"),
        (json.dumps([{**PLAN[0], "operation": "SING"}]), "unknown operation"),
        (json.dumps([{**PLAN[0], "operation": 3}]), "operation"),
        (json.dumps([{**PLAN[0], "depends_on": [1]}, PLAN[1]]), "not an earlier subtask"),  # forward
        (json.dumps([PLAN[0], {**PLAN[1], "depends_on": [1]}]), "not an earlier subtask"),  # itself
        (json.dumps([PLAN[0], {**PLAN[1], "depends_on": [-1]}]), "not an earlier subtask"),
        (json.dumps([PLAN[0], {**PLAN[1], "depends_on": [7]}]), "not an earlier subtask"),  # out of range
        (json.dumps([PLAN[0], {**PLAN[1], "depends_on": ["0"]}]), "depends_on"),
        (json.dumps([PLAN[0], {**PLAN[1], "depends_on": 0}]), "depends_on"),
        (json.dumps(PLAN * 5), "more than the limit of 8"),  # too many
        (json.dumps([{"task": "Who wrote Hamlet?", "operation": "LOOKUP"}]), "shares no word"),
    ],
)
def test_parse_invalid(reply, reason):
    with pytest.raises(DecompositionError, match=reason) as info:
        parse_llm_decomposition(reply, QUESTION)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_max_chunks():
    assert len(parse_llm_decomposition(json.dumps(PLAN), QUESTION, max_chunks=2)) == 2
    with pytest.raises(DecompositionError, match="more than the limit of 1"):
        parse_llm_decomposition(json.dumps(PLAN), QUESTION, max_chunks=1)


def test_parse_rejects_echoed_example():
    example = LLM_DECOMPOSE_PROMPT.split("Example answer: ", 1)[1].split("\n", 1)[0]
    example = example.replace("{{", "{").replace("}}", "}")
    assert len(parse_llm_decomposition(example, QUESTION)) == 2  # fine for the example's own question
    with pytest.raises(DecompositionError, match="shares no word"):
        parse_llm_decomposition(example, "Who wrote Hamlet and when?")


def test_parse_empty_question():
    with pytest.raises(ValueError, match=r"^the question is empty$"):
        parse_llm_decomposition(json.dumps(PLAN), "  ")


def test_chunk_prompt_asks_for_an_answer_line_on_math_only():
    math = Chunk("c1", "Calculate 10% of 1000", M)
    assert chunk_prompt(math, {}) == f"Calculate 10% of 1000\n{ANSWER_SUFFIX}"
    lookup = Chunk("c2", "find savings accounts paying that much", L, depends_on=("c1",))
    assert chunk_prompt(lookup, {"c1": "100"}) == render_chunk_prompt(lookup, {"c1": "100"})
    assert ANSWER_SUFFIX not in chunk_prompt(Chunk("c3", "write a poem", G), {})
