"""scripts/calibrate.py (issue 24): the reliability table and the low-agreement warning's precision and recall."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "calibrate.py"
spec = importlib.util.spec_from_file_location("dellm_calibrate_script", SCRIPT)
calibrate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibrate)

# Agreement 0.2: 1 right of 3; 0.6: 1 of 2; 1.0: 3 of 3.
DATA = [(0.2, True), (0.2, False), (0.2, False), (0.6, True), (0.6, False), (1.0, True), (1.0, True), (1.0, True)]


def test_reliability_counts_right_answers_per_agreement():
    assert calibrate.reliability(DATA) == [(0.2, 3, 1), (0.6, 2, 1), (1.0, 3, 3)]


def test_warning_precision_and_recall():
    below_half = calibrate.warning_scores(DATA, 0.5)  # flags the three at 0.2: two of them wrong, of 3 wrong
    assert below_half["flagged"] == 3 and below_half["hits"] == 2 and below_half["wrong"] == 3
    assert below_half["precision"] == 2 / 3 and below_half["recall"] == 2 / 3
    below_all = calibrate.warning_scores(DATA, 1.0)  # every non-unanimous answer: all wrong ones caught
    assert below_all["flagged"] == 5 and below_all["recall"] == 1.0
    assert calibrate.warning_scores(DATA, 0.1)["precision"] is None


def test_report_reads_eval_results(tmp_path, capsys):
    records = [{"methods": {"swarm/k5/majority": {"agreement": a, "correct": c}}} for a, c in DATA]
    path = tmp_path / "eval-x.json"
    path.write_text(json.dumps({"dataset": "capitals", "records": records}))
    assert calibrate.main([str(path), "--method", "swarm/k5/majority"]) == 0
    out = capsys.readouterr().out
    assert "capitals, swarm/k5/majority: 8 questions, 5 right" in out
    assert "| 20 % | 3 | 1 | 33 % |" in out
