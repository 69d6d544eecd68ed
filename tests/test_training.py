"""Acceptance tests of `sentence_multitask.training` and `sentence-multitask train`: the demo run, mixed data files,
task sampling and sequential training.

Only the first test trains the real all-MiniLM-L6-v2 (a few steps on the bundled demo set: the model must learn it);
every other test uses the tiny random encoder of `tiny_encoder` and small JSON Lines files written to tmp_path, and
calls `training.main` in-process, except where the process boundary is the point (loading as remote code). Bad data
and options: test_training_errors.py; resuming and checkpoints: test_training_resume.py; torchrun:
test_training_distributed.py; pushing to the Hub: test_push.py; what they share: training_helpers.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from . import training_helpers as shared
    from .conftest import run_python
    from .training_helpers import bit_identical, joint_options, subset, tiny_args, weights
except ImportError:  # tests/ collected as a plain directory
    import training_helpers as shared
    from conftest import run_python
    from training_helpers import bit_identical, joint_options, subset, tiny_args, weights
from sentence_multitask import training
from sentence_multitask.arguments import DataArguments, MultiTaskTrainingArguments
from sentence_multitask.data import IGNORE, LABEL_PREFIX, MultiTaskCollator, prepare_data, rows_with_labels
from sentence_multitask.sampling import MultiTaskSampler, source_shares
from sentence_multitask.trainer import MultiTaskTrainer

PACKAGE_DATA = Path(training.__file__).parent / "data"

# The shared fixtures of training_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
data_dir = shared.data_dir
tiny_tokenizer = shared.tiny_tokenizer
joint_run = shared.joint_run


# ---------------------------------------------------------------------------------------------------- helpers


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
    data = prepare_data(DataArguments(train_files=[f"topic={topic_file}", f"sentiment={sentiment_file}"]),
                        tiny_tokenizer)
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
