"""The recipe search (`train --hp_search N`) on the tiny random encoder and a few rows written to tmp_path."""

from __future__ import annotations

import json
import sys

import pytest

from sentence_multitask import SentenceMultiTaskModel, training
from sentence_multitask.tuning import TRIALS_FILE, command_line, require_optuna

try:
    from .test_distillation import run_args, write_rows
except ImportError:  # tests/ collected as a plain directory
    from test_distillation import run_args, write_rows


def test_the_search_runs_its_trials_records_them_and_trains_with_the_best(tmp_path, tiny_encoder):
    pytest.importorskip("optuna")
    files = {"topic": write_rows(tmp_path / "topic.jsonl", 16, 1, ("topic",)),
             "sentiment": write_rows(tmp_path / "sentiment.jsonl", 16, 2, ("sentiment",))}
    validation = write_rows(tmp_path / "validation.jsonl", 12, 3)
    out = tmp_path / "model"
    metrics = training.main(run_args(tiny_encoder, out, files, "--validation_files", validation, "--max_steps", "2",
                                     "--hp_search", "2", "--seed", "3"))

    record = json.loads((out / TRIALS_FILE).read_text())
    assert record["objective"] == "eval_average_macro_f1" and record["direction"] == "maximize"
    assert [trial["number"] for trial in record["trials"]] == [0, 1]
    for trial in record["trials"]:
        assert trial["state"] == "COMPLETE" and 0 <= trial["objective"] <= 1
        assert {"learning_rate", "head_learning_rate", "task_sampling", "task_weight_topic",
                "task_weight_sentiment"} <= set(trial["params"])
    best = record["best"]
    assert best["objective"] == max(trial["objective"] for trial in record["trials"])
    assert best["options"] == command_line(best["params"]) and "--task_weights" in best["options"]

    # The final model is trained with the best trial's options.
    model = SentenceMultiTaskModel.from_pretrained(out)
    assert model.config.task_weight("topic") == pytest.approx(best["params"]["task_weight_topic"])
    assert "best of 2 Optuna trials" in (out / "README.md").read_text()
    assert "eval_average_macro_f1" in metrics
    assert not list(out.glob("run-*"))  # trials keep no checkpoints


def test_a_missing_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'sentence-multitask\[tune\]'"):
        require_optuna()


def test_the_search_needs_validation_data(tmp_path, tiny_encoder):
    pytest.importorskip("optuna")
    files = {"topic": write_rows(tmp_path / "topic.jsonl", 8, 1, ("topic",)),
             "sentiment": write_rows(tmp_path / "sentiment.jsonl", 8, 2, ("sentiment",))}
    with pytest.raises(ValueError, match="--hp_search scores each trial on validation data"):
        training.main(run_args(tiny_encoder, tmp_path / "model", files, "--hp_search", "2"))


def test_a_trial_can_choose_learned_task_weights(tmp_path, tiny_encoder, monkeypatch):
    """The Trainer sets a trial's options after it is built: the learned weights (--loss_balancing uncertainty) are
    made when training starts, so that each trial that draws them trains with them, and only those."""
    pytest.importorskip("optuna")
    from sentence_multitask import trainer

    made = []
    original = trainer.UncertaintyWeighting.__init__

    def spy(self, tasks):
        original(self, tasks)
        made.append(self)

    monkeypatch.setattr(trainer.UncertaintyWeighting, "__init__", spy)
    files = {"topic": write_rows(tmp_path / "topic.jsonl", 16, 1, ("topic",)),
             "sentiment": write_rows(tmp_path / "sentiment.jsonl", 16, 2, ("sentiment",))}
    validation = write_rows(tmp_path / "validation.jsonl", 12, 3)
    out = tmp_path / "model"
    training.main(run_args(tiny_encoder, out, files, "--validation_files", validation, "--max_steps", "2",
                           "--hp_search", "3", "--seed", "0"))
    record = json.loads((out / TRIALS_FILE).read_text())
    drawn = [trial["params"]["loss_balancing"] for trial in record["trials"]]
    assert set(drawn) == {"static", "uncertainty"}, drawn  # this seed draws both
    final = record["best"]["params"]["loss_balancing"] == "uncertainty"
    assert len(made) == drawn.count("uncertainty") + final
