"""Acceptance tests of `sentence_multitask.training` and `sentence-multitask train`.

Only the first test trains the real all-MiniLM-L6-v2 (a few steps on the bundled demo set: the model must learn it);
every other test uses the tiny random encoder of `tiny_encoder` and small JSON Lines files written to tmp_path, and
calls `training.main` in-process, except where the process boundary is the point (torchrun, loading as remote code).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

try:
    from .conftest import run_python
except ImportError:  # tests/ collected as a plain directory
    from conftest import run_python
from sentence_multitask import SentenceMultiTaskModel, training
from sentence_multitask.arguments import DataArguments, MultiTaskTrainingArguments, parse_args
from sentence_multitask.data import (
    IGNORE,
    LABEL_PREFIX,
    DataError,
    MultiTaskCollator,
    load_source,
    parse_specs,
    prepare_data,
    rows_with_labels,
)
from sentence_multitask.sampling import MultiTaskSampler, source_shares
from sentence_multitask.trainer import MultiTaskTrainer

BIN = Path(sys.executable).parent
PACKAGE_DATA = Path(training.__file__).parent / "data"

TOPIC_TEXT = {
    "sports": ["the team won the match", "the striker scored twice", "the marathon ended downtown"],
    "health": ["the doctor changed my medicine", "the clinic opened a new ward", "my flu is finally gone"],
    "tech": ["the laptop update broke wifi", "the new phone has a fast chip", "the app crashes on start"],
}
SENTIMENT_TEXT = {"negative": ["and it was awful", "sadly a disaster"], "positive": ["and it was wonderful", "what a joy"]}


# ---------------------------------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def make_rows(n: int, seed: int, with_topic: bool = True, with_sentiment: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, sentiment = rng.choice(sorted(TOPIC_TEXT)), rng.choice(sorted(SENTIMENT_TEXT))
        text = f"{rng.choice(TOPIC_TEXT[topic])} {rng.choice(SENTIMENT_TEXT[sentiment])}" + " really" * rng.randint(0, 8)
        row = {"text": text}
        if with_topic:
            row["topic"] = topic
        if with_sentiment:
            row["sentiment"] = sentiment
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "both.jsonl", make_rows(48, seed=1))
    write_jsonl(folder / "both_val.jsonl", make_rows(24, seed=2))
    write_jsonl(folder / "topic.jsonl", make_rows(40, seed=3, with_sentiment=False))  # topic-only, 40 rows
    write_jsonl(folder / "sentiment.jsonl", make_rows(16, seed=4, with_topic=False))  # sentiment-only, 16 rows
    return folder


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


def tiny_args(tiny_encoder: str, output_dir, *extra: str) -> list[str]:
    """main() arguments for a short, quiet run on the tiny encoder."""
    return [
        "--encoder", tiny_encoder, "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--dataloader_pin_memory", "false", *extra,
    ]


def joint_options(data_dir: Path) -> list[str]:
    return ["--train_files", str(data_dir / "both.jsonl"), "--validation_files", str(data_dir / "both_val.jsonl"),
            "--tasks", "topic", "sentiment", "--max_steps", "2"]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory, data_dir, tiny_encoder) -> Path:
    """The folder of a finished joint run on both tasks (2 steps, validated); tests read it, never write into it."""
    out = tmp_path_factory.mktemp("joint") / "model"
    training.main(tiny_args(tiny_encoder, out, *joint_options(data_dir)))
    return out


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "model.safetensors"))


def subset(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    chosen = {name: tensor for name, tensor in state.items() if name.startswith(prefix)}
    assert chosen, f"no weights start with {prefix!r}: {sorted(state)[:5]}..."
    return chosen


def bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (in any bit) between a and b."""
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def majority_baseline(path: Path, task: str) -> float:
    labels = [json.loads(line)[task] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Counter(labels).most_common(1)[0][1] / len(labels)


# ---------------------------------------------------------------------------------------------------- 1. demo CLI


def test_demo_training_cli_writes_a_loadable_model_with_its_metrics_in_the_card(tmp_path, monkeypatch):
    """`sentence-multitask train` with no data options trains on the bundled demo set (real MiniLM, a few steps)."""
    from sentence_multitask.cli import main as cli

    monkeypatch.chdir(tmp_path)
    cli(["train", "--output_dir", "tmp", "--max_steps", "6", "--save_strategy", "no", "--eval_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true"])
    out = tmp_path / "tmp"
    for name in ("config.json", "model.safetensors", "configuration_sentence_multitask.py",
                 "modeling_sentence_multitask.py", "tokenizer.json", "README.md", "eval_results.json"):
        assert (out / name).is_file(), f"{name} missing from {sorted(os.listdir(out))}"
    reported = json.loads((out / "eval_results.json").read_text())

    # The validation accuracy beats always predicting the most frequent label, on both tasks.
    validation = PACKAGE_DATA / "demo_validation.jsonl"
    baselines = {task: majority_baseline(validation, task) for task in ("topic", "sentiment")}
    for task, baseline in baselines.items():
        assert reported[f"eval_{task}_accuracy"] > baseline + 0.1, (task, reported[f"eval_{task}_accuracy"], baseline)

    # The card (README.md) carries exactly the metrics that training reported.
    card = (out / "README.md").read_text(encoding="utf-8")
    for task in ("topic", "sentiment"):
        row = (f"| {task} | {reported[f'eval_{task}_accuracy']:.4f} | {reported[f'eval_{task}_macro_f1']:.4f} | "
               f"{reported[f'eval_{task}_macro_recall']:.4f} |")
        assert row in card, f"card lacks {row!r}"
        assert f"value: {round(reported[f'eval_{task}_accuracy'], 4)}" in card  # model-index metadata

    # Loads as remote code in a process that cannot import sentence_multitask, and predicts as reported.
    code = f"""
import json
import math
from transformers import AutoModel
model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
assert type(model).__name__ == "SentenceMultiTaskModel", type(model)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
rows = [json.loads(line) for line in open({str(validation)!r}, encoding="utf-8") if line.strip()]
predictions = model.predict([row["text"] for row in rows])
accuracy = {{task: sum(p[task]["label"] == row[task] for p, row in zip(predictions, rows)) / len(rows)
            for task in ("topic", "sentiment")}}
print("ACCURACY=" + json.dumps(accuracy))
"""
    loaded = run_python(code)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    accuracy = json.loads(loaded.stdout.split("ACCURACY=")[1].splitlines()[0])
    for task, baseline in baselines.items():
        assert accuracy[task] > baseline + 0.1, (task, accuracy[task], baseline)
        # Same model, same data: at most a near-tie flips because of different padding.
        assert abs(accuracy[task] - reported[f"eval_{task}_accuracy"]) <= 2 / 90 + 1e-9


# ---------------------------------------------------------------------------------------------------- 2. mixed data


def test_topic_only_and_sentiment_only_files_train_together(tmp_path, data_dir, tiny_encoder, tiny_tokenizer):
    topic_file, sentiment_file = str(data_dir / "topic.jsonl"), str(data_dir / "sentiment.jsonl")
    data = prepare_data(DataArguments(train_files=[f"topic={topic_file}", f"sentiment={sentiment_file}"]), tiny_tokenizer)
    assert data.tasks == {"topic": ["health", "sports", "tech"], "sentiment": ["negative", "positive"]}
    assert data.train_sizes == [40, 16]
    sources = np.asarray(data.train["source"])
    topic_ids = np.asarray(data.train[LABEL_PREFIX + "topic"])
    sentiment_ids = np.asarray(data.train[LABEL_PREFIX + "sentiment"])
    assert (topic_ids[sources == 0] != IGNORE).all() and (topic_ids[sources == 1] == IGNORE).all()
    assert (sentiment_ids[sources == 1] != IGNORE).all() and (sentiment_ids[sources == 0] == IGNORE).all()

    out = tmp_path / "mixed"
    metrics = training.main(tiny_args(
        tiny_encoder, out, "--train_files", f"topic={topic_file}", f"sentiment={sentiment_file}",
        "--validation_files", str(data_dir / "both_val.jsonl"), "--max_steps", "4",
    ))
    assert {"eval_topic_accuracy", "eval_sentiment_accuracy"} <= metrics.keys()
    config = json.loads((out / "config.json").read_text())
    assert config["tasks"] == data.tasks
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "topic.jsonl (40 rows)" in card and "sentiment.jsonl (16 rows)" in card


def test_a_head_without_labels_in_the_batches_keeps_its_weights(tmp_path, data_dir, tiny_encoder, tiny_tokenizer):
    """Train a topic+sentiment model on sentiment-only rows: the topic head stays bit-identical."""
    from sentence_multitask import SentenceMultiTaskModel

    data = prepare_data(
        DataArguments(train_files=[f"topic={data_dir / 'topic.jsonl'}", f"sentiment={data_dir / 'sentiment.jsonl'}"]),
        tiny_tokenizer,
    )
    sentiment_rows = rows_with_labels(data.train, ["sentiment"])
    assert len(sentiment_rows) == 16
    assert all(value == IGNORE for value in sentiment_rows[LABEL_PREFIX + "topic"])

    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=data.tasks)
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    args = MultiTaskTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
    )
    assert args.weight_decay == 0.0
    trainer = MultiTaskTrainer(
        model=model, args=args, train_dataset=sentiment_rows,
        # Both tasks are collated: every batch carries a topic label tensor of -100 only.
        data_collator=MultiTaskCollator(tiny_tokenizer, ["topic", "sentiment"]), processing_class=tiny_tokenizer,
    )
    trainer.train()
    after = {name: tensor.detach() for name, tensor in model.state_dict().items()}

    assert bit_identical(subset(before, "heads.topic."), subset(after, "heads.topic.")) == []
    changed_sentiment = bit_identical(subset(before, "heads.sentiment."), subset(after, "heads.sentiment."))
    assert len(changed_sentiment) == len(subset(before, "heads.sentiment."))  # every sentiment head tensor moved
    assert bit_identical(subset(before, "encoder."), subset(after, "encoder."))  # the encoder trained too


# ---------------------------------------------------------------------------------------------------- 3. sampling


SIZES = [600, 300, 100]


@pytest.mark.parametrize("group_by_length", [False, True], ids=["plain", "length-grouped"])
@pytest.mark.parametrize("mode", ["proportional", "temperature", "round_robin"])
def test_sampler_gives_each_source_its_share(mode, group_by_length):
    expected = {
        "proportional": np.array(SIZES) / sum(SIZES),
        "temperature": np.sqrt(SIZES) / np.sqrt(SIZES).sum(),  # T = 2
        "round_robin": np.full(3, 1 / 3),
    }[mode]
    np.testing.assert_allclose(source_shares(SIZES, mode, temperature=2.0), expected, atol=1e-12)

    rng = np.random.default_rng(0)
    sources = np.repeat(np.arange(3), SIZES)
    lengths = rng.integers(5, 129, size=len(sources))
    sampler = MultiTaskSampler(sources, lengths if group_by_length else None, batch_size=16, mode=mode,
                               temperature=2.0, seed=7, group_by_length=group_by_length)
    counts = np.zeros(3)
    epochs = 40
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = np.array(list(sampler))
        assert len(order) == len(sampler) == len(sources)
        assert order.min() >= 0 and order.max() < len(sources)
        counts += np.bincount(sources[order], minlength=3)
    shares = counts / counts.sum()
    np.testing.assert_allclose(shares, expected, atol=0.02)

    # Also over a stretch of batches inside one epoch, not only over whole epochs.
    sampler.set_epoch(0)
    first = np.array(list(sampler))[: 16 * 40]
    np.testing.assert_allclose(np.bincount(sources[first], minlength=3) / len(first), expected, atol=0.08)


@pytest.mark.parametrize("mode", ["proportional", "temperature", "round_robin"])
def test_length_grouped_batches_are_length_homogeneous(mode):
    """The Trainer's DataLoader cuts the sampler's stream into consecutive batch_size chunks: each must hold
    texts of similar length (1000 rows with batch size 16 leave one short batch per epoch)."""
    rng = np.random.default_rng(0)
    sources = np.repeat(np.arange(3), SIZES)
    lengths = rng.integers(5, 129, size=len(sources))
    span = lengths.max() - lengths.min()
    sampler = MultiTaskSampler(sources, lengths, batch_size=16, mode=mode, seed=7)
    random_spreads, spreads = [], []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(range(len(sources)), sampler=sampler, batch_size=16)
        spreads += [int(np.ptp(lengths[batch.numpy()])) for batch in loader]
        permutation = np.random.default_rng(epoch).permutation(len(sources))
        random_spreads += [int(np.ptp(lengths[permutation[i : i + 16]])) for i in range(0, len(sources), 16)]
    assert np.mean(random_spreads) > 0.6 * span  # random batches mix lengths
    wide = [spread for spread in spreads if spread > 0.2 * span]
    assert not wide, f"{len(wide)} of {len(spreads)} batches mix lengths (spreads {sorted(wide)[-5:]}, range {span})"


def test_trainer_uses_the_sampler_shares(tmp_path, data_dir, tiny_encoder, tiny_tokenizer):
    """Through MultiTaskTrainer.get_train_dataloader: round_robin gives the 40-row and the 16-row file equal shares."""
    from sentence_multitask import SentenceMultiTaskModel

    data = prepare_data(
        DataArguments(train_files=[f"topic={data_dir / 'topic.jsonl'}", f"sentiment={data_dir / 'sentiment.jsonl'}"]),
        tiny_tokenizer,
    )
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=data.tasks)
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "run"), task_sampling="round_robin", eval_strategy="no",
                                      per_device_train_batch_size=8, report_to="none", dataloader_pin_memory=False)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=data.train,
                               data_collator=MultiTaskCollator(tiny_tokenizer, list(data.tasks)))
    topic_rows = sentiment_rows = 0
    for batch in trainer.get_train_dataloader():
        topic_rows += int((batch["labels"]["topic"] != IGNORE).sum())
        sentiment_rows += int((batch["labels"]["sentiment"] != IGNORE).sum())
    assert topic_rows + sentiment_rows == 56
    assert topic_rows == sentiment_rows == 28


def test_the_private_trainer_hook_of_the_sampler_is_still_there():
    """MultiTaskTrainer overrides `Trainer._get_train_sampler`, the one private Trainer method it relies on (there is
    no public way to choose the training sampler). Fails when transformers renames it or changes how it is called,
    instead of training silently on the Trainer's own sampler."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._get_train_sampler).parameters) == ["self", "train_dataset"]
    assert "sampler_fn=self._get_train_sampler" in inspect.getsource(Trainer.get_train_dataloader)
    assert "_get_train_sampler" in vars(MultiTaskTrainer)


@pytest.mark.parametrize("group_by_length", [False, True], ids=["plain", "length-grouped"])
@pytest.mark.parametrize("mode", ["proportional", "temperature", "round_robin"])
def test_a_source_without_rows_gets_no_share(mode, group_by_length):
    """A sequential phase keeps only the rows of its tasks: sources 0 and 2 may have no row left (source ids stay)."""
    np.testing.assert_allclose(source_shares([0, 30, 0, 10], mode)[[0, 2]], 0.0)
    sources = np.repeat([1, 3], [30, 10])
    lengths = np.random.default_rng(0).integers(5, 129, size=len(sources))
    sampler = MultiTaskSampler(sources, lengths if group_by_length else None, batch_size=8, mode=mode, seed=7,
                               group_by_length=group_by_length)
    counts = np.zeros(4)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        order = np.array(list(sampler))
        assert len(order) == len(sources) and order.min() >= 0 and order.max() < len(sources)
        counts += np.bincount(sources[order], minlength=4)
    assert counts[0] == counts[2] == 0
    if mode == "round_robin":
        assert counts[1] == counts[3]  # equal shares among the sources that have rows


# ---------------------------------------------------------------------------------------------------- 4. sequential


def test_sequential_training_freezes_encoder_and_primary_heads(tmp_path, data_dir, tiny_encoder):
    out = tmp_path / "sequential"
    training.main(tiny_args(
        tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
        "--training_mode", "sequential", "--primary_tasks", "topic", "--num_train_epochs", "1",
        "--save_strategy", "epoch",
    ))
    checkpoints = sorted((out / "phase1").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, f"no phase-1 checkpoint in {out / 'phase1'}"
    end_of_phase1 = weights(checkpoints[-1])  # 48 rows / batch 8 = the checkpoint after the last phase-1 step
    assert checkpoints[-1].name == "checkpoint-6"
    assert (out / "phase2").is_dir()
    final = weights(out)

    # Phase 1 trained the encoder ...
    initial_encoder = {f"encoder.{name}": tensor for name, tensor in weights(tiny_encoder).items()}
    phase1_encoder = subset(end_of_phase1, "encoder.")
    assert bit_identical({k: initial_encoder[k] for k in phase1_encoder}, phase1_encoder)
    # ... phase 2 left the encoder and the topic head bit-identical and trained the sentiment head.
    assert bit_identical(phase1_encoder, subset(final, "encoder.")) == []
    assert bit_identical(subset(end_of_phase1, "heads.topic."), subset(final, "heads.topic.")) == []
    changed = bit_identical(subset(end_of_phase1, "heads.sentiment."), subset(final, "heads.sentiment."))
    assert len(changed) == len(subset(final, "heads.sentiment."))


def test_trainable_encoder_layers_trains_only_the_top_layers(tmp_path, data_dir, tiny_encoder, joint_run):
    out = tmp_path / "top"
    training.main(tiny_args(tiny_encoder, out, "--model", str(joint_run), "--trainable_encoder_layers", "1",
                            "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
                            "--max_steps", "2", "--learning_rate", "1e-3"))
    before, after = subset(weights(joint_run), "encoder."), subset(weights(out), "encoder.")
    changed = bit_identical(before, after)
    top = [name for name in before if ".layer.1." in name]
    assert top and sorted(changed) == sorted(top)  # embeddings and layer 0 bit-identical, every top tensor trained
    with pytest.raises(ValueError, match="--trainable_encoder_layers 3: the encoder has 2 layers"):
        training.main(tiny_args(tiny_encoder, tmp_path / "x", "--trainable_encoder_layers", "3",
                                "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment"))
    with pytest.raises(ValueError, match="give one of them"):
        training.main(tiny_args(tiny_encoder, tmp_path / "y", "--trainable_encoder_layers", "1", "--freeze_encoder"))


@pytest.mark.parametrize(
    "mode, primary",
    [("round_robin", "topic"), ("round_robin", "sentiment"), ("temperature", "sentiment"), ("proportional", "topic")],
)
def test_sequential_training_with_task_only_files_in_every_sampling_mode(mode, primary, tmp_path, data_dir,
                                                                         tiny_encoder):
    """Each phase trains on one of the two files only: the other source has no row there and must get no share."""
    out = tmp_path / "sequential"
    training.main(tiny_args(
        tiny_encoder, out, "--train_files", f"topic={data_dir / 'topic.jsonl'}",
        f"sentiment={data_dir / 'sentiment.jsonl'}", "--labels", "topic=health,sports,tech",
        "sentiment=negative,positive", "--training_mode", "sequential", "--primary_tasks", primary,
        "--task_sampling", mode, "--max_steps", "2",
    ))
    assert json.loads((out / "config.json").read_text())["tasks"].keys() == {"topic", "sentiment"}


def test_sequential_training_writes_its_results_to_output_dir_like_joint_training(tmp_path, data_dir, tiny_encoder,
                                                                                 joint_run):
    joint, sequential = joint_run, tmp_path / "sequential"
    metrics = training.main(tiny_args(tiny_encoder, sequential, *joint_options(data_dir), "--training_mode",
                                      "sequential", "--primary_tasks", "topic"))
    for out in (joint, sequential):
        files = sorted(name for name in os.listdir(out) if name.endswith("_results.json"))
        assert files == ["all_results.json", "eval_results.json", "train_results.json"], (out.name, files)
        evaluated = json.loads((out / "eval_results.json").read_text())
        assert {"eval_topic_accuracy", "eval_sentiment_accuracy"} <= evaluated.keys()
        combined = json.loads((out / "all_results.json").read_text())
        assert {"train_runtime", "eval_topic_accuracy", "eval_sentiment_accuracy"} <= combined.keys()
    assert json.loads((sequential / "eval_results.json").read_text()) == metrics
    # Each phase keeps its own training metrics; the final evaluation is not duplicated into a phase folder.
    for phase in ("phase1", "phase2"):
        assert sorted(name for name in os.listdir(sequential / phase) if name.endswith("_results.json")) == [
            "train_results.json"]
    # The top-level training metrics cover the whole run: both phases, and their total time.
    final = json.loads((sequential / "train_results.json").read_text())
    phases = [json.loads((sequential / phase / "train_results.json").read_text()) for phase in ("phase1", "phase2")]
    assert final == {**{f"phase{n}_{key}": value for n, phase in enumerate(phases, 1) for key, value in phase.items()},
                     "train_runtime": phases[0]["train_runtime"] + phases[1]["train_runtime"]}
    assert final.keys() >= {"phase1_train_loss", "phase2_train_loss"}


# ---------------------------------------------------------------------------------------------------- 5. bad data


BAD_DATA = {
    "unknown label": (
        ['{"text": "a", "topic": "sports", "sentiment": "positive"}',
         '{"text": "b", "topic": "health", "sentiment": "negative"}',
         '{"text": "c", "topic": "tech", "sentiment": "angry"}'],
        ["--labels", "topic=sports,health,tech", "sentiment=negative,positive"],
        r"bad\.jsonl \(train\), line 3: unknown label 'angry' for task 'sentiment'",
    ),
    "missing label column": (
        ['{"text": "a", "mood": "positive"}', '{"text": "b", "mood": "negative"}'],
        ["--tasks", "sentiment"],
        r"bad\.jsonl \(train\): no label column for task 'sentiment'.*'mood'",
        "sentiment",  # given as sentiment=PATH
    ),
    "missing text column": (
        ['{"sentence": "a", "topic": "sports"}', '{"sentence": "b", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\): no text column 'text'.*'sentence'",
    ),
    "empty file": ([], ["--tasks", "topic"], r"bad\.jsonl: the file is empty"),
    "all labels missing for a task": (
        ['{"text": "a", "topic": "sports", "sentiment": null}',
         '{"text": "b", "topic": "tech", "sentiment": null}'],
        ["--tasks", "topic", "sentiment", "--labels", "topic=sports,tech", "sentiment=negative,positive"],
        r"bad\.jsonl \(train\): every row lacks a label for task 'sentiment'",
    ),
    "all labels missing for a task, labels inferred": (
        ['{"text": "a", "topic": "sports", "sentiment": null}',
         '{"text": "b", "topic": "tech", "sentiment": null}'],
        ["--tasks", "topic", "sentiment"],
        r"Task 'sentiment' has no labelled training row",
    ),
    "no file carries a task, labels given": (
        ['{"text": "a", "topic": "sports"}', '{"text": "b", "topic": "tech"}'],
        ["--labels", "topic=sports,tech", "sentiment=negative,positive"],
        r"Task 'sentiment' has no labelled training row",
    ),
    "malformed JSON": (
        ['{"text": "a", "topic": "sports"}', '{"text": "b", "topic": "tech"}', '{"text": "c", "topic": "tech"',
         '{"text": "d", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl, line 3: malformed JSON",
    ),
    "empty text": (
        ['{"text": "a", "topic": "sports"}', '{"text": "   ", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\), line 2: the text is empty",
    ),
    "number as text": (
        ['{"text": "a", "topic": "sports"}', '{"text": 42, "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\), line 2: the text is 42 \(int\), not a string",
    ),
}


def test_json_files_with_a_byte_order_mark_or_leading_blanks_load(tmp_path):
    rows = [{"text": "a", "topic": "sports"}, {"text": "b", "topic": "tech"}]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    array = tmp_path / "array.json"
    array.write_text("\n  " + json.dumps(rows), encoding="utf-8")
    for path in (bom, array):
        assert load_source(parse_specs([f"topic={path}"])[0], "train").to_list() == rows, path.name


def test_a_file_the_parser_rejects_is_named_with_the_parsers_reason(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,topic\na,sports\nb,tech,extra,more\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ragged\.csv: could not be read as CSV: .*\(.*[Ee]xpected 2 fields"):
        load_source(parse_specs([f"topic={ragged}"])[0], "train")


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_before_training_with_a_precise_error(case, tmp_path, tiny_encoder, monkeypatch):
    lines, options, message, *prefix = BAD_DATA[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    spec = f"{prefix[0]}={path}" if prefix else str(path)

    def not_reached(*args, **kwargs):
        raise AssertionError("the model was built: the data error was not caught before training")

    monkeypatch.setattr(training, "build_model", not_reached)
    with pytest.raises(DataError, match=message):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", spec, *options))
    assert not (tmp_path / "out" / "config.json").exists()


def test_unknown_label_in_validation_file_is_named(tmp_path, data_dir, tiny_tokenizer):
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "topic": "sports", "sentiment": "positive"},
                                                      {"text": "y", "topic": "cooking", "sentiment": "negative"}])
    with pytest.raises(DataError, match=r"val\.jsonl \(validation\), line 2: unknown label 'cooking' for task 'topic'"):
        prepare_data(DataArguments(train_files=[str(data_dir / "both.jsonl")], validation_files=[validation],
                                   tasks=["topic", "sentiment"]), tiny_tokenizer)


def test_validation_files_without_train_files_is_an_error(tmp_path, data_dir, tiny_tokenizer):
    """Not silently swapped for the demo validation file."""
    with pytest.raises(ValueError, match=r"--validation_files needs --train_files"):
        prepare_data(DataArguments(validation_files=[str(data_dir / "both_val.jsonl")]), tiny_tokenizer)


def test_csv_label_ids_with_blank_cells_train_and_evaluate(tmp_path, tiny_encoder, tiny_tokenizer):
    """A CSV id column with a blank cell is read as floats (0.0, 1.0, None): whole numbers are ids, blanks no label."""
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    path = tmp_path / "ids.csv"
    path.write_text("text,topic,sentiment\nthe team won the match,0,1\nthe doctor changed my medicine,1,\n"
                    "the laptop update broke wifi,2,0\nthe clinic opened a new ward,,0\n", encoding="utf-8")
    labels = ["--labels", "topic=sports,health,tech", "sentiment=negative,positive"]
    data = prepare_data(DataArguments(train_files=[str(path)], labels=labels[1:]), tiny_tokenizer)
    assert data.train[LABEL_PREFIX + "topic"] == [0, 1, 2, IGNORE]
    assert data.train[LABEL_PREFIX + "sentiment"] == [1, IGNORE, 0, 0]
    out = tmp_path / "out"
    training.main(tiny_args(tiny_encoder, out, "--train_files", str(path), *labels, "--max_steps", "1"))
    assert json.loads((out / "config.json").read_text())["tasks"]["topic"] == ["sports", "health", "tech"]

    model = SentenceMultiTaskModel.from_pretrained(out)
    report = evaluate_model(model, [str(path)])
    assert report["tasks"]["topic"]["support"] == 3 and report["tasks"]["sentiment"]["support"] == 3

    # A fractional id is still an error, named by line, in training and in evaluation.
    path.write_text("text,topic\nthe team won the match,0\nthe doctor changed my medicine,0.5\n", encoding="utf-8")
    message = r"ids\.csv \((train|evaluation)\), line 3: .*0\.5.*for task 'topic'.*whole number"
    with pytest.raises(DataError, match=message):
        prepare_data(DataArguments(train_files=[str(path)], labels=["topic=sports,health,tech"]), tiny_tokenizer)
    with pytest.raises(DataError, match=message):
        evaluate_model(model, [str(path)])


@pytest.mark.parametrize("max_length", ["0", "1"])
def test_max_length_below_two_fails_before_any_work(max_length, tmp_path, data_dir, tiny_encoder, monkeypatch):
    """Such a model could not be loaded again; with --overwrite_model it would have replaced a good one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"the": "good model"}', encoding="utf-8")

    def not_reached(*args, **kwargs):
        raise AssertionError("data or model loaded before --max_length was checked")

    monkeypatch.setattr(training, "prepare_data", not_reached)
    monkeypatch.setattr(training, "build_model", not_reached)
    message = rf"--max_length must be a whole number of at least 2 tokens .*got {max_length}\."
    with pytest.raises(ValueError, match=message):
        training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--max_length",
                                max_length, "--overwrite_model"))
    assert (out / "config.json").read_text(encoding="utf-8") == '{"the": "good model"}'


@pytest.mark.parametrize("limit", ["encoder", "tokenizer"])
def test_max_length_above_the_encoder_limit_is_capped_before_tokenising(limit, tmp_path, tiny_encoder, monkeypatch,
                                                                       caplog):
    """An encoder with 64 positions (or a tokenizer with model_max_length 48) and --max_length 1024: long texts are
    truncated to the limit, and the saved model says so, instead of a tensor size error in the first step."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    positions, cap = (64, 64) if limit == "encoder" else (512, 48)
    encoder = tmp_path / "encoder"
    config = BertConfig.from_pretrained(tiny_encoder, max_position_embeddings=positions)
    BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder, model_max_length=cap if limit == "tokenizer" else 512)
    tokenizer.save_pretrained(encoder)
    rows = [{"text": "the team won the match " * 30, "topic": "sports"},
            {"text": "the doctor changed my medicine " * 30, "topic": "health"}]
    train_file = write_jsonl(tmp_path / "long.jsonl", rows)

    prepared = []
    original = training.prepare_data

    def recording(data_args, *args, **kwargs):
        prepared.append(data_args.max_length)
        return original(data_args, *args, **kwargs)

    monkeypatch.setattr(training, "prepare_data", recording)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="sentence_multitask"):
        training.main(tiny_args(str(encoder), out, "--train_files", train_file, "--tasks", "topic", "--max_length",
                                "1024", "--max_steps", "1"))
    assert prepared == [cap]
    warnings = [record.getMessage() for record in caplog.records if "--max_length" in record.getMessage()]
    assert len(warnings) == 1 and "--max_length 1024" in warnings[0] and f"truncated to {cap} tokens" in warnings[0]
    assert ("max_position_embeddings" in warnings[0]) == (limit == "encoder"), warnings
    assert json.loads((out / "config.json").read_text())["max_length"] == cap
    assert f"| max length | {cap} |" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("weight", ["abc", "", "-1", "nan"])
def test_bad_task_weight_names_the_option_and_the_value(weight, tmp_path, data_dir, tiny_encoder, monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("data loaded before --task_weights was checked")

    monkeypatch.setattr(training, "prepare_data", not_reached)
    with pytest.raises(ValueError, match=rf"--task_weights .*'topic={weight}'"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                "--task_weights", f"topic={weight}"))


@pytest.mark.parametrize("option, items", [("--task_weights", ["topic=1", "topic=2"]),
                                           ("--labels", ["topic=a,b", "sentiment=x,y", "topic=c,d"])])
def test_a_task_given_twice_in_one_option_is_an_error(option, items, tmp_path, data_dir, tiny_encoder):
    with pytest.raises(ValueError, match=rf"{option} gives 'topic' twice"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                option, *items))


def test_unknown_task_prefix_hint_fits_train_and_evaluate(tmp_path, data_dir, tiny_encoder, tiny_tokenizer):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    spec = f"cooking={data_dir / 'both_val.jsonl'}"
    hint = r"names task\(s\) \['cooking'\].*the TASK= prefix of this file must name one of them\.$"
    with pytest.raises(DataError, match=hint) as trained:
        prepare_data(DataArguments(train_files=[str(data_dir / "both.jsonl")], validation_files=[spec],
                                   tasks=["topic", "sentiment"]), tiny_tokenizer)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": ["health", "sports", "tech"]})
    with pytest.raises(DataError, match=hint) as evaluated:  # `evaluate` has no --tasks option
        evaluate_model(model, [spec])
    assert "--tasks" not in str(trained.value) + str(evaluated.value)


def test_label_columns_naming_no_task_is_an_error_in_train_and_evaluate(tmp_path, tiny_encoder, tiny_tokenizer):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    # `label` holds other labels than `category`: a misspelt task must not silently fall back to it.
    rows = [{"text": text, "category": topic, "label": "tech"} for topic, texts in TOPIC_TEXT.items() for text in texts]
    spec = "topic=" + write_jsonl(tmp_path / "two_columns.jsonl", rows)
    message = r"--label_columns names task\(s\) \['topc'\], but the tasks are \['topic'\]"
    with pytest.raises(DataError, match=message):
        prepare_data(DataArguments(train_files=[spec], label_columns=["topc=category"]), tiny_tokenizer)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": sorted(TOPIC_TEXT)})
    with pytest.raises(DataError, match=message):
        evaluate_model(model, [spec], label_columns=["topc=category"])
    assert evaluate_model(model, [spec], label_columns=["topic=category"])["tasks"]["topic"]["support"] == len(rows)


def test_evaluate_refuses_data_without_labels_and_words_the_fix_for_evaluate(tmp_path, tiny_encoder):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": sorted(TOPIC_TEXT)})
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": "a match", "topic": None}] * 2)
    with pytest.raises(ValueError, match=r"No row of .*unlabelled.jsonl has a label for the model's tasks"):
        evaluate_model(model, [f"topic={unlabelled}"])
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"text": "a recipe", "topic": "cooking"}])
    with pytest.raises(DataError, match="unknown label 'cooking'") as error:
        evaluate_model(model, [f"topic={unknown}"])
    assert "--labels" not in str(error.value)  # an option of train, not of evaluate


@pytest.mark.parametrize("option", ["--max_train_samples", "--max_eval_samples"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_row_limits_below_one_are_refused(option, value, tmp_path, data_dir, tiny_encoder):
    with pytest.raises(ValueError, match=rf"{option} must be at least 1 .*got {value}"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                option, value))
    assert not (tmp_path / "out").exists()


def test_validation_without_labels_is_skipped_and_the_model_saved(tmp_path, data_dir, tiny_encoder):
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": row["text"], "topic": None, "sentiment": None}
                                                             for row in make_rows(6, seed=5)])
    out = tmp_path / "out"
    metrics = training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"),
                                      "--validation_files", unlabelled, "--tasks", "topic", "sentiment", "--max_steps",
                                      "2", "--eval_strategy", "steps", "--eval_steps", "1"))
    assert metrics == {}
    assert (out / "model.safetensors").is_file()


def test_sequential_phase_without_validation_rows_is_not_evaluated(tmp_path, data_dir, tiny_encoder):
    # The validation data labels only the primary task: phase 2 (sentiment) has nothing to evaluate.
    out = tmp_path / "out"
    metrics = training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"),
                                      "--validation_files", f"topic={data_dir / 'topic.jsonl'}", "--tasks", "topic",
                                      "sentiment", "--training_mode", "sequential", "--primary_tasks", "topic",
                                      "--num_train_epochs", "1", "--eval_strategy", "epoch"))
    assert "eval_topic_accuracy" in metrics and "eval_sentiment_accuracy" not in metrics
    assert (out / "model.safetensors").is_file()


def test_output_dir_files_the_save_would_overwrite_are_refused(tmp_path, data_dir, tiny_encoder):
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project", encoding="utf-8")
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "1"]
    with pytest.raises(FileExistsError, match=r"holds README.md, which saving the model would overwrite"):
        training.main(tiny_args(tiny_encoder, out, *options))
    assert (out / "README.md").read_text(encoding="utf-8") == "my project"
    training.main(tiny_args(tiny_encoder, out, *options, "--overwrite_model"))  # asked for: replaced
    assert (out / "config.json").is_file()
    with pytest.raises(FileExistsError, match=r"--output_dir .*afile is a file"):
        (tmp_path / "afile").write_text("x", encoding="utf-8")
        training.main(tiny_args(tiny_encoder, tmp_path / "afile", *options))


def test_model_sources_are_checked_before_any_work(tmp_path, data_dir, tiny_encoder, joint_run):
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "1"]
    for option in ("--model", "--encoder"):
        with pytest.raises(FileNotFoundError, match=rf"{option} {tmp_path}/nope does not exist"):
            training.main(tiny_args(tiny_encoder, tmp_path / "out", *options, option, str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="is a saved sentence-multitask model, not an encoder: continue training it "
                                         "with --model"):
        training.main(tiny_args(str(joint_run), tmp_path / "out", *options))
    with pytest.raises(ValueError, match=r"--model .* is a \w+ encoder, not a saved sentence-multitask model: start a "
                                         "new model from it with --encoder"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", *options, "--model", str(tiny_encoder)))


def test_train_usage_errors_are_one_line(tmp_path, data_dir, tiny_encoder):
    """Unknown options and bad options files end in one `error:` line (the CLI shows errors this package raises)."""
    from sentence_multitask.cli import _raised_by_this_package

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    unknown_key = tmp_path / "unknown.json"
    unknown_key.write_text(json.dumps({"trian_files": ["x.jsonl"]}), encoding="utf-8")
    cases = [(tiny_args(tiny_encoder, tmp_path / "out", "--trian_files", "x.jsonl"), "unknown options"),
             ([str(broken)], "options file .*broken.json"), ([str(tmp_path / "missing.json")], "options file"),
             ([str(unknown_key)], "options file .*trian_files")]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            parse_args(argv)
        assert _raised_by_this_package(error.value), argv


# ---------------------------------------------------------------------------------------------------- 6. resume


class Interrupted(Exception):
    pass


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, data_dir, tiny_encoder, monkeypatch):
    from transformers import TrainerCallback

    # 48 rows, batch 8: 6 steps per epoch, so steps 5-8 run across an epoch boundary after the resume.
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "8",
               "--save_strategy", "steps", "--save_steps", "4", "--seed", "123"]
    training.main(tiny_args(tiny_encoder, tmp_path / "a", *options))

    class CrashAfterCheckpoint4(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Interrupted(f"killed after saving step {state.global_step}")

    class CrashingTrainer(MultiTaskTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(CrashAfterCheckpoint4())

    with monkeypatch.context() as patch:
        patch.setattr(training, "MultiTaskTrainer", CrashingTrainer)
        with pytest.raises(Interrupted):
            training.main(tiny_args(tiny_encoder, tmp_path / "b", *options))
    checkpoint = tmp_path / "b" / "checkpoint-4"
    assert checkpoint.is_dir() and not (tmp_path / "b" / "config.json").exists()
    training.main(tiny_args(tiny_encoder, tmp_path / "b", *options, "--resume_from_checkpoint", str(checkpoint)))

    uninterrupted, resumed, halfway = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(checkpoint)
    assert uninterrupted.keys() == resumed.keys()
    worst = max((uninterrupted[k].float() - resumed[k].float()).abs().max().item() for k in uninterrupted)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by up to {worst}"
    assert bit_identical(halfway, resumed)  # steps 5-8 did train after the resume
    state = json.loads((tmp_path / "b" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8


def test_continued_training_defaults_to_the_saved_tasks_and_applies_task_weights(tmp_path, data_dir, tiny_encoder):
    saved = tmp_path / "saved"
    training.main(tiny_args(tiny_encoder, saved, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
                            "sentiment", "--max_steps", "1", "--max_length", "40"))
    assert json.loads((saved / "config.json").read_text())["max_length"] == 40
    # A plain PATH file (no TASK= prefix, no --tasks): the saved model's tasks, and its max_length.
    out = tmp_path / "continued"
    training.main(tiny_args(tiny_encoder, out, "--model", str(saved), "--train_files",
                            str(data_dir / "both.jsonl"), "--task_weights", "topic=5", "sentiment=0.1",
                            "--max_steps", "1"))
    config = json.loads((out / "config.json").read_text())
    assert config["tasks"] == json.loads((saved / "config.json").read_text())["tasks"]
    assert config["task_weights"] == {"topic": 5.0, "sentiment": 0.1}
    assert config["max_length"] == 40
    training.main(tiny_args(tiny_encoder, tmp_path / "longer", "--model", str(saved), "--train_files",
                            str(data_dir / "both.jsonl"), "--max_steps", "1", "--max_length", "50"))
    assert json.loads((tmp_path / "longer" / "config.json").read_text())["max_length"] == 50
    training.main(tiny_args(tiny_encoder, tmp_path / "new", "--train_files", str(data_dir / "both.jsonl"),
                            "--tasks", "topic", "sentiment", "--max_steps", "1"))
    assert json.loads((tmp_path / "new" / "config.json").read_text())["max_length"] == 128  # a new model's default
    with pytest.raises(ValueError, match=r"task_weights names unknown task\(s\) \['cooking'\]"):
        training.main(tiny_args(tiny_encoder, tmp_path / "bad", "--model", str(saved), "--train_files",
                                str(data_dir / "both.jsonl"), "--task_weights", "cooking=2", "--max_steps", "1"))
    # A saved model without its tokenizer files: named before any data is read, not trained on [UNK]s.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (saved / name).unlink()
    with pytest.raises(OSError, match=r"has no tokenizer vocabulary \(missing tokenizer\.json, tokenizer_config"):
        training.main(tiny_args(tiny_encoder, tmp_path / "untokenized", "--model", str(saved),
                                "--train_files", str(data_dir / "both.jsonl"), "--max_steps", "1"))


# ---------------------------------------------------------------------------------------------------- 7. two processes


@pytest.fixture(scope="module")
def tiny_encoder_without_dropout(tmp_path_factory, tiny_encoder) -> str:
    """The tiny encoder's architecture without dropout, so that runs with different batch splits can be compared."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_encoder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-encoder-no-dropout")
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(path)
    return str(path)


# One plain SGD step over all 48 rows: 24 rows on each of 2 processes, or 48 rows in one process. With synchronised
# (averaged) gradients both give the same weights; a rank that trained alone on its 24 rows would not.
ONE_STEP = ["--tasks", "topic", "sentiment", "--num_train_epochs", "1", "--optim", "sgd", "--learning_rate", "1.0",
            "--head_learning_rate", "0", "--warmup_ratio", "0", "--lr_scheduler_type", "constant", "--head_dropout", "0"]


@pytest.fixture(scope="module")
def one_process_step(tmp_path_factory, data_dir, tiny_encoder_without_dropout) -> dict[str, torch.Tensor]:
    """The weights after ONE_STEP in one process on all 48 rows."""
    single = tmp_path_factory.mktemp("single") / "model"
    training.main(tiny_args(tiny_encoder_without_dropout, single, "--train_files", str(data_dir / "both.jsonl"),
                            *ONE_STEP, "--per_device_train_batch_size", "48"))
    return weights(single)


def test_torchrun_two_process_training(tmp_path, data_dir, tiny_encoder_without_dropout, one_process_step):
    """A real two-process torchrun job on CPU, as a user starts it: without --use_cpu, which the arguments then turn
    on themselves (transformers would otherwise run each CPU process alone, gradients never averaged)."""
    encoder = tiny_encoder_without_dropout

    logs, out = tmp_path / "logs", tmp_path / "ddp"
    command = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "3",
        "-m", "sentence_multitask.cli", "train",
        *tiny_args(encoder, out, "--train_files", str(data_dir / "both.jsonl"), *ONE_STEP,
                   "--per_device_train_batch_size", "24", "--validation_files", str(data_dir / "both_val.jsonl"),
                   "--save_strategy", "epoch", "--ddp_backend", "gloo"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    rank_logs = {path.parent.name: path.read_text(errors="replace") for path in logs.rglob("stderr.log")}
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(log[-3000:] for log in rank_logs.values())

    # Both ranks ran the job ...
    assert sorted(rank_logs) == ["0", "1"]
    for rank, log in rank_logs.items():
        assert "Tasks: {'topic'" in log, f"rank {rank} did not reach training:\n{log[-2000:]}"
    assert "Model saved to" in rank_logs["0"] and "Model saved to" not in rank_logs["1"]
    # ... and shared the data: 48 rows / (24 per device x 2 processes) = 1 optimisation step in the epoch.
    checkpoint = out / "checkpoint-1"
    assert checkpoint.is_dir(), sorted(os.listdir(out))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["epoch"] == 1.0
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "on 2 process(es)" in card and "| batch size | 48 |" in card

    # Rank 0 saved a model that loads (loading without the package is tests/test_remote_code.py's).
    assert sorted(SentenceMultiTaskModel.from_pretrained(out).predict(["the team won the match"])[0]) == \
        ["sentiment", "topic"]

    # The gradients were averaged across the two processes: the same weights as one process on all 48 rows.
    reference, distributed, initial = one_process_step, weights(out), weights(encoder)
    moved = max((reference[f"encoder.{k}"] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # the step did change the encoder
    worst = max((reference[k] - distributed[k]).abs().max().item() for k in reference)
    assert worst <= 1e-6, (
        f"rank 0's weights differ by up to {worst} from one process training on the same rows: the two processes "
        f"did not synchronise gradients (each trained alone on its half of the data)"
    )


# ---------------------------------------------------------------------------------------------------- 8. push


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub API faked offline: every commit (create_commit, and upload_folder as the Trainer calls it) is recorded
    with its files, token, revision and message; create_repo and create_branch calls are recorded too."""
    import fnmatch
    from concurrent.futures import Future

    import huggingface_hub.repocard
    from huggingface_hub import HfApi, RepoUrl
    from huggingface_hub.errors import EntryNotFoundError

    hub = {"commits": [], "repos": [], "branches": []}

    def create_repo(self, repo_id, *args, **kwargs):
        hub["repos"].append((repo_id, kwargs.get("token"), kwargs.get("private")))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *args, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            if isinstance(source, (str, os.PathLike)):
                files[operation.path_in_repo] = Path(source).read_bytes()
            elif isinstance(source, bytes):
                files[operation.path_in_repo] = source
            else:
                files[operation.path_in_repo] = source.read()
        hub["commits"].append({"repo_id": repo_id, "files": files, "token": kwargs.get("token", self.token),
                               "revision": kwargs.get("revision"), "message": kwargs.get("commit_message")})

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False,
                      **kwargs):
        files = {}
        for path in sorted(Path(folder_path).rglob("*")):
            relative = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(relative, p) for p in ignore_patterns or []):
                files[f"{path_in_repo}/{relative}" if path_in_repo else relative] = path.read_bytes()
        hub["commits"].append({"repo_id": repo_id, "files": files, "token": kwargs.get("token"),
                               "revision": kwargs.get("revision"), "message": kwargs.get("commit_message")})
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future

    def create_branch(self, repo_id, *args, branch=None, **kwargs):
        hub["branches"].append((repo_id, branch))

    def no_remote_card(*args, **kwargs):  # a new repository: nothing to download yet
        raise EntryNotFoundError("README.md not found in the (fake) new repository")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", no_remote_card)
    return hub


def test_push_to_hub_uploads_code_weights_tokenizer_and_card_without_the_token(tmp_path, data_dir, tiny_encoder,
                                                                                fake_hub):
    token = "hf_TestTokenThatMustNotLeak0123456789"
    repo_id = "someone/sentence-multitask-test"
    commits, repos = fake_hub["commits"], fake_hub["repos"]

    out = tmp_path / "pushed"
    metrics = training.main(tiny_args(
        tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
        "--validation_files", str(data_dir / "both_val.jsonl"), "--max_steps", "2",
        "--push_to_hub", "--push_to_hub_private", "true", "--hub_model_id", repo_id, "--hub_token", token,
    ))
    assert repos and all(name == repo_id for name, _, _ in repos)
    # create_repo(exist_ok=True) never changes an existing repo's visibility: the first call must already be private.
    assert all(private is True for _, _, private in repos), repos
    assert len(commits) == 1, f"expected one commit with everything, got {len(commits)}"
    commit = commits[0]
    files = commit["files"]
    assert commit["repo_id"] == repo_id and commit["token"] == token
    assert commit["revision"] is None and not fake_hub["branches"]  # the default branch

    expected = {"config.json", "configuration_sentence_multitask.py", "modeling_sentence_multitask.py",
                "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert expected <= files.keys(), f"missing {expected - files.keys()}"

    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sentence_multitask.SentenceMultiTaskConfig",
        "AutoModel": "modeling_sentence_multitask.SentenceMultiTaskModel",
    }
    assert "class SentenceMultiTaskModel" in files["modeling_sentence_multitask.py"].decode()
    assert "class SentenceMultiTaskConfig" in files["configuration_sentence_multitask.py"].decode()
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()

    for name, content in files.items():
        assert token.encode() not in content, f"the hub token leaked into {name}"

    # The uploaded README.md is this package's card with the run's metrics, not a generic placeholder card.
    card = files["README.md"].decode("utf-8")
    assert "sentence-multitask" in card and repo_id in card, card[:1500]
    assert f"| topic | {metrics['eval_topic_accuracy']:.4f} |" in card, card[:1500]
    assert card == (out / "README.md").read_text(encoding="utf-8")


CODE_FILES = {"configuration_sentence_multitask.py", "modeling_sentence_multitask.py", "inference_sentence_multitask.py",
              "batching_sentence_multitask.py"}
MODEL_FILES = CODE_FILES | {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"}


class ConfigJsonAtEachSave:
    """A callback that records, after each checkpoint (and its push), whether --output_dir holds a config.json."""

    def __init__(self, output_dir):
        from transformers import TrainerCallback

        seen = self.seen = []

        class Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                seen.append((state.global_step, (Path(output_dir) / "config.json").exists()))

        self.callback = Callback()


@pytest.mark.parametrize("strategy", [None, "every_save", "checkpoint"])
def test_push_during_training_uploads_complete_models_and_keeps_output_dir_clean(strategy, tmp_path, data_dir,
                                                                                 tiny_encoder, fake_hub, monkeypatch):
    """Default (end): one commit, the final model. every_save / checkpoint: each checkpoint's push is a model that
    loads (code files, tokenizer, card), never copied into --output_dir while training runs."""
    out = tmp_path / "pushed"
    recorder = ConfigJsonAtEachSave(out)

    class RecordingTrainer(MultiTaskTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(recorder.callback)

    monkeypatch.setattr(training, "MultiTaskTrainer", RecordingTrainer)
    training.main(tiny_args(
        tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
        "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2", "--push_to_hub",
        "--hub_model_id", "someone/pushed", *(["--hub_strategy", strategy] if strategy else []),
        *(["--hub_revision", "dev"] if strategy == "checkpoint" else []),
    ))
    commits = fake_hub["commits"]
    if strategy == "checkpoint":  # every commit goes to --hub_revision, a branch created first
        assert {commit["revision"] for commit in commits} == {"dev"}
        assert set(fake_hub["branches"]) == {("someone/pushed", "dev")}
    assert recorder.seen == [(1, False), (2, False)]  # no config.json in --output_dir before the final save
    assert MODEL_FILES <= commits[-1]["files"].keys()
    assert commits[-1]["files"]["README.md"] == (out / "README.md").read_bytes()
    if strategy is None:
        assert len(commits) == 1, [sorted(commit["files"]) for commit in commits]
        return
    during = commits[:-1]
    assert [commit["message"] for commit in during if "checkpoint" not in commit["message"]] == [
        "Training in progress, step 1", "Training in progress, step 2"]
    for commit in during:
        root = {name for name in commit["files"] if "/" not in name}
        if "/" in next(iter(commit["files"])):  # --hub_strategy checkpoint: the resumable checkpoint in a subfolder
            assert {"last-checkpoint/optimizer.pt", "last-checkpoint/trainer_state.json"} <= commit["files"].keys()
            continue
        assert MODEL_FILES <= root, f"{commit['message']}: missing {MODEL_FILES - root}"
        assert not root & {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin"}, sorted(root)
        assert "Intermediate checkpoint" in commit["files"]["README.md"].decode()
    if strategy == "checkpoint":
        assert sum("last-checkpoint/model.safetensors" in commit["files"] for commit in during) == 2


def test_hub_revision_is_where_the_final_model_is_pushed(tmp_path, data_dir, tiny_encoder, fake_hub):
    training.main(tiny_args(
        tiny_encoder, tmp_path / "pushed", "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
        "sentiment", "--max_steps", "1", "--push_to_hub", "--hub_model_id", "someone/pushed", "--hub_revision", "dev",
    ))
    assert [commit["revision"] for commit in fake_hub["commits"]] == ["dev"]
    assert set(fake_hub["branches"]) == {("someone/pushed", "dev")}


# ---------------------------------------------------------------------------------------------------- 9. options


def test_an_older_runs_checkpoints_are_refused_before_any_work_unless_resuming(tmp_path, data_dir, tiny_encoder,
                                                                               monkeypatch):
    """A new run never mixes with an older run's checkpoints (a later --resume_from_checkpoint True would resume the
    older run): refused, unless --overwrite_model replaces that run. --resume_from_checkpoint takes true/yes/1 in any
    case."""
    out = tmp_path / "out"
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "2",
               "--save_strategy", "steps", "--save_steps", "1"]
    training.main(tiny_args(tiny_encoder, out, *options))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    with monkeypatch.context() as patch:
        patch.setattr(training, "prepare_data", lambda *a, **k: pytest.fail("data was loaded before the check"))
        only = tmp_path / "only-checkpoints"  # a run that died before saving its model
        for name in ("checkpoint-1", "checkpoint-2"):
            shutil.copytree(out / name, only / name)
        for extra in ([], ["--resume_from_checkpoint", "false"]):
            with pytest.raises(FileExistsError, match=r"checkpoint-1, checkpoint-2\). Resume that run with "
                               r"--resume_from_checkpoint, or pass --overwrite_model to replace that run"):
                training.main(tiny_args(tiny_encoder, only, *options, *extra))
        with pytest.raises(FileNotFoundError, match=r"--resume_from_checkpoint .*missing: no such folder"):
            training.main(tiny_args(tiny_encoder, out, *options, "--resume_from_checkpoint", str(out / "missing")))
        with pytest.raises(FileNotFoundError, match=r"holds no checkpoint-N folder"):
            training.main(tiny_args(tiny_encoder, tmp_path / "new", *options, "--resume_from_checkpoint", "TRUE"))
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched

    for word, expected in [("true", "True"), ("Yes", "True"), ("1", "True"), ("FALSE", None), ("no", None),
                           ("0", None), ("some/checkpoint-3", "some/checkpoint-3")]:
        *_, args = parse_args(["--resume_from_checkpoint", word])
        assert args.resume_from_checkpoint == expected, word
    # A resume with "yes" finds the last checkpoint; the run was complete, and the Trainer would train a step past
    # --max_steps: refused. With more steps it continues.
    with pytest.raises(ValueError, match=r"checkpoint-2 already trained 2 steps, --max_steps is 2: nothing is left"):
        training.main(tiny_args(tiny_encoder, out, *options, "--resume_from_checkpoint", "yes"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    training.main(tiny_args(tiny_encoder, out, *options[:-6], "--max_steps", "3", *options[-4:],
                            "--resume_from_checkpoint", "yes"))
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3

    # --overwrite_model replaces the run: its checkpoints go, the new run's are its own.
    assert (out / "checkpoint-3").is_dir()
    training.main(tiny_args(tiny_encoder, out, *options[:-4], "--max_steps", "1", "--save_strategy", "steps",
                            "--save_steps", "1", "--overwrite_model"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1


@pytest.mark.parametrize("options, message", [
    (["--eval_do_concat_batches", "false"], "--eval_do_concat_batches false is not supported"),
    (["--batch_eval_metrics", "true"], "--batch_eval_metrics true is not supported"),
])
def test_evaluation_options_that_lose_the_task_metrics_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        parse_args(options)


def test_metric_for_best_model_of_a_task_without_validation_labels_fails_before_training(tmp_path, data_dir,
                                                                                          tiny_encoder, monkeypatch):
    monkeypatch.setattr(training, "MultiTaskTrainer", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match=r"metric_for_best_model sentiment_accuracy: the validation data has no "
                                         r"'sentiment' labels.*Add sentiment labels to --validation_files"):
        training.main(tiny_args(
            tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
            "sentiment", "--validation_files", f"topic={data_dir / 'topic.jsonl'}", "--max_steps", "2",
            "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
            "--load_best_model_at_end", "--metric_for_best_model", "sentiment_accuracy",
        ))
    with pytest.raises(ValueError, match=r"metric_for_best_model eval_topic_acuracy is not a metric evaluation "
                                         r"reports; choose one of loss, topic_accuracy"):
        training.main(tiny_args(
            tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
            "sentiment", "--validation_files", f"topic={data_dir / 'topic.jsonl'}", "--max_steps", "2",
            "--eval_strategy", "steps", "--eval_steps", "1", "--metric_for_best_model", "eval_topic_acuracy",
        ))


def test_label_smoothing_trains_and_smooths_each_tasks_cross_entropy(tmp_path, data_dir, tiny_encoder,
                                                                      tiny_tokenizer):
    from sentence_multitask import SentenceMultiTaskModel

    metrics = training.main(tiny_args(
        tiny_encoder, tmp_path / "smoothed", "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
        "sentiment", "--validation_files", str(data_dir / "both_val.jsonl"), "--max_steps", "2",
        "--label_smoothing_factor", "0.1",
    ))
    assert math.isfinite(metrics["eval_loss"]) and "eval_topic_accuracy" in metrics
    state = json.loads((tmp_path / "smoothed" / "train_results.json").read_text())
    assert math.isfinite(state["train_loss"]) and state["train_loss"] > 0

    # The same batch, labelled with the model's own predictions: smoothing moves probability away from the predicted
    # (most probable) label, so the smoothed loss is higher; it is (1-e)*CE + e*mean(-log p) per task, task-weighted.
    data = prepare_data(DataArguments(train_files=[str(data_dir / "both.jsonl")], tasks=["topic", "sentiment"]),
                        tiny_tokenizer)
    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=data.tasks, task_weights={"topic": 2.0}).eval()
    batch = MultiTaskCollator(tiny_tokenizer, list(data.tasks))([data.train[i] for i in range(8)])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    batch["labels"] = {task: task_logits.argmax(-1) for task, task_logits in logits.items()}
    losses = {}
    for epsilon in (0.0, 0.1):
        args = MultiTaskTrainingArguments(output_dir=str(tmp_path / "run"), label_smoothing_factor=epsilon,
                                          eval_strategy="no", report_to="none", dataloader_pin_memory=False)
        trainer = MultiTaskTrainer(model=model, args=args, processing_class=tiny_tokenizer)
        with torch.no_grad():
            losses[epsilon] = trainer.compute_loss(model, dict(batch)).item()
    expected = 0.0
    for task, task_logits in logits.items():
        log_p = torch.log_softmax(task_logits.float(), -1)
        ce = -log_p.gather(1, batch["labels"][task][:, None]).mean()
        expected += model.config.task_weight(task) * (0.9 * ce + 0.1 * (-log_p.mean(-1)).mean()).item()
    assert losses[0.1] > losses[0.0]
    assert losses[0.1] == pytest.approx(expected, rel=1e-5)
    assert losses[0.0] == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_checkpoint_cards_say_what_they_are_and_the_card_shows_the_epochs_trained(tmp_path, data_dir, tiny_encoder,
                                                                                    joint_run):
    options, saved = joint_options(data_dir), joint_run
    final_card = (saved / "README.md").read_text(encoding="utf-8")
    # 48 rows, batch 8: 6 steps an epoch, so 2 steps are a third of one (not --num_train_epochs' 3).
    assert "| epochs | 0.3333 |" in final_card and "| topic | " in final_card

    out = tmp_path / "continued"
    training.main(tiny_args(tiny_encoder, out, *options, "--model", str(saved),
                            "--save_strategy", "steps", "--save_steps", "1"))
    for step in (1, 2):
        card = (out / f"checkpoint-{step}" / "README.md").read_text(encoding="utf-8")
        assert f"**Intermediate checkpoint** at step {step} (epoch {step / 6:.4g})" in card, card[:2000]
        assert "`topic`, `sentiment`" in card
        assert "not been fine-tuned" not in card and "No evaluation was run" not in card
        assert "| topic | " not in card  # not the metrics of the model training continued from
    assert "Intermediate checkpoint" not in (out / "README.md").read_text(encoding="utf-8")


def test_sequential_training_resumes_phase_one_from_its_checkpoint(tmp_path, data_dir, tiny_encoder, monkeypatch):
    from transformers import TrainerCallback

    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--training_mode",
               "sequential", "--primary_tasks", "topic", "--max_steps", "2", "--save_strategy", "steps",
               "--save_steps", "1", "--seed", "5"]
    training.main(tiny_args(tiny_encoder, tmp_path / "a", *options))

    class CrashInPhaseOne(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if args.output_dir.endswith("phase1") and state.global_step == 1:
                raise Interrupted("killed in phase 1")

    class CrashingTrainer(MultiTaskTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(CrashInPhaseOne())

    uninterrupted = weights(tmp_path / "a")
    for name, resume in (("b", "True"), ("c", "phase1/checkpoint-1")):
        out = tmp_path / name
        with monkeypatch.context() as patch:
            patch.setattr(training, "MultiTaskTrainer", CrashingTrainer)
            with pytest.raises(Interrupted):
                training.main(tiny_args(tiny_encoder, out, *options))
        with pytest.raises(FileExistsError, match=r"phase1/checkpoint-1\)"):
            training.main(tiny_args(tiny_encoder, out, *options))
        resume = resume if resume == "True" else str(out / resume)
        training.main(tiny_args(tiny_encoder, out, *options, "--resume_from_checkpoint", resume))
        resumed = weights(out)
        worst = max((uninterrupted[k].float() - resumed[k].float()).abs().max().item() for k in uninterrupted)
        assert worst <= 1e-6, f"resumed ({resume}) differs from the uninterrupted run by up to {worst}"
        assert json.loads((out / "phase2" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    with pytest.raises(FileNotFoundError, match="neither .*phase1 nor .*phase2 holds a checkpoint-N folder"):
        training.main(tiny_args(tiny_encoder, tmp_path / "d", *options, "--resume_from_checkpoint", "true"))
