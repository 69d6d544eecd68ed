"""The quality experiment (experiments/quality) runs end to end on a tiny slice, so that it cannot rot: every run of
the plan, with the tiny random encoder, in this process (`--in_process`; each run is otherwise a process of its own).
"""

import importlib.util
import json

import pytest

from .conftest import REPO, SHARED_DATA


@pytest.mark.skipif(not (SHARED_DATA / "topic_train.jsonl").exists(), reason="needs ../shared/data")
def test_quality_experiment_smoke(tmp_path, tiny_encoder, monkeypatch):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("quality_run", REPO / "experiments" / "quality" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    monkeypatch.setattr(run, "DATA", SHARED_DATA)
    monkeypatch.syspath_prepend(str(run.HERE))  # for its sibling report.py
    run.main(["--smoke", "--encoder", tiny_encoder, "--in_process", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    expected = {"tfidf_logreg", "frozen_minilm_logreg", "multitask", "single_topic", "single_sentiment",
                "multitask_distilled"}
    expected |= {f"limited_{method}_{fraction}" for method in ("single", "joint", "sequential")
                 for fraction in ("0.01", "1.0")}  # the smoke run's fractions
    expected |= {f"limited_{method}_0.01"
                 for method in ("distilled", "upsampled", "sequential_top", "self_trained", "emotions")}
    expected |= {"search_single_topic", "search_single_sentiment", "search_multitask", "tuned_single_topic",
                 "tuned_single_sentiment", "tuned_multitask", "tuned_multitask_uncertainty", "tuned_multitask_annealed",
                 "single_topic_seed7", "single_sentiment_seed7", "tuned_multitask_uncertainty_seed7",
                 "single_sentiment_weighted", "tuned_multitask_uncertainty_weighted", "topic_epochs4",
                 "topic_label_smoothing", "topic_lr5e-5", "single_topic_seed13", "single_sentiment_seed13",
                 "ensemble_topic", "ensemble_sentiment", "tuned_multitask_uncertainty_emotions",
                 "tuned_multitask_uncertainty_emotions_seed7", "tuned_multitask_uncertainty_emotions_seed13",
                 "limited_single_0.01_seed7", "limited_emotions_0.01_seed7", "limited_single_0.01_seed13",
                 "limited_emotions_0.01_seed13", "limited_self_trained_0.01_seed7", "limited_self_trained_0.01_seed13",
                 "limited_self_trained_emotions_0.01_seed7", "limited_self_trained_emotions_0.01_seed13",
                 "warm_started", "single_sentiment_continued",
                 "limited_self_trained_emotions_0.01", "limited_single_matched_0.01",
                 "limited_single_matched_0.01_seed7", "tuned_multitask_uncertainty_constant",
                 "tuned_multitask_uncertainty_constant_seed13", "tuned_multitask_uncertainty_constant_w0.75_seed7",
                 "tuned_multitask_uncertainty_all_rows", "tuned_multitask_uncertainty_all_rows_seed2"}
    assert expected <= set(results["runs"])
    for name in ("multitask", "limited_joint_0.01"):
        for task in ("topic", "sentiment"):
            scores = results["runs"][name]["metrics"][task]
            assert 0.0 <= scores["accuracy"] <= 1.0 and set(scores) >= {"macro_f1", "macro_recall", "per_class_f1"}
    report = (tmp_path / "results.md").read_text()
    assert "| **the same with learned task weights" in report and "sequential" in report
    assert "| 7 | " in report and "| mean | " in report  # the seeds table
    assert json.loads((tmp_path / "runs" / "tuned_multitask_uncertainty_seed7" / "options.json").read_text())["seed"] == 7
    # The class-weighted multi-task run distils from the class-weighted single-task sentiment model.
    weighted = json.loads((tmp_path / "runs" / "tuned_multitask_uncertainty_weighted" / "options.json").read_text())
    assert weighted["class_weights"] == ["sentiment=auto"]
    assert weighted["teachers"] == ["topic=runs/single_topic/model", "sentiment=runs/single_sentiment_weighted/model"]
    assert results["runs"]["ensemble_sentiment"]["members"] == ["single_sentiment", "single_sentiment_seed7",
                                                                "single_sentiment_seed13"]
    assert "| mean probabilities of three single-task topic models" in report
    assert (tmp_path / "limited_data.png").stat().st_size > 1000
    # The sequential runs train only the sentiment head on top of the single-task topic model.
    options = json.loads((tmp_path / "runs" / "limited_sequential_0.01" / "options.json").read_text())
    assert options["freeze_encoder"] is True and options["model"].endswith("single_topic/model")
    assert "encoder" not in options  # the topic model's own encoder
    top = results["runs"]["limited_sequential_top_0.01"]
    assert set(top["metrics"]) == {"topic", "sentiment"}  # the topic head measured after the top layers trained
    # Self-training adds the teacher's pseudo-labels of the rest of the sentiment texts to the 1 % subsample.
    pseudo = results["runs"]["limited_self_trained_0.01"]["pseudo_labels"]
    assert 0 < pseudo["rows"] <= pseudo["unlabelled_texts"] and sum(pseudo["per_label"].values()) == pseudo["rows"]
    options = json.loads((tmp_path / "runs" / "limited_self_trained_0.01" / "options.json").read_text())
    assert options["train_files"][1] == "sentiment=data/sentiment_self_trained_0.01.jsonl"
    options = json.loads((tmp_path / "runs" / "limited_self_trained_0.01_seed7" / "options.json").read_text())
    assert options["train_files"][1] == "sentiment=data/sentiment_self_trained_0.01_seed7.jsonl"
    assert options["seed"] == 7
    options = json.loads((tmp_path / "runs" / "limited_self_trained_emotions_0.01_seed7" / "options.json").read_text())
    assert options["train_files"][1:] == ["sentiment=data/sentiment_self_trained_0.01_seed7.jsonl",
                                          "emotions=data/goemotions_train.jsonl"]
    # The tuned multi-task run distils from the main table's single-task runs, with the search's best options.
    tuned = json.loads((tmp_path / "runs" / "tuned_multitask" / "options.json").read_text())
    assert tuned["teachers"] == ["topic=runs/single_topic/model", "sentiment=runs/single_sentiment/model"]
    search = results["runs"]["search_multitask"]["search"]
    assert len(search["trials"]) == 2 and tuned["learning_rate"] == search["best"]["params"]["learning_rate"]
    assert json.loads((tmp_path / "runs" / "multitask" / "options.json").read_text())["encoder"] == tiny_encoder
    # GoEmotions joins the headline recipe as a third task; its own figures are kept beside the others.
    related = tmp_path / "runs" / "tuned_multitask_uncertainty_emotions_seed7" / "options.json"
    related = json.loads(related.read_text())
    assert related["train_files"][2] == "emotions=data/goemotions_train.jsonl" and related["seed"] == 7
    assert related["teachers"] == tuned["teachers"] and related["loss_balancing"] == "uncertainty"
    assert len(related["labels"][2].split(",")) == 28  # every emotion of the whole file, not only the slice's
    assert 0.0 <= results["runs"]["limited_emotions_0.01"]["related"]["emotions"]["macro_f1"] <= 1.0
    assert "## GoEmotions as a third task" in report and "| 1% | mean | " in report  # limited data, three seeds
    # The warm-started multi-task model starts from, and distils from, the single-task sentiment model.
    warm = json.loads((tmp_path / "runs" / "warm_started" / "options.json").read_text())
    assert warm["model"] == "runs/single_sentiment/model" and "encoder" not in warm
    assert warm["teachers"] == ["topic=runs/single_topic/model", "sentiment=runs/single_sentiment/model"]
    assert set(results["runs"]["warm_started"]["metrics"]) == {"topic", "sentiment"}
    continued = json.loads((tmp_path / "runs" / "single_sentiment_continued" / "options.json").read_text())
    assert continued["model"] == "runs/single_sentiment/model" and continued["tasks"] == ["sentiment"]
    assert "| multi-task model started from the single-task sentiment model" in report
    constant = tmp_path / "runs" / "tuned_multitask_uncertainty_constant_seed13" / "options.json"
    constant = json.loads(constant.read_text())
    assert constant["teacher_annealing"] == "constant" and constant["distillation_weight"] == 0.5
    assert constant["teachers"] == tuned["teachers"] and constant["seed"] == 13
    assert "## Constant teacher weight 0.5" in report and "## Constant teacher weight 0.75" in report
    sentiment_only = tmp_path / "runs" / "tuned_multitask_uncertainty_constant_sentiment_seed7" / "options.json"
    sentiment_only = json.loads(sentiment_only.read_text())
    assert sentiment_only["teacher_annealing"] == ["linear", "sentiment=constant"]
    assert sentiment_only["distillation_weight"] == 0.75 and sentiment_only["teachers"] == tuned["teachers"]
    assert "## Teacher weight 0.75 for sentiment only (topic annealed)" in report
    static = json.loads((tmp_path / "runs" / "tuned_multitask_constant_sentiment_seed13" / "options.json").read_text())
    assert static == {**sentiment_only, "loss_balancing": "static", "seed": 13,
                      "output_dir": "runs/tuned_multitask_constant_sentiment_seed13/model"}
    control = json.loads((tmp_path / "runs" / "tuned_multitask_seed7" / "options.json").read_text())
    assert control["loss_balancing"] == "static" and "teacher_annealing" not in control and control["seed"] == 7
    assert "## The searched recipe with static task weights, both teachers annealed" in report
    prior = tmp_path / "runs" / "tuned_multitask_uncertainty_constant_sentiment_prior_seed13" / "options.json"
    prior = json.loads(prior.read_text())
    weights = dict(item.split("=") for item in prior.pop("task_weights"))
    searched = dict(item.split("=") for item in sentiment_only.get("task_weights", []))
    assert float(weights["sentiment"]) < float(searched.get("sentiment", 1.0))
    assert weights.get("topic") == searched.get("topic")
    assert prior == {**{key: value for key, value in sentiment_only.items() if key != "task_weights"}, "seed": 13,
                     "output_dir": "runs/tuned_multitask_uncertainty_constant_sentiment_prior_seed13/model"}
    assert "## Teacher weight 0.75 for sentiment only, its learned-weight prior scaled down" in report
    assert {"single_topic_seed2", "single_sentiment_seed2", "tuned_multitask_uncertainty_seed2"} <= set(results["runs"])
    extra = json.loads((tmp_path / "runs" / "tuned_multitask_uncertainty_constant_sentiment_prior_seed2" /
                        "options.json").read_text())
    assert extra == {**prior, "task_weights": [f"{task}={weight}" for task, weight in weights.items()], "seed": 2,
                     "output_dir": "runs/tuned_multitask_uncertainty_constant_sentiment_prior_seed2/model"}
    # Teachers on every row: the headline run's options (seed 1 here) with `teacher_rows` only added.
    headline, all_rows = (json.loads((tmp_path / "runs" / name / "options.json").read_text())
                          for name in ("tuned_multitask_uncertainty_seed1", "tuned_multitask_uncertainty_all_rows_seed1"))
    assert all_rows == {**headline, "teacher_rows": "all",
                        "output_dir": "runs/tuned_multitask_uncertainty_all_rows_seed1/model"}
    assert "## Teachers on every training row" in report
    # Cross-fitted teachers: per task, two single-task models, each trained without one fold, stand for the two
    # full-data teachers of the headline run (seed 7 here); nothing else changes.
    cross_fit = json.loads((tmp_path / "runs" / "tuned_multitask_uncertainty_cross_fit_seed7" / "options.json")
                           .read_text())
    headline = json.loads((tmp_path / "runs" / "tuned_multitask_uncertainty_seed7" / "options.json").read_text())
    folds = [f"{task}=runs/single_{task}_fold{fold}/model" for task in ("topic", "sentiment") for fold in (0, 1)]
    assert cross_fit == {**headline, "teachers": folds, "teacher_folds": 2,
                         "output_dir": "runs/tuned_multitask_uncertainty_cross_fit_seed7/model"}
    teacher = json.loads((tmp_path / "runs" / "single_sentiment_fold1" / "options.json").read_text())
    assert teacher["holdout_fold"] == "1/2" and teacher["tasks"] == ["sentiment"] and teacher["seed"] == 42
    assert "## Cross-fitted teachers" in report
    control = json.loads((tmp_path / "runs" / "single_topic_cross_fit" / "options.json").read_text())
    assert control["teachers"] == folds[:2] and control["tasks"] == ["topic"] and control["teacher_folds"] == 2
    assert control["distillation_temperature"] == cross_fit["distillation_temperature"]
