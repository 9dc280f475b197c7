"""Training a LoRA adapter and guarding it (issue 23), on a tiny randomly initialised Llama built here (fast)."""

from __future__ import annotations

import json
import time

import pytest

from dellm_p2p.learn.adapters import (
    WEIGHTS_FILE,
    AdapterError,
    adopt,
    adopted,
    check_adapter_dir,
    heldout_path,
    model_hash,
)
from dellm_p2p.learn.guard import decide, guard_log, judge, log_result, sanity_set, transformers_generate
from dellm_p2p.learn.records import ConsensusRecord
from dellm_p2p.learn.train import TrainError, TrainSettings, select, split, target_reply, train_adapter

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer Llama (hidden 32) with a byte-level BPE tokenizer and a chat template, saved to a directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = ["What is 2 plus 3? 5", "user assistant", "The capital of France is Paris.", "0123456789 plus minus"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    raw.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _records(n: int) -> list[ConsensusRecord]:
    return [ConsensusRecord(ts=time.time(), prompt=f"What is {i} plus 3?", kind="MATH", answer=str(i + 3),
                            key=str(i + 3), reply=f"{i} + 3", agreement=1.0, answers=5, program=True)
            for i in range(n)]  # fmt: skip


def test_the_bar_and_the_split():
    loose = ConsensusRecord(ts=0, prompt="Q?", kind="LOOKUP", answer="Paris", key="paris", reply="It is Paris.",
                            agreement=0.6, answers=5)  # fmt: skip
    firm = loose.model_copy(update={"agreement": 0.8, "prompt": "Q2?"})
    assert [r.prompt for r in select([loose, firm, *_records(2)], TrainSettings(min_agreement=0.8))] == [
        "Q2?", "What is 0 plus 3?", "What is 1 plus 3?",
    ]  # fmt: skip
    assert target_reply(firm) == "It is Paris." and target_reply(_records(1)[0]) == "3"
    train, held = split(_records(200), 0.2)
    assert len(train) + len(held) == 200 and 20 <= len(held) <= 60
    again = split(_records(200), 0.2)  # stable: by prompt
    assert [[r.prompt for r in part] for part in again] == [[r.prompt for r in part] for part in (train, held)]


def test_training_smoke_run_writes_a_versioned_adapter(tiny_model, tmp_path):
    settings = TrainSettings(rank=4, alpha=8, epochs=100, learning_rate=5e-2, batch_size=4, holdout=0.25, max_steps=12)
    seen = []
    path, meta = train_adapter(_records(12), tiny_model, "tiny", tmp_path, settings, trainer="nabc",
                               progress=lambda step, steps, loss: seen.append((step, steps)))  # fmt: skip
    assert seen[-1] == (12, 12) and len(meta.loss_curve) == 12
    # The adapter learns its examples: the loss falls (random init, one repeated pattern, a high rate).
    assert sum(meta.loss_curve[-3:]) / 3 < sum(meta.loss_curve[:3]) / 3
    assert check_adapter_dir(path) == meta and path.name == meta.id and meta.version == 1
    assert meta.base_hash == model_hash(tiny_model) and meta.base_model == "tiny" and meta.trainer == "nabc"
    assert meta.examples + meta.held_back == 12 and meta.bytes > 0
    held = heldout_path(tmp_path, meta.id).read_text().splitlines()
    assert len(held) == meta.held_back
    # A second run is version 2; adoption names one adapter for its base only.
    _, second = train_adapter(_records(12), tiny_model, "tiny", tmp_path, settings)
    assert second.version == 2
    adopt(tmp_path, second)
    assert adopted(tmp_path, "tiny")[1] == second and adopted(tmp_path, "other") is None
    # Tampered weights no longer match the id.
    (path / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes() + b"x")
    with pytest.raises(AdapterError, match="hash"):
        check_adapter_dir(path)


def test_too_few_records_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(TrainError, match="at least 4"):
        train_adapter(_records(2), tiny_model, "tiny", tmp_path, TrainSettings(holdout=0.0))


def test_the_guard_runs_both_models_and_refuses_a_worse_adapter(tiny_model, tmp_path):
    path, meta = train_adapter(_records(8), tiny_model, "tiny", tmp_path,
                               TrainSettings(rank=4, alpha=8, batch_size=4, holdout=0.0, max_steps=2))  # fmt: skip
    generate = transformers_generate(tiny_model, path, max_tokens=4)
    replies = generate(["What is 1 plus 3?"], True)
    assert len(replies) == 1 and isinstance(replies[0], str)
    held = _records(4)
    sanity = sanity_set()
    assert len(sanity) == 30 and all(item.answers for item in sanity)

    def simulated(right_with_adapter: bool, right_without: bool):
        """A SIMULATED generator: right or wrong answers per model, to test the decision."""

        def gen(questions, with_adapter):
            right = right_with_adapter if with_adapter else right_without
            answers = [r.answer for r in held] + [s.answers[0] for s in sanity]
            return [f"The answer is {a}." if right else "I do not know, 999." for a in answers[: len(questions)]]

        return gen

    worse = judge(meta.id, held, simulated(False, True))
    assert not worse.adopt and worse.adapter_heldout == 0.0 and worse.base_heldout == 1.0
    assert "refused" in worse.reason and "held-back" in worse.reason and "sanity" in worse.reason
    better = judge(meta.id, held, simulated(True, False))
    assert better.adopt and better.adapter_sanity == 1.0 and better.base_sanity == 0.0
    assert decide(0.5, 0.5, 0.9, 0.9)[0] and not decide(0.5, 0.6, 0.9, 0.8)[0]
    log_result(tmp_path, worse)
    log_result(tmp_path, better)
    assert [d.adopt for d in guard_log(tmp_path)] == [False, True]
    assert json.loads((tmp_path / "learn" / "guard.jsonl").read_text().splitlines()[0])["adapter_id"] == meta.id
