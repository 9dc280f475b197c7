"""scripts/eval.py: its scoring and summary functions, and one tiny real run against a vLLM node."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dellm_p2p.client import PeerError
from dellm_p2p.coordinator.pipeline import AskOptions

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "eval.py"


def _load():
    spec = importlib.util.spec_from_file_location("dellm_eval_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ev = _load()


# --- scoring, as ../shared/data/README.md says


@pytest.mark.parametrize(
    ("reply", "gold", "right"),
    [
        ("The capital of France is Paris.", "Paris", True),
        ("PARIS", "Paris", True),
        ("The capital of Brazil is Brasilia.", "Brasília", True),  # accents ignored
        ("Yaounde is the capital.", "Yaoundé", True),
        ("It is São Tomé.", "Sao Tome", True),
        ("N’Djamena", "N'Djamena", True),  # typographic apostrophe
        ("The capital is   Port-au-Prince.", "Port-au-Prince", True),
        ("The capital of France is Lyon.", "Paris", False),
        ("", "Paris", False),
        ("anything", "", False),
    ],
)
def test_capitals_are_case_and_accent_insensitive_containment(reply, gold, right):
    assert ev.score_capital(reply, gold) is right
    assert ev.score("capitals", reply, gold) is right


@pytest.mark.parametrize(
    ("reply", "gold", "right"),
    [
        ("98 plus 45 is 143.", "143", True),
        ("Let me add: 98 + 45 = 143\nAnswer: 143", "143", True),
        ("She makes $1,000.00 a day.\nAnswer: $1,000", "1000", True),
        ("Answer: 142", "143", False),
        ("I think 143 is wrong; the answer is 144.", "143", False),  # the final number counts
        ("no number here", "143", False),
        ("", "18", False),
    ],
)
def test_numbers_are_exact_match_on_the_final_number(reply, gold, right):
    assert ev.score_number(reply, gold) is right
    assert ev.score("gsm8k", reply, gold) is right
    assert ev.score("addition", reply, gold) is right


def test_rows_of_each_dataset_are_read():
    capital = ev.parse_row("capitals", {"question": "What is the capital of Chad?", "answer": "N'Djamena"})
    assert (capital.question, capital.gold) == ("What is the capital of Chad?", "N'Djamena")
    addition = ev.parse_row("addition", {"context": "\n\nQ: What is 98 plus 45?\n\nA:", "completion": " 143"})
    assert (addition.question, addition.gold) == ("What is 98 plus 45?", "143")
    gsm = ev.parse_row("gsm8k", {"question": " How much? ", "answer": "2 * 500 = <<2*500=1000>>1000\n#### 1,000"})
    assert (gsm.question, gsm.gold) == ("How much?", "1000")
    with pytest.raises(ValueError):
        ev.parse_row("gsm8k", {"question": "q", "answer": "no final number"})
    with pytest.raises(ValueError):
        ev.parse_row("trivia", {})


@pytest.mark.skipif(not (ev.DATA_DIR / "capitals.jsonl").exists(), reason="../shared/data is not beside the repo")
def test_the_shared_data_loads_with_a_limit():
    assert len(ev.load_items("capitals", ev.DATA_DIR)) == 194
    first = ev.load_items("gsm8k", ev.DATA_DIR, limit=2)
    assert [i.index for i in first] == [0, 1] and first[0].gold == "18"
    assert ev.load_items("addition", ev.DATA_DIR, limit=1)[0].gold == "143"


def test_key_matches_is_the_extractors_view():
    assert ev.key_matches("capitals", "paris", "Paris")
    assert ev.key_matches("capitals", "sao tome", "São Tomé")
    assert not ev.key_matches("capitals", "lyon", "Paris")
    assert not ev.key_matches("capitals", None, "Paris")
    assert ev.key_matches("gsm8k", "18", "18") and not ev.key_matches("gsm8k", "180", "18")


# --- statistics and the table


def test_interleave_is_round_robin_over_peers():
    assert ev.interleave([["a0", "a1", "a2"], ["b0", "b1"], ["c0", "c1"]]) == [
        "a0", "b0", "c0", "a1", "b1", "c1", "a2",
    ]  # fmt: skip
    assert ev.interleave([]) == []


def test_percentile_wilson_and_mcnemar():
    assert ev.percentile([], 95) is None
    assert ev.percentile([5.0], 95) == 5.0
    assert ev.percentile(list(range(1, 101)), 95) == 95
    assert ev.percentile(list(range(1, 21)), 95) == 19
    low, high = ev.wilson(50, 100)
    assert 0.40 < low < 0.41 and 0.59 < high < 0.60
    assert ev.wilson(0, 0) == (0.0, 0.0)
    assert ev.wilson(10, 10)[1] == 1.0
    assert ev.mcnemar_p(0, 0) == 1.0
    assert ev.mcnemar_p(5, 5) == 1.0
    assert ev.mcnemar_p(10, 0) == pytest.approx(2 / 2**10)


def _record(methods):
    return {"index": 0, "gold": "Paris", "operation": "LOOKUP", "chunks_if_decomposed": 1, "methods": methods}


def test_summary_counts_missing_and_failed_results_as_wrong():
    ids = ev.method_ids([1, 3], ["majority"], [3, 7])
    assert ids == [
        *ev.BASELINES, "swarm/k1/majority", "pass@1", "swarm/k3/majority", "pass@3",
        "ask/k3", "askpass/k3", "ask/k7", "askpass/k7",
    ]  # fmt: skip
    records = [
        _record(
            {
                "greedy": {"correct": True, "latency_ms": 100.0},
                "swarm/k3/majority": {"correct": True, "agreement": 1.0, "unanimous": True, "latency_ms": 300.0},
            }
        ),
        _record(
            {
                "greedy": {"correct": False, "error": "timeout: no answer"},
                "swarm/k3/majority": {"correct": False, "agreement": 2 / 3, "unanimous": False, "latency_ms": 500.0},
            }
        ),
    ]
    rows = {r["method"]: r for r in ev.summarize(records, ids)}
    assert rows["greedy"]["correct"] == 1 and rows["greedy"]["failed"] == 1
    assert rows["greedy"]["mean_latency_ms"] == 100.0  # a failed request's time is not a latency
    swarm = rows["swarm/k3/majority"]
    assert swarm["accuracy"] == 0.5 and swarm["unanimous_rate"] == 0.5 and swarm["accuracy_when_unanimous"] == 1.0
    assert swarm["mean_agreement"] == pytest.approx(5 / 6)
    assert swarm["p95_latency_ms"] == 500.0
    assert rows["pass@1"]["failed"] == 2 and rows["pass@1"]["accuracy"] == 0.0  # no result at all
    table = ev.markdown_table(list(rows.values()), 0.7)
    assert table.splitlines()[0].startswith("| method | k | accuracy |")
    assert "| swarm majority, anchored | 3 | 50.0% (1/2) |" in table
    assert "| node greedy | 1 | 50.0% (1/2) |" in table
    assert "| +0 / −0, p=1 |" in table  # the swarm row against greedy
    assert rows["greedy"]["vs_greedy"] is None
    assert "| swarm majority, samples only | 3 |" in ev.markdown_table(list(rows.values()), 0.7, anchored=False)
    assert ev.best_swarm_row(list(rows.values()))["method"] == "swarm/k3/majority"
    cmp = ev.paired(records, "swarm/k3/majority", "greedy")
    assert (cmp["only_a_right"], cmp["only_b_right"]) == (0, 0)


def test_diagnostics_find_extraction_misses_and_lost_votes():
    candidates = [
        {"text": "Paris is the capital.", "key": "paris", "correct": True, "key_correct": True},
        {"text": "The capital of France, Paris.", "key": "capital of france", "correct": True, "key_correct": False},
        {"text": "Lyon.", "key": "lyon", "correct": False, "key_correct": False},
    ]
    record = _record({"pass@3": {"correct": True}, "swarm/k3/majority": {"correct": False, "answer": "lyon"}})
    record["candidates"] = candidates
    diag = ev.diagnostics("capitals", [record], [1, 3], ["majority"])
    assert diag["right_text_wrong_key"] == 1
    assert diag["right_text_wrong_key_examples"][0]["key"] == "capital of france"
    lost = diag["vote_lost_at_k3"]["majority"]
    assert lost["count"] == 1 and lost["examples"][0]["cause"].startswith("right samples split")


def test_fitness_change_is_the_mean_over_nodes_read_twice():
    before = {"u1": {"node_id": "a", "fitness": 0.5}, "u2": {"node_id": "b", "fitness": 0.5}, "u3": {"error": "x"}}
    after = {"u1": {"node_id": "a", "fitness": 0.6}, "u2": {"node_id": "b", "fitness": 0.45}, "u3": {"node_id": "c"}}
    change = ev.fitness_change(before, after)
    assert change["mean_change"] == pytest.approx(0.025)
    assert set(change["nodes"]) == {"u1", "u2"}


def test_arguments_and_their_defaults():
    args = ev.parse_args([])
    defaults = AskOptions()
    assert (args.dataset, args.limit, args.ks, args.temperature, args.top_p, args.max_tokens) == (
        "capitals",
        None,
        [1, 3, 5, 7],
        defaults.temperature,
        defaults.top_p,
        defaults.max_tokens,
    )
    assert args.strategies == ["majority", "weighted", "borda", "ranking", "judge"]
    assert (args.nodes, args.concurrency, args.peer, args.prompt) == (3, 4, [], "pipeline")
    assert (args.baseline_prompt, args.ask_ks, args.anchor) == ("plain", [defaults.redundancy, 7], True)
    assert ev.parse_args(["--ask-ks", "0", "--no-anchor"]).ask_ks == []
    assert args.json == REPO / "bench-results" / "eval-capitals.json"
    gsm = ev.parse_args(["--dataset", "gsm8k", "--ks", "3,1", "--strategies", "majority,judge", "--peer", "ws://x:1"])
    assert (gsm.max_tokens, gsm.ks, gsm.strategies, gsm.peer) == (256, [1, 3], ["majority", "judge"], ["ws://x:1"])
    with pytest.raises(SystemExit):
        ev.parse_args(["--strategies", "plurality"])
    with pytest.raises(SystemExit):
        ev.parse_args(["--ks", "0"])


async def test_retry_overloaded_waits_then_gives_up_on_other_errors():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise PeerError("overloaded", "busy")
        return "ok"

    assert await ev.retry_overloaded(flaky, 10, pause_s=0.01) == "ok" and len(calls) == 3

    async def broken():
        raise PeerError("engine_error", "boom")

    with pytest.raises(PeerError, match="engine_error"):
        await ev.retry_overloaded(broken, 10, pause_s=0.01)

    async def always_busy():
        raise PeerError("overloaded", "busy")

    with pytest.raises(PeerError, match="overloaded"):
        await ev.retry_overloaded(always_busy, 0.05, pause_s=0.01)


# --- one real run


@pytest.mark.slow
def test_eval_script_runs_on_a_tiny_input(vllm_node, tmp_path):
    out = tmp_path / "eval.json"
    command = [
        sys.executable, str(SCRIPT),
        "--limit", "3", "--ks", "1,3", "--strategies", "majority,weighted",
        "--peer", vllm_node.url, "--concurrency", "2", "--json", str(out), "--ask-ks", str(AskOptions().redundancy),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| method | k | accuracy |" in proc.stdout
    for label in ("node greedy", "swarm majority, anchored", "swarm weighted", "pass@k", "swarm.ask, default options"):
        assert f"| {label}" in proc.stdout, proc.stdout
    assert "mean fitness change of the peers" in proc.stdout
    result = json.loads(out.read_text())
    assert result["dataset"] == "capitals" and result["questions"] == 3 and result["limit"] == 3
    assert result["ks"] == [1, 3] and result["strategies"] == ["majority", "weighted"]
    assert result["model"] and result["temperature"] == AskOptions().temperature and result["date"]
    methods = {row["method"] for row in result["rows"]}
    assert {"greedy", "sample", "swarm/k3/weighted", "pass@3", f"ask/k{AskOptions().redundancy}"} <= methods
    for record in result["records"]:
        assert len(record["candidates"]) == 3, record.get("collect_failures")
        assert [c["greedy"] for c in record["candidates"]] == [True, False, False]  # the anchor first
        assert all(c["confidence"] is not None for c in record["candidates"]), "weighted needs real logprobs"
        assert not any(v.get("error") for v in record["methods"].values()), record["methods"]
    # Rewards follow a consensus only (an anchored vote rewards nobody), so how many depends on the samples:
    # the total must match the per-question records, and a question with a consensus must have rewarded.
    asks = [r["methods"][f"ask/k{AskOptions().redundancy}"] for r in result["records"]]
    assert result["fitness"]["rewards_issued"] == sum(a["rewards"] for a in asks)
    assert all(a["rewards"] > 0 for a in asks if a["anchored"] and not any(a["anchored"]))
    assert result["fitness"]["mean_change"] is not None


def test_a_mixed_swarm_gets_a_greedy_row_per_model_and_is_compared_with_the_best_one():
    args = ev.parse_args(["--models", "gemma3-270m,gemma3-270m,smollm2-135m"])
    assert args.models == ["gemma3-270m", "gemma3-270m", "smollm2-135m"]
    with pytest.raises(SystemExit):
        ev.parse_args(["--models", "gpt-5"])
    ids = ev.method_ids([1], ["majority"], [5], ["gemma-3-270m", "SmolLM2-135M-Instruct"])
    assert ids[:4] == ["greedy", "sample", "model/gemma-3-270m", "model/SmolLM2-135M-Instruct"]
    assert ev.method_label("model/gemma-3-270m", 0.7)[0].startswith("model greedy: gemma-3-270m")
    records = [
        {"methods": {"model/a": {"correct": a}, "model/b": {"correct": b}, "ask/k5": {"correct": s}}}
        for a, b, s in [(True, False, True), (True, True, True), (False, True, True), (True, False, False)]
    ]
    rows = ev.summarize(records, ["model/a", "model/b", "ask/k5"])
    assert ev.best_model_row(rows)["method"] == "model/a"  # 3 right against 2
    assert ev.best_model_row(ev.summarize(records, ["ask/k5"])) is None
    versus = ev.paired(records, "ask/k5", "model/a")
    assert (versus["only_a_right"], versus["only_b_right"]) == (1, 1)
