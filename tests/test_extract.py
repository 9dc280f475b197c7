"""Answer extraction: fold keys, numbers, entities in the reply shapes of a 135M model."""

from __future__ import annotations

import time

import pytest

from dellm_p2p.coordinator.extract import (
    ANSWER_SUFFIX,
    FALLBACK_WORDS,
    OPEN_KEY_WORDS,
    extract_answer,
    extract_entity,
    extract_number,
    fold,
)
from dellm_p2p.coordinator.types import Operation

FRANCE = "What is the capital of France?"
JAPAN = "What is the capital of Japan?"
USA = "What is the capital of the United States?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  PARIS!!  ", "paris"),
        ("São Tomé", "sao tome"),
        ("Zürich", "zurich"),
        ("The Hague", "hague"),
        ("the capital", "capital"),
        ("A Coruña", "coruna"),
        ("an apple", "apple"),
        ("Les Misérables", "miserables"),
        ("L'Aquila", "aquila"),
        ("l’Aquila", "aquila"),
        ("El Salvador", "salvador"),
        ("Der Spiegel", "spiegel"),
        ("The", "the"),  # an article alone is kept, not folded to ""
        ("Washington, D.C.", "washington dc"),
        ("Washington DC", "washington dc"),
        ("Port-au-Prince", "port au prince"),
        ("St. John's", "saint johns"),
        ("Saint John's", "saint johns"),
        ('"Paris"', "paris"),
        ("Paris,France", "paris france"),
        ("1,000", "1000"),
        ("-3", "-3"),
        ("100.5", "100.5"),
        ("5-3", "5 3"),
        ("tabs\tand\n newlines", "tabs and newlines"),
        ("!!!", ""),
        ("", ""),
    ],
)
def test_fold(text, expected):
    assert fold(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", "42"),
        ("1,000", "1000"),
        ("It costs $1,234,567.", "1234567"),
        ("$100.00", "100"),
        ("The price is 100.50 dollars.", "100.5"),
        ("It is 007.", "7"),
        ("-3", "-3"),
        ("The temperature is −12 degrees.", "-12"),
        ("5-3 gives 2", "2"),  # a minus after a digit is subtraction, not a sign
        ("The discount is 10%.", "10"),
        ("#### 42", "42"),
        ("16 - 3 - 4 = 9 eggs. 9 * 2 = 18 dollars.\n#### 18", "18"),
        ("The answer is 7.", "7"),
        ("The answer is 7 because 3 + 4 is 7 and 2 is even.", "7"),
        ("Answer: 1,234.50 dollars", "1234.5"),
        ("The answer is 3 + 4 = 7.", "7"),
        ("A: 143", "143"),
        ("\\boxed{12} and then 5 more words", "12"),
        ("She has a total of 12 apples and 3 pears.", "12"),
        ("98 + 45 = 143", "143"),
        ("What is 98 plus 45? 98 plus 45 is 143.", "143"),
        ("What is 1.5 plus 2? It is 3.5", "3.5"),
        ("I have 3 apples and 4 pears, so 7 fruits.", "7"),
        ("98 plus 45 equals 143.\n", "143"),
        ("It is -0.0", "0"),
        ("143\nQ: What is 12 plus 3?\nA: 15", "143"),  # the invented next turn is ignored
        ("There is no number here.", None),
        ("", None),
        ("H2O is water.", None),  # a digit inside a word is not a number
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


ENTITY_CASES = [
    # The reply shapes of the default model.
    ("The capital of France is Paris.", FRANCE, "Paris"),
    ("Paris is the capital of France.", FRANCE, "Paris"),
    ("Paris", FRANCE, "Paris"),
    ("The capital city of Japan is Tokyo, which is also the largest city.", JAPAN, "Tokyo"),
    ("Answer: Canberra", "What is the capital of Australia?", "Canberra"),
    ("I think it's Ottawa.", "What is the capital of Canada?", "Ottawa"),
    ("**Berlin**", "What is the capital of Germany?", "Berlin"),
    ("The answer is: Rome", "What is the capital of Italy?", "Rome"),
    # Tricky ones.
    ("Paris, France", FRANCE, "Paris"),
    ("It is Paris.", FRANCE, "Paris"),
    ("The capital is Washington, D.C.", USA, "Washington, D.C."),
    ("The capital is Washington, D.C. It lies on the Potomac.", USA, "Washington, D.C."),
    ("France's capital is Paris", FRANCE, "Paris"),
    ("Sure! The capital of Italy is Rome. It is known for the Colosseum.", "What is the capital of Italy?", "Rome"),
    ("Japan is an island country in East Asia. Its capital is Tokyo.", JAPAN, "Tokyo"),
    ("Paris. It is a beautiful city.", FRANCE, "Paris"),
    ("Paris is a beautiful city.", FRANCE, "Paris"),
    ("The capital of France is not Lyon, it is Paris.", FRANCE, "Paris"),
    ("The capital of France is the city of Paris.", FRANCE, "Paris"),
    ("The capital of France is a city called Paris.", FRANCE, "Paris"),
    ("Canberra, the capital of Australia, is a planned city.", "What is the capital of Australia?", "Canberra"),
    ("Capital of France: Paris", FRANCE, "Paris"),
    ("The capital of France is:\n\nParis", FRANCE, "Paris"),
    ('The capital of France is "Paris".', FRANCE, "Paris"),
    ("- __Paris__ (France)", FRANCE, "Paris"),
    ("the capital of france is paris", FRANCE, "paris"),
    ("Q: What is the capital of France?\nA: Paris", FRANCE, "Paris"),
    ("The capital of France is Paris.\nQ: What is the capital of Spain?\nA: Madrid", FRANCE, "Paris"),
    # Names built on question words survive the echo removal.
    ("The capital of Mexico is Mexico City.", "What is the capital of Mexico?", "Mexico City"),
    ("Luxembourg", "What is the capital of Luxembourg?", "Luxembourg"),
    ("It is Vatican City.", "What is the capital of Vatican City?", "Vatican City"),
    ("The capital of Andorra is Andorra la Vella.", "What is the capital of Andorra?", "Andorra la Vella"),
    ("St. John's is the capital of Antigua and Barbuda.", "What is the capital of Antigua and Barbuda?", "St. John's"),
    ("The Hague is the seat of government of the Netherlands.", "", "The Hague"),
    # Other factual shapes.
    ("Hamlet was written by William Shakespeare.", "Who wrote Hamlet?", "William Shakespeare"),
    ("William Shakespeare wrote Hamlet.", "Who wrote Hamlet?", "William Shakespeare"),
    ("It is in Japan.", "Where is Tokyo?", "Japan"),
    ("Yes, Paris is the capital of France.", "Is Paris the capital of France?", "Yes"),
    ("Paris is in France.\nAnswer: Yes", "Is Paris in France?", "Yes"),
    ("Sorry, the capital of France is Paris.", FRANCE, "Paris"),
    ("Tokyo is the capital of Japan.", "", "Tokyo"),  # no question: articles and capitals decide
    ("The capital of Japan is Tokyo.", "", "Tokyo"),
    # Nothing committed to.
    ("", FRANCE, None),
    ("   \n\t", FRANCE, None),
    ("!!!!", FRANCE, None),
    ("the the the", FRANCE, None),
    ("Paris Paris Paris Paris", FRANCE, None),
    ("Answer: <short answer>", FRANCE, None),
    ("I don't know.", FRANCE, None),
    ("The capital of Nauru is the capital of Nauru.", "What is the capital of Nauru?", None),
    ("Water boils at 100 degrees Celsius and freezes at 0.", "At what temperature does water boil?", None),
]


@pytest.mark.parametrize(("text", "question", "expected"), ENTITY_CASES)
def test_extract_entity(text, question, expected):
    assert extract_entity(text, question) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "The capital of Japan is Tokyo.",
        "Tokyo is the capital of Japan.",
        "Tokyo",
        "The capital city of Japan is Tokyo, a huge city.",
        "Answer: Tokyo",
        "I think it's Tokyo.",
        "**Tokyo**",
        "tokyo, japan",
        "Sorry, the capital of Japan is Tokyo.",
        "1. The capital of Japan is Tokyo.",
    ],
)
def test_reply_shapes_share_one_key(reply):
    assert extract_answer(reply, Operation.LOOKUP, JAPAN)[0] == "tokyo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 1,000.", ("1000", "1000")),
        ("-3", ("-3", "-3")),
        ("no idea", (None, "")),
    ],
)
def test_extract_answer_math(text, expected):
    assert extract_answer(text, Operation.MATH, "What is 2 minus 5?") == expected


@pytest.mark.parametrize("operation", [Operation.LOOKUP, Operation.COMPARE, Operation.GENERAL])
def test_extract_answer_entity_operations(operation):
    assert extract_answer("The capital of France is Paris.", operation, FRANCE) == ("paris", "Paris")


def test_extract_answer_falls_back_to_first_sentence():
    reply = "Water boils at one hundred degrees Celsius at sea level on a normal day in the kitchen. It is hot."
    key, display = extract_answer(reply, Operation.LOOKUP, "At what temperature does water boil?")
    assert display == "Water boils at one hundred degrees Celsius at sea level on a…"
    assert key == fold(display)
    assert len(key.split()) == FALLBACK_WORDS


def test_extract_answer_generate_keeps_full_text():
    poem = " ".join(f"word{i}" for i in range(100)) + "."
    key, display = extract_answer(poem, Operation.GENERATE, "Write a poem.")
    assert display == poem
    assert key == " ".join(f"word{i}" for i in range(OPEN_KEY_WORDS))


def test_extract_answer_generate_keeps_markdown_in_display():
    reply = "# A poem\n\n**Roses** are red,\n- violets are blue.\n"
    assert extract_answer(reply, Operation.GENERATE, "Write a poem.") == (
        "poem roses are red violets are blue",
        reply.strip(),
    )


def test_extract_answer_long_general_reply_is_open_ended():
    reply = "The sky is blue because " + "air scatters blue light more than red light " * 6
    key, display = extract_answer(reply, Operation.GENERAL, "Why is the sky blue?")
    assert display == reply.strip()
    assert key is not None and key.startswith("sky is blue because air scatters")


def test_extract_answer_long_general_reply_mentioning_the_answer_is_open_ended():
    reply = "The answer is complicated. " + "Light from the sun is scattered by the air. " * 5
    key, display = extract_answer(reply, Operation.GENERAL, "Why is the sky blue?")
    assert display == reply.strip()
    assert key is not None and key.startswith("answer is complicated light")


def test_extract_answer_long_general_reply_with_answer_line():
    reply = "Let me think. " * 30 + "\nAnswer: Paris"
    assert extract_answer(reply, Operation.GENERAL, FRANCE) == ("paris", "Paris")


@pytest.mark.parametrize("reply", ["", "   ", "!!!!", "the the the", "I don't know.", "Answer: <short answer>"])
@pytest.mark.parametrize("operation", list(Operation))
def test_extract_answer_nothing_committed(reply, operation):
    assert extract_answer(reply, operation, FRANCE) == (None, "")


def test_answer_suffix_is_one_simple_sentence():
    text = ANSWER_SUFFIX.strip()
    assert "Answer:" in text
    assert text.count(".") == 1 and text.endswith(".")
    assert len(text.split()) <= 12
    # A reply that follows it is read by the extractor.
    assert extract_entity("Paris is nice.\nAnswer: Paris", FRANCE) == "Paris"


@pytest.mark.parametrize(
    "reply",
    [
        "word " * 4000,
        "\n" * 20000 + "x",
        "Paris is" + " " * 20000 + "x",
        "The capital of France is Paris, which is " * 2000,
        "1" * 5000 + " x" * 5000,
    ],
    ids=["words", "newlines", "spaces", "copulas", "digits"],
)
def test_long_replies_take_linear_time(reply):
    # Quadratic regexes took seconds on 20 kB replies; these take milliseconds.
    started = time.perf_counter()
    for operation in Operation:
        extract_answer(reply, operation, FRANCE)
    assert time.perf_counter() - started < 1.0
