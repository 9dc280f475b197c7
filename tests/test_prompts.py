"""The prompt builder: chat for instruct models, few-shot completions for base models, chosen by model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dellm_p2p.coordinator.decompose import chunk_prompt
from dellm_p2p.coordinator.program import candidate_answer
from dellm_p2p.coordinator.prompts import (
    BASE_STOP,
    FACT_SHOTS,
    PROGRAM_SHOTS,
    base_prompt,
    build_prompt,
    is_instruct,
)
from dellm_p2p.coordinator.types import Chunk, Operation

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
GEMMA = "gemma-3-270m"
SMOL = "SmolLM2-135M-Instruct"


def test_models_are_told_apart_by_their_cards():
    assert is_instruct(SMOL) and is_instruct("smollm2-135m")
    assert not is_instruct(GEMMA) and not is_instruct("gemma3-270m") and not is_instruct("GEMMA-3-270M")
    assert not is_instruct(f"{GEMMA}:lora-0001"), "a base model with an adapter is still a base model"
    assert is_instruct("Qwen2.5-0.5B-Instruct") and is_instruct(None), "no card: chat (the engine's template)"


def test_instruct_models_get_the_chat_prompt_unchanged():
    chunk = Chunk("c1", "What is the capital of Peru?", Operation.LOOKUP)
    request = build_prompt(chunk, {}, SMOL)
    assert request.prompt is None and request.stop == ()
    assert request.messages == [{"role": "user", "content": chunk_prompt(chunk, {}, program_aided=True)}]


def test_base_models_get_a_few_shot_completion_that_stops_at_the_next_shot():
    chunk = Chunk("c1", "What is the capital of Peru?", Operation.LOOKUP)
    request = build_prompt(chunk, {}, GEMMA)
    assert request.messages is None and request.stop == BASE_STOP
    assert request.prompt.endswith("Q: What is the capital of Peru?\nA:")
    for question, answer in FACT_SHOTS:
        assert f"Q: {question}\nA: {answer}\n" in request.prompt


def test_no_shot_names_a_country_capital_of_the_evaluation_set():
    path = DATA_DIR / "capitals.jsonl"
    if not path.exists():
        pytest.skip("../shared/data is not beside this checkout")
    golds = {json.loads(line)["answer"].casefold() for line in path.read_text().splitlines() if line.strip()}
    assert not {answer.casefold() for _, answer in FACT_SHOTS} & golds


def test_program_aided_math_asks_a_base_model_for_an_expression_the_coordinator_computes():
    chunk = Chunk("c1", "What is 48 plus 76?", Operation.MATH)
    prompt = base_prompt(chunk, {})
    assert prompt.endswith("Q: What is 48 plus 76?\nExpression:")
    assert all(f"Expression: {expr}" in prompt for _, expr in PROGRAM_SHOTS)
    # What a base model writes after "Expression:" is read as an instruct model's reply is.
    assert candidate_answer(" 48 + 76", chunk, True)[:2] == ("124", "124")


def test_word_problems_get_worked_examples_ending_in_the_answer():
    chunk = Chunk("c1", "Ann has 3 bags. Each holds 5 pens. How many pens?", Operation.MATH)
    prompt = base_prompt(chunk, {})
    assert "The answer is 10." in prompt and prompt.endswith("How many pens?\nA:")


def test_dependencies_and_earlier_turns_reach_a_base_prompt():
    chunk = Chunk("c2", "Double that", Operation.MATH, depends_on=("c1",))
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My favourite number is 7."},
        {"role": "assistant", "content": "Noted:\n7."},
    ]
    prompt = base_prompt(chunk, {"c1": "42"}, history=history)
    lines = prompt.splitlines()
    assert lines[0] == "Be brief."
    assert "Q: My favourite number is 7.\nA: Noted: 7." in prompt, "turns as Q/A pairs, on one line each"
    assert lines[-2] == "Q: Earlier result (c1): 42 Double that" and lines[-1] == "Expression:"


def test_a_chunk_that_quotes_the_conversation_gets_the_quote_not_the_turns():
    chunk = Chunk("c1", "What is my name?", Operation.LOOKUP, context='The user said: "My name is Alice."')
    history = [{"role": "user", "content": "My name is Alice."}, {"role": "assistant", "content": "Hello!"}]
    prompt = build_prompt(chunk, {}, GEMMA, history=history).prompt
    assert "Alice" in prompt.splitlines()[-2] and "Q: My name is Alice." not in prompt
