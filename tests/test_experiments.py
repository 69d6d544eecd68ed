"""The quality experiment (experiments/quality) runs end to end on a tiny slice, so that it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "topic_train.jsonl").exists(), reason="needs ../shared/data")
def test_quality_experiment_smoke(tmp_path):
    pytest.importorskip("sklearn")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SHARED_DATA": str(SHARED_DATA)}
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "quality" / "run.py"), "--smoke", "--out",
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    expected = {"tfidf_logreg", "frozen_minilm_logreg", "multitask", "single_topic", "single_sentiment"}
    expected |= {f"limited_{method}_{fraction}" for method in ("single", "joint", "sequential")
                 for fraction in ("0.01", "0.05", "0.2", "1.0")}
    assert expected <= set(results["runs"])
    for name in ("multitask", "limited_joint_0.01"):
        for task in ("topic", "sentiment"):
            scores = results["runs"][name]["metrics"][task]
            assert 0.0 <= scores["accuracy"] <= 1.0 and set(scores) >= {"macro_f1", "macro_recall", "per_class_f1"}
    report = (tmp_path / "results.md").read_text()
    assert "| **multi-task model" in report and "sequential" in report
    assert (tmp_path / "limited_data.png").stat().st_size > 1000
    # The sequential runs train only the sentiment head on top of the single-task topic model.
    options = json.loads((tmp_path / "runs" / "limited_sequential_0.05" / "options.json").read_text())
    assert options["freeze_encoder"] is True and options["model_name_or_path"].endswith("single_topic/model")
