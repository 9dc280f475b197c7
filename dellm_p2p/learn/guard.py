"""The guard: a node adopts an adapter only if it is not worse than the base model.

Adapter and base (the same weights with the adapter switched off) answer
greedily, with the model's chat template, two sets:

* **held-back records** — consensus records kept out of the adapter's
  training (the trainer's), or a receiving node's own records: a reply
  scores when it commits to the record's voted answer (its vote key, as the
  coordinator extracts it; for non-MATH kinds also when the folded answer is
  contained in the folded reply, as ``scripts/eval.py`` scores capitals);
* **the sanity set** shipped with the package (``sanity.jsonl``: 30
  general-knowledge questions, none about capitals or arithmetic, the
  benchmark's topics), scored by containment of any accepted answer: it
  catches an adapter that makes the model forget what it knew.

The adapter is adopted when it scores at least the base's share on both
(less ``tolerance``); the figures and the decision are appended to
``<state_dir>/learn/guard.jsonl`` and shown by ``dellm learn status``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..coordinator.extract import extract_answer, fold
from ..coordinator.types import Operation
from .adapters import learn_dir
from .records import ConsensusRecord

GUARD_LOG = "guard.jsonl"
Generate = Callable[[Sequence[str], bool], list[str]]  # (questions, with the adapter) -> replies


@dataclass(frozen=True)
class SanityItem:
    question: str
    answers: tuple[str, ...]


def sanity_set() -> list[SanityItem]:
    """The fixed sanity set shipped in the package (``dellm_p2p/learn/sanity.jsonl``)."""
    text = resources.files(__package__).joinpath("sanity.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [SanityItem(row["question"], tuple(row["answers"])) for row in rows]


def _contains(reply: str, answer: str) -> bool:
    needle = fold(answer)
    return bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}", fold(reply)) is not None


def record_correct(reply: str, record: ConsensusRecord) -> bool:
    """Whether ``reply`` commits to the record's voted answer (see the module docstring)."""
    try:
        operation = Operation(record.kind)
    except ValueError:
        operation = Operation.GENERAL
    key, _ = extract_answer(reply, operation, record.prompt)
    if key is not None and key == record.key:
        return True
    return operation is not Operation.MATH and _contains(reply, record.answer)


def sanity_correct(reply: str, item: SanityItem) -> bool:
    return any(_contains(reply, answer) for answer in item.answers)


@dataclass
class GuardResult:
    """Scores of base and adapter and the decision.

    Attributes:
        adapter_id: the adapter judged.
        heldout: held-back records scored; base_heldout / adapter_heldout: share right, in [0, 1].
        sanity: sanity questions; base_sanity / adapter_sanity: share right, in [0, 1].
        adopt: the adapter is not worse on either set (within ``tolerance``).
        reason: one line saying why.
        seconds: the guard's wall time [s]; ts: when it decided [s since the epoch].
        source: where the adapter came from (``trained`` or the peer URL it was fetched from).
    """

    adapter_id: str
    heldout: int
    base_heldout: float
    adapter_heldout: float
    sanity: int
    base_sanity: float
    adapter_sanity: float
    adopt: bool
    reason: str
    seconds: float = 0.0
    ts: float = field(default_factory=time.time)
    source: str = "trained"


def decide(
    base_h: float, adapter_h: float, base_s: float, adapter_s: float, tolerance: float = 0.0
) -> tuple[bool, str]:
    """Adopt when the adapter is not worse than the base on held-back records and on the sanity set."""
    worse = []
    if adapter_h < base_h - tolerance:
        worse.append(f"held-back records {adapter_h:.1%} < base {base_h:.1%}")
    if adapter_s < base_s - tolerance:
        worse.append(f"sanity set {adapter_s:.1%} < base {base_s:.1%}")
    if worse:
        return False, "refused: worse on " + "; ".join(worse)
    return True, f"adopted: held-back {adapter_h:.1%} (base {base_h:.1%}), sanity {adapter_s:.1%} (base {base_s:.1%})"


def judge(
    adapter_id: str,
    heldout: Sequence[ConsensusRecord],
    generate: Generate,
    *,
    tolerance: float = 0.0,
    source: str = "trained",
) -> GuardResult:
    """Score base and adapter with ``generate`` and decide (see the module docstring)."""
    started = time.perf_counter()
    sanity = sanity_set()
    questions = [r.prompt for r in heldout] + [s.question for s in sanity]
    scores = {}
    for with_adapter in (False, True):
        replies = generate(questions, with_adapter)
        held = [record_correct(rep, r) for rep, r in zip(replies, heldout, strict=False)]
        sane = [sanity_correct(rep, s) for rep, s in zip(replies[len(heldout) :], sanity, strict=False)]
        scores[with_adapter] = (sum(held) / max(1, len(heldout)), sum(sane) / max(1, len(sanity)))
    (base_h, base_s), (ad_h, ad_s) = scores[False], scores[True]
    adopt, reason = decide(base_h, ad_h, base_s, ad_s, tolerance)
    return GuardResult(
        adapter_id, len(heldout), round(base_h, 4), round(ad_h, 4), len(sanity), round(base_s, 4), round(ad_s, 4),
        adopt, reason, round(time.perf_counter() - started, 2), source=source,
    )  # fmt: skip


def transformers_generate(base_dir: Path, adapter_dir: Path, *, threads: int = 1, max_tokens: int = 48) -> Generate:
    """A :data:`Generate` over the base model with ``peft``'s adapter (switched off for the base), greedy, batched."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, threads))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    model.eval()

    def generate(questions: Sequence[str], with_adapter: bool) -> list[str]:
        out: list[str] = []
        for start in range(0, len(questions), 16):
            chats = [[{"role": "user", "content": q}] for q in questions[start : start + 16]]
            prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                if with_adapter:
                    ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
                else:
                    with model.disable_adapter():
                        ids = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    return generate


def log_result(state_dir: Path, result: GuardResult) -> None:
    """Append ``result`` to ``<state_dir>/learn/guard.jsonl``."""
    path = learn_dir(state_dir) / GUARD_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(result)) + "\n")


def guard_log(state_dir: Path) -> list[GuardResult]:
    """Every guard decision of a state directory, oldest first."""
    path = learn_dir(state_dir) / GUARD_LOG
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(GuardResult(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out
