"""Chat messages for base models (no chat template): a plain transcript with stops at the next turn.

Runs VllmEngine.render_prompt against fake tokenizers (a simulation: no vLLM engine is started).
"""

from __future__ import annotations

from dellm_p2p.engine.base import GenerationRequest
from dellm_p2p.engine.transcript import TRANSCRIPT_STOPS, render_transcript
from dellm_p2p.engine.vllm_engine import VllmEngine
from dellm_p2p.protocol import ChatMessage, SamplingParams


class FakeTokenizer:
    """Whitespace 'tokens'; a chat template only when given one."""

    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split())))

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool) -> str:
        assert self.chat_template, "a tokenizer without a chat template must not be asked to apply one"
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"


def engine_with(tokenizer: FakeTokenizer) -> VllmEngine:
    engine = VllmEngine("fake-model")
    engine._tokenizer = tokenizer  # what start() takes from vLLM
    return engine


def chat(*messages: tuple[str, str], stop: list[str] | None = None) -> GenerationRequest:
    return GenerationRequest(
        SamplingParams(max_tokens=8, stop=stop or []),
        messages=[ChatMessage(role=role, content=content) for role, content in messages],
    )


def test_transcript_puts_system_first_and_ends_at_the_assistant_turn() -> None:
    text = render_transcript(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi "},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?"},
        ]
    )
    assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Capital of France?\nAssistant:"
    assert render_transcript([{"role": "user", "content": "2+2?"}]) == "User: 2+2?\nAssistant:"


async def test_base_model_gets_a_transcript_and_stops_at_the_next_turn() -> None:
    engine = engine_with(FakeTokenizer(chat_template=None))
    request = chat(("system", "Combine answers."), ("user", "What is 2+2?"), stop=["\nUser:", "###"])
    text, tokens = await engine.render_prompt(request)
    assert text == "Combine answers.\n\nUser: What is 2+2?\nAssistant:"
    assert tokens == len(text.split())
    extra = engine.transcript_stops(request)
    # The request's own stops are kept by generate(); only the missing turn labels are added.
    assert "\nUser:" not in extra and set(extra) == set(TRANSCRIPT_STOPS) - {"\nUser:"}


async def test_instruct_model_keeps_its_chat_template_and_no_extra_stops() -> None:
    engine = engine_with(FakeTokenizer(chat_template="{{ messages }}"))
    request = chat(("user", "Hi"))
    text, _ = await engine.render_prompt(request)
    assert text == "<|user|>Hi<|assistant|>"
    assert engine.transcript_stops(request) == []


async def test_raw_prompt_is_left_untouched_on_a_base_model() -> None:
    engine = engine_with(FakeTokenizer(chat_template=None))
    prompt = "Q: What is the capital of France?\nA: Paris\nQ: What is the capital of Peru?\nA:"
    request = GenerationRequest(SamplingParams(max_tokens=8, stop=["\n"]), prompt=prompt)
    text, _ = await engine.render_prompt(request)
    assert text == prompt
    assert engine.transcript_stops(request) == []
