"""Resuming and continuing training: an interrupted run resumed from its checkpoint ends with the weights of an
uninterrupted one (joint and sequential), continued training keeps the saved model's tasks, an older run's checkpoints
are refused unless resuming, checkpoints carry their own cards; and the training options checked before training
(evaluation options, metric_for_best_model) or applied in it (label smoothing). The tiny random encoder, in-process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

try:
    from . import training_helpers as shared
    from .training_helpers import bit_identical, joint_options, tiny_args, weights
except ImportError:  # tests/ collected as a plain directory
    import training_helpers as shared
    from training_helpers import bit_identical, joint_options, tiny_args, weights
from sentence_multitask import training
from sentence_multitask.arguments import DataArguments, MultiTaskTrainingArguments, parse_args
from sentence_multitask.checkpoints import last_checkpoint, save_checkpoint_model
from sentence_multitask.data import MultiTaskCollator, prepare_data
from sentence_multitask.trainer import MultiTaskTrainer

# The shared fixtures of training_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
data_dir = shared.data_dir
tiny_tokenizer = shared.tiny_tokenizer
joint_run = shared.joint_run


# ---------------------------------------------------------------------------------------------------- 1. resume


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


# ---------------------------------------------------------------------------------------------------- 2. options


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
        with pytest.raises(FileNotFoundError, match=r"holds no complete checkpoint-N folder"):
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

    # A checkpoint that a killed run left part-written (no trainer_state.json, written last) is passed over.
    (out / "checkpoint-3" / "trainer_state.json").unlink()
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


def test_a_checkpoints_model_appears_complete_or_not_at_all(tmp_path):
    folder = tmp_path / "checkpoint-4"

    def save(path, files=("modeling.py", "model.safetensors", "config.json")):
        os.makedirs(path)
        for name in files:
            (Path(path) / name).write_text(name)

    def killed(path):
        save(path, files=("modeling.py",))
        raise KeyboardInterrupt  # stands for the kill: nothing after this line runs

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_model(killed, str(folder))
    assert not folder.exists() and last_checkpoint(str(tmp_path)) is None
    save_checkpoint_model(save, str(folder))  # the next save replaces the part-written staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "modeling.py"]
    other = tmp_path / "checkpoint-6"  # another process wrote its RNG state into the folder first
    other.mkdir()
    (other / "rng_state_1.pth").write_text("rng")
    save_checkpoint_model(save, str(other))
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "model.safetensors", "modeling.py",
                                                       "rng_state_1.pth"]
    assert last_checkpoint(str(tmp_path)) is None  # no trainer_state.json yet
    (folder / "trainer_state.json").write_text("{}")
    assert last_checkpoint(str(tmp_path)) == str(folder)
