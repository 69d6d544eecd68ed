"""Task types: single-label, multi-label and regression heads side by side, from one training file to every output
(predict, predict_proba, pipeline, CLI, evaluate, ONNX, card), the checks of their data, and their metrics."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sentence_multitask import SentenceMultiTaskConfig, training
from sentence_multitask.arguments import DataArguments
from sentence_multitask.data import DataError, prepare_data
from sentence_multitask.metrics.task_scores import multi_label_scores, regression_scores, tune_thresholds

from .conftest import run_cli, run_python

TOPIC_WORDS = {"sports": ["match", "goal", "team"], "tech": ["laptop", "software", "chip"]}
EMOTION_WORDS = {"joy": "wonderful", "anger": "furious", "fear": "scary"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def mixed_rows(n: int, seed: int) -> list[dict]:
    """Rows with a topic (one of 2), emotions (any of 3) and a score; every fifth row lacks the emotions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(sorted(TOPIC_WORDS))
        emotions = sorted(rng.sample(sorted(EMOTION_WORDS), rng.randint(0, 2)))
        text = " ".join([rng.choice(TOPIC_WORDS[topic]), *(EMOTION_WORDS[e] for e in emotions), "today"])
        row = {"text": text, "topic": topic, "emotions": emotions, "score": round(10 + 2 * len(emotions) + rng.random(), 3)}
        if i % 5 == 4:
            del row["emotions"]
        rows.append(row)
    return rows


def tiny_args(encoder: str, output_dir, *extra: str) -> list[str]:
    return ["--encoder", encoder, "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", *extra]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed-data")
    write_jsonl(folder / "train.jsonl", mixed_rows(40, seed=1))
    write_jsonl(folder / "validation.jsonl", mixed_rows(24, seed=2))
    return folder


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory, mixed_data, tiny_encoder) -> Path:
    """A model trained a few steps on one file carrying a single-label, a multi-label and a regression task."""
    out = tmp_path_factory.mktemp("mixed") / "model"
    training.main(tiny_args(tiny_encoder, out, "--train_files", str(mixed_data / "train.jsonl"), "--validation_files",
                            str(mixed_data / "validation.jsonl"), "--tasks", "topic", "emotions", "score",
                            "--task_types", "score=regression", "--class_weights", "emotions=auto", "--max_steps", "4",
                            "--learning_rate", "1e-3"))
    return out


def test_one_file_trains_all_three_types_and_saves_types_stats_and_tuned_thresholds(mixed_model, mixed_data):
    config = json.loads((mixed_model / "config.json").read_text())
    assert config["task_types"] == {"emotions": "multi_label", "score": "regression"}
    assert config["tasks"] == {"topic": ["sports", "tech"], "emotions": ["anger", "fear", "joy"], "score": ["score"]}
    scores = [row["score"] for row in mixed_rows(40, seed=1)]
    assert config["target_stats"]["score"]["mean"][0] == pytest.approx(np.mean(scores))
    assert config["target_stats"]["score"]["std"][0] == pytest.approx(np.std(scores))
    assert len(config["thresholds"]["emotions"]) == 3 and all(0 < t < 1 for t in config["thresholds"]["emotions"])
    assert len(config["class_weights"]["emotions"]) == 3  # pos_weight from the data
    results = json.loads((mixed_model / "eval_results.json").read_text())
    for key in ("eval_topic_accuracy", "eval_emotions_micro_f1", "eval_emotions_subset_accuracy",
                "eval_emotions_f1_joy", "eval_score_mse", "eval_score_spearman"):
        assert key in results
    card = (mixed_model / "README.md").read_text()
    assert "`emotions` (multi-label" in card and "Thresholds:" in card and "tuned per label" in card
    assert "| regression task | MSE |" in card and "| label | F1 |" in card


def test_predict_outputs_follow_each_task_type(mixed_model):
    from sentence_multitask import SentenceMultiTaskModel

    model = SentenceMultiTaskModel.from_pretrained(mixed_model)
    texts = ["goal wonderful today", "chip furious scary today"]
    results = model.predict(texts)
    probabilities = model.predict_proba(texts)
    thresholds = model.config.task_thresholds("emotions")
    for i, result in enumerate(results):
        assert set(result["topic"]) == {"label", "score"}  # single-label output as before
        chosen = [label for label, p, t in zip(model.config.tasks["emotions"], probabilities["emotions"][i], thresholds)
                  if p >= t]
        assert result["emotions"]["labels"] == chosen
        assert set(result["emotions"]["scores"]) == set(chosen)
        assert result["score"] == {"value": pytest.approx(float(probabilities["score"][i, 0]))}
    assert torch.allclose(probabilities["topic"].sum(-1), torch.ones(2))
    assert ((probabilities["emotions"] >= 0) & (probabilities["emotions"] <= 1)).all()
    everything = model.predict(texts[0], return_all_scores=True)
    assert set(everything["emotions"]["scores"]) == {"anger", "fear", "joy"}
    assert model.predict([]) == [] and model.predict_proba([])["score"].shape == (0, 1)


def test_saved_model_serves_every_type_without_the_package(mixed_model):
    from sentence_multitask import SentenceMultiTaskModel

    code = (
        "import json\n"
        "from transformers import AutoModel, pipeline\n"
        f"path = {str(mixed_model)!r}\n"
        "model = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
        "texts = ['goal wonderful today', 'chip furious scary today']\n"
        "proba = {task: values.tolist() for task, values in model.predict_proba(texts).items()}\n"
        "pipe = pipeline(model=path, trust_remote_code=True)\n"
        "print('RESULT', json.dumps({'predict': model.predict(texts), 'proba': proba, 'pipeline': pipe(texts)}))\n"
    )
    result = run_python(code, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.split("RESULT", 1)[1])
    local = SentenceMultiTaskModel.from_pretrained(mixed_model)
    texts = ["goal wonderful today", "chip furious scary today"]
    expected = local.predict(texts)
    for got in (remote["predict"], remote["pipeline"]):
        for row, want in zip(got, expected):
            assert row["topic"]["label"] == want["topic"]["label"]
            assert row["emotions"]["labels"] == want["emotions"]["labels"]
            assert row["score"]["value"] == pytest.approx(want["score"]["value"], abs=1e-4)
    for task, values in local.predict_proba(texts).items():
        assert np.allclose(remote["proba"][task], values.numpy(), atol=1e-5)


def test_cli_predict_and_evaluate_respect_the_types(mixed_model, mixed_data, tmp_path, capsys):
    status, out, err = run_cli(["predict", "--model", str(mixed_model), "goal wonderful today"], capsys)
    assert status == 0, err
    row = json.loads(out.splitlines()[0])
    assert set(row) == {"text", "topic", "emotions", "score"} and "labels" in row["emotions"] and "value" in row["score"]
    report_file = tmp_path / "report.json"
    status, out, err = run_cli(["evaluate", "--model", str(mixed_model), "--eval_files", str(mixed_data / "validation.jsonl"),
                                "--output", str(report_file)], capsys)
    assert status == 0, err
    assert "multi-label: micro-F1" in out and "regression: MSE" in out
    report = json.loads(report_file.read_text())
    assert report["tasks"]["emotions"]["support"] == 24 - 24 // 5  # rows without emotions are left out
    assert report["tasks"]["score"]["task_type"] == "regression" and report["tasks"]["score"]["support"] == 24
    assert set(report["tasks"]["emotions"]["thresholds"]) == {"anger", "fear", "joy"}


def test_evaluate_splits_delimited_label_strings(mixed_model, tmp_path, capsys):
    rows = [{**row, "emotions": ";".join(row["emotions"])} for row in mixed_rows(24, seed=2) if "emotions" in row]
    data = write_jsonl(tmp_path / "delimited.jsonl", rows)
    status, out, err = run_cli(["evaluate", "--model", str(mixed_model), "--eval_files", str(data),
                                "--label_delimiter", "emotions=;"], capsys)
    assert status == 0, err
    delimited = json.loads(out.splitlines()[-1])["tasks"]["emotions"]
    status, out, err = run_cli(["evaluate", "--model", str(mixed_model), "--eval_files",
                                str(write_jsonl(tmp_path / "lists.jsonl", [r for r in mixed_rows(24, seed=2)
                                                                          if "emotions" in r]))], capsys)
    assert status == 0, err
    assert delimited == json.loads(out.splitlines()[-1])["tasks"]["emotions"]


def test_torchrun_trains_all_three_types_in_two_processes(mixed_data, tiny_encoder, tmp_path):
    out, logs = tmp_path / "ddp", tmp_path / "logs"
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs),
               "--redirects", "3", "-m", "sentence_multitask.cli", "train",
               *tiny_args(tiny_encoder, out, "--train_files", str(mixed_data / "train.jsonl"), "--validation_files",
                          str(mixed_data / "validation.jsonl"), "--tasks", "topic", "emotions", "score",
                          "--task_types", "score=regression", "--max_steps", "2", "--ddp_backend", "gloo")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    rank_logs = {path.parent.name: path.read_text(errors="replace") for path in logs.rglob("stderr.log")}
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(log[-3000:] for log in rank_logs.values())
    assert sorted(rank_logs) == ["0", "1"] and "on 2 process(es)" in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["task_types"] == {"emotions": "multi_label", "score": "regression"}
    metrics = json.loads((out / "eval_results.json").read_text())
    assert {"eval_topic_accuracy", "eval_emotions_macro_f1", "eval_score_mse"} <= set(metrics)


def test_onnx_graph_bakes_in_sigmoid_and_target_units(mixed_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.onnx import OnnxSentenceMultiTask, export_onnx

    model = SentenceMultiTaskModel.from_pretrained(mixed_model)
    export_onnx(model, tmp_path / "exported")
    fast = OnnxSentenceMultiTask.from_pretrained(tmp_path / "exported")
    outputs = {output.name for output in fast.session.get_outputs()}
    assert {"logits_topic", "probabilities_emotions", "values_score"} <= outputs
    texts = ["goal wonderful today", "chip furious scary today", "laptop"]
    expected, got = model.predict_proba(texts), fast.predict_proba(texts)
    for task in expected:
        assert torch.allclose(expected[task], got[task], atol=1e-4), task
    assert [row["emotions"]["labels"] for row in fast.predict(texts)] == \
        [row["emotions"]["labels"] for row in model.predict(texts)]


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        ([{"text": "a", "tags": ["x"]}, {"text": "b", "tags": ["x", "nope"]}], ["--labels", "tags=x,y"],
         r"line 2: multi-label task 'tags' \(column 'tags'\): unknown label 'nope'"),
        ([{"text": "a", "tags": ["x"]}, {"text": "b", "tags": []}], ["--tasks", "tags", "--allow_empty_labels", "false"],
         "line 2: .*empty label list"),
        ([{"text": "a", "score": 1.5}, {"text": "b", "score": "high"}], ["--tasks", "score", "--task_types", "score=regression"],
         "line 2: regression task 'score' .*'high' is a string, not a number"),
        ([{"text": "a", "score": 1.5}, {"text": "b", "score": float("nan")}], ["--tasks", "score", "--task_types", "score=regression"],
         "line 2: .*NaN is not a target value"),
        ([{"text": "a", "score": 1.5}, {"text": "b", "score": 1.0}, {"text": "c", "score": float("inf")}],
         ["--tasks", "score", "--task_types", "score=regression"], "line 3: .*inf is not a finite number"),
    ],
    ids=["unknown-label-in-list", "empty-list-refused", "string-in-regression", "nan", "infinity"],
)
def test_bad_values_stop_before_training_naming_file_and_line(rows, options, message, tmp_path, tiny_encoder):
    from transformers import AutoTokenizer, HfArgumentParser

    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    (data_args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(["--train_files", str(path), *options])
    with pytest.raises(DataError, match=message) as error:
        prepare_data(data_args, AutoTokenizer.from_pretrained(tiny_encoder))
    assert str(path) in str(error.value)


def test_delimited_strings_and_auto_class_weights(tmp_path, tiny_encoder):
    from transformers import AutoTokenizer, HfArgumentParser

    rows = [{"text": "a", "tags": "x;y", "kind": "p"}, {"text": "b", "tags": "y", "kind": "q"},
            {"text": "c", "tags": None, "kind": "q"}, {"text": "d", "tags": "", "kind": "q"}]
    path = write_jsonl(tmp_path / "tags.jsonl", rows)
    (data_args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--train_files", str(path), "--tasks", "tags", "kind", "--task_types", "tags=multi_label",
         "--label_delimiter", "tags=;", "--class_weights", "tags=auto", "kind=auto"])
    data = prepare_data(data_args, AutoTokenizer.from_pretrained(tiny_encoder))
    assert data.tasks["tags"] == ["x", "y"]
    assert data.train["labels_tags"][:2] == [[1.0, 1.0], [0.0, 1.0]] and data.train["labels_tags"][3] == [0.0, 0.0]
    assert all(math.isnan(value) for value in data.train["labels_tags"][2])
    # pos_weight: negatives / positives over the 3 labelled rows; inverse class frequency: 4 / (2 x count)
    assert data.heads["class_weights"] == {"tags": [2.0, 0.5], "kind": [2.0, 4 / 6]}


def test_old_config_without_task_types_loads_unchanged(tmp_path):
    config = SentenceMultiTaskConfig(tasks={"sentiment": ["negative", "neutral", "positive"]})
    saved = json.loads(config.to_json_string())
    for key in ("task_types", "thresholds", "target_stats", "class_weights"):
        saved.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = SentenceMultiTaskConfig.from_pretrained(tmp_path)
    assert loaded.task_type("sentiment") == "single_label" and loaded.task_types is None
    assert json.loads(loaded.to_json_string()).get("task_types") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_types": {"t": "ranking"}}, "unknown type 'ranking'"),
        ({"task_types": {"t": "multi_label"}, "thresholds": {"t": [0.5]}}, "one number per label"),
        ({"task_types": {"t": "multi_label"}, "thresholds": {"t": [0.5, 1.5]}}, r"a number in \(0, 1\)"),
        ({"thresholds": {"t": [0.5, 0.5]}}, "applies to multi_label tasks"),
        ({"task_types": {"t": "regression"}, "target_stats": {"t": {"mean": [0, 0], "std": [1, 0]}}},
         "positive numbers"),
        ({"class_weights": {"t": [1.0, -1.0]}}, "a positive number"),
    ],
)
def test_bad_head_settings_are_clear_config_errors(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        SentenceMultiTaskConfig(tasks={"t": ["a", "b"]}, **kwargs)


def test_multi_label_metrics_on_known_inputs():
    references = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    predicted = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    scores = multi_label_scores(predicted, references)
    # TP 3, predicted 4, true 5: micro-F1 = 6 / 9; per label 2/2 -> 1.0, 1/(1+2) x 2 = 2/3, 0
    assert scores["micro_f1"] == pytest.approx(6 / 9)
    assert scores["per_class_f1"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert scores["macro_f1"] == pytest.approx(5 / 9)
    assert scores["subset_accuracy"] == pytest.approx(0.25)


def test_regression_metrics_on_known_inputs():
    scores = regression_scores([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 6.0])
    assert scores["mse"] == pytest.approx((0 + 1 + 1 + 4) / 4)
    assert scores["mae"] == pytest.approx(1.0)
    assert scores["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 6])[0, 1])
    assert scores["spearman"] == pytest.approx(0.8)  # ranks 1,2,3,4 against 1,3,2,4
    tied = regression_scores([1.0, 1.0, 2.0], [1.0, 2.0, 3.0])  # ranks 1.5, 1.5, 3 against 1, 2, 3
    assert tied["spearman"] == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])


def test_thresholds_tuned_per_label_with_the_global_one_for_rare_labels():
    rng = np.random.default_rng(0)
    references = np.zeros((40, 2), dtype=int)
    references[:20, 0] = 1
    references[0, 1] = 1  # one positive: too few for a threshold of its own
    probabilities = np.column_stack([np.where(references[:, 0], 0.35, 0.2) + rng.uniform(0, 0.05, 40),
                                     rng.uniform(0, 1, 40)])
    tuned = tune_thresholds(probabilities, references)
    assert 0.25 <= tuned["thresholds"][0] <= 0.35  # separates 0.35-0.40 from 0.20-0.25
    assert tuned["fallback"] == [1] and tuned["thresholds"][1] == tuned["global"]


def test_loss_of_every_type_with_label_smoothing_and_missing_rows():
    from sentence_multitask.modeling_sentence_multitask import SentenceMultiTaskModel

    config = SentenceMultiTaskConfig(
        encoder={"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 16, "vocab_size": 50},
        tasks={"t": ["a", "b"], "m": ["x", "y"], "r": ["v"]}, task_types={"m": "multi_label", "r": "regression"},
        target_stats={"r": {"mean": [10.0], "std": [2.0]}})
    model = SentenceMultiTaskModel(config)
    logits = {"t": torch.zeros(2, 2), "m": torch.zeros(2, 2), "r": torch.zeros(2, 1)}
    nan = float("nan")
    labels = {"t": torch.tensor([0, -100]), "m": torch.tensor([[1.0, 0.0], [nan, nan]]),
              "r": torch.tensor([[12.0], [nan]])}
    loss = model.compute_loss(logits, labels, label_smoothing=0.1)
    # cross-entropy log 2, binary cross-entropy log 2, squared error ((12 - 10) / 2 - 0)^2 = 1
    assert loss.item() == pytest.approx(2 * math.log(2) + 1.0, rel=1e-5)
