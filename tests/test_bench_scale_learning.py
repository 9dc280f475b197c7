"""scripts/scale/learning.py (bench_scale's learning phase): the SIMULATION's accuracies, its figures, the replay."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"


def _load():
    spec = importlib.util.spec_from_file_location("dellm_bench_scale_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


b = _load()  # puts scripts/ on sys.path, where its parts live
learning = importlib.import_module("scale.learning")


def test_hidden_accuracies_two_levels_or_spread_per_class():
    two = learning.hidden_accuracies(100, 0.1, 0.9, 0.4, seed=17)
    assert sorted(set(two.values())) == [0.4, 0.9] and sum(a == 0.9 for a in two.values()) == 10
    spread = learning.hidden_accuracies(100, 0.1, 0.9, 0.4, seed=17, spread=((0.85, 0.95), (0.3, 0.6)))
    good = learning.accurate_nodes(spread, 0.1)
    assert good == {i for i, a in two.items() if a == 0.9}, "the same nodes are the accurate ones"
    assert all(0.85 <= spread[i] <= 0.95 for i in good)
    assert all(0.3 <= a <= 0.6 for i, a in spread.items() if i not in good)
    assert len(set(spread.values())) == 100, "no ties: Spearman can reach 1"
    args = b.parse_args(["--sizes", "10", "--accuracy-spread", "--good-range", "0.7,0.8"])
    assert args.good_range == (0.7, 0.8) and args.other_range == (0.3, 0.6)
    with pytest.raises(SystemExit):
        b.parse_args(["--good-range", "0.9,0.8"])


def test_spearman_bound_grows_with_the_answers_per_peer():
    accuracy = list(learning.hidden_accuracies(100, 0.1, 0.9, 0.4, seed=3, spread=((0.85, 0.95), (0.3, 0.6))).values())
    few, many = (learning.spearman_bound(accuracy, [m] * 100, draws=30) for m in (9, 300))
    assert 0.4 < few < 0.75 < 0.9 < many < 1.0, (few, many)
    assert learning.spearman_bound([0.5], [10]) is None


def test_route_level_replay_is_seeded_and_learns_with_the_default_rule():
    args = b.parse_args(["--sizes", "100", "--learn-questions", "600"])
    first, again = (learning.simulate_routing(100, args, "adaptive", 17) for _ in range(2))
    assert first == again, "seeded: the same figures"
    assert first["distinct_peers_used"] == 100
    assert first["good_share_last"] > 0.5 and first["accuracy_last"] >= first["accuracy_first"] + 0.1
    old = learning.simulate_routing(100, args, "dellm", 17)
    assert old["distinct_peers_used"] < 10 and old["good_share_last"] < first["good_share_last"]


def test_stragglers_rewarded_within_the_grace_give_more_evidence():
    runs = {}
    for grace in ("0", "1"):
        args = b.parse_args(["--sizes", "50", "--learn-questions", "300", "--straggler-grace", grace])
        runs[grace] = [learning.simulate_routing(50, args, "adaptive", 17 + s) for s in range(3)]
    rewards = {g: statistics.fmean(r["rewards_per_peer_median"] for r in rs) for g, rs in runs.items()}
    assert rewards["1"] > rewards["0"], rewards


def test_noisy_rtt_estimates_need_the_wide_rtt_scale():
    # Estimates spread by event-loop lag, as the live coordinator measured them: the first issue-17 rule
    # (100 ms scale, fitness in the first slot) leaves peers untried; the default tries them all.
    args = b.parse_args(["--sizes", "100", "--learn-questions", "600", "--sim-rtt-ms", "0.2,150"])
    v1, now = (learning.simulate_routing(100, args, policy, 17) for policy in ("adaptive-v1", "adaptive"))
    assert v1["distinct_peers_used"] < 60 and now["distinct_peers_used"] == 100
    assert now["good_share_last"] > 0.5


def test_learning_diagnosis_per_class():
    questions = [
        {
            "error": None, "requests": {"g": 1, "r1": 1, "r2": 1}, "first": "g", "rewards": {"g": 0.07, "r1": -0.05},
            "arrivals": [("g", 100.0, 5.0), ("r1", 110.0, 6.0)], "stragglers": 1, "chunk_ms": 111.0,
            "latency_ms": 112.0,
        }
    ]  # fmt: skip
    d = learning.learning_diagnosis(questions, {"g"}, {"g": 0.9, "r1": 0.4, "r2": 0.4}, {"g": 1.0})
    assert d["accurate"]["first_slot"] == 1.0 and d["accurate"]["agree_rate"] == 1.0
    assert d["rest"]["rewarded_per_request"] == 0.5 and d["rest"]["agree_rate"] == 0.0
    assert d["rest"]["arrival_rank"] == 1.0 and d["accurate"]["rtt_ms_mean"] == 1.0
    assert d["stragglers_per_question"] == 1 and d["latency_ms"]["question"] == [112.0, 112.0]
