"""``dellm learn`` end to end on a tiny Llama (fast): export, train, guard, status; bad input is one line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dellm_p2p.cli.main import main
from dellm_p2p.learn.adapters import learn_dir
from dellm_p2p.learn.records import RecordStore

from .test_learn_train import _records, tiny_model  # noqa: F401  (the tiny Llama fixture)


def test_export_train_guard_status(tiny_model, tmp_path):  # noqa: F811
    state = tmp_path / "node"
    RecordStore(learn_dir(state)).add(_records(12))
    runner = CliRunner()
    exported = runner.invoke(main, ["learn", "export", "--state-dir", str(state)])
    assert exported.exit_code == 0 and len(exported.stdout.splitlines()) == 12
    trained = runner.invoke(main, ["learn", "train", "--state-dir", str(state), "--model", str(tiny_model),
                                   "--max-steps", "2", "--rank", "4", "--json"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout)
    meta, guard = result["adapter"], result["guard"]
    assert meta["examples"] + meta["held_back"] == 12 and len(meta["loss_curve"]) == 2
    assert guard["adapter_id"] == meta["id"] and guard["sanity"] == 30 and guard["heldout"] == meta["held_back"]
    status = json.loads(runner.invoke(main, ["learn", "status", "--state-dir", str(state), "--json"]).stdout)
    assert status["records"] == 12 and [a["id"] for a in status["adapters"]] == [meta["id"]]
    assert status["guard"][-1]["adopt"] == guard["adopt"]
    assert (status["adopted"] or {}).get("id") == (meta["id"] if guard["adopt"] else None)


def test_too_few_records_and_bad_files_are_one_line_errors(tiny_model, tmp_path):  # noqa: F811
    runner = CliRunner()
    empty = runner.invoke(main, ["learn", "train", "--state-dir", str(tmp_path), "--model", str(tiny_model)])
    assert empty.exit_code == 1 and "at least 4" in empty.output and "Traceback" not in empty.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    wrong = runner.invoke(main, ["learn", "train", "--state-dir", str(tmp_path), "--records", str(bad)])
    assert wrong.exit_code == 2 and "not a JSONL of consensus records" in wrong.output
    missing = runner.invoke(main, ["learn", "guard", "--state-dir", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no adapter" in missing.output


def test_bench_learn_never_trains_on_what_it_scores(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_learn.py"
    spec = importlib.util.spec_from_file_location("bench_learn", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [
        {"context": f"\n\nQ: What is {a} plus {b}?\n\nA:", "completion": f" {a + b}"} for a, b in [(98, 45), (3, 4)]
    ]
    (tmp_path / "two_digit_addition.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evalset = bench.eval_addition(tmp_path, 10)
    assert evalset == [("What is 98 plus 45?", "143"), ("What is 3 plus 4?", "7")]
    questions = bench.training_questions(500, bench.pairs(evalset))
    assert len(set(questions)) == 500 and questions == bench.training_questions(500, bench.pairs(evalset))
    for a, b in [(98, 45), (3, 4)]:
        assert not {f"What is {x} {op} {y}?" for x, y in [(a, b), (b, a)] for op in ("plus", "minus")} & set(questions)
