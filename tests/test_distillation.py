"""Distillation from teachers (BAM!), uncertainty loss balancing and annealed task sampling, on the tiny random
encoder of `tiny_encoder` and small JSON Lines files written to tmp_path."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sentence_multitask import SentenceMultiTaskModel, training
from sentence_multitask.arguments import parse_args, teacher_annealing_modes
from sentence_multitask.data import IGNORE, LABEL_PREFIX
from sentence_multitask.distillation import (
    TEACHER_PREFIX,
    DistillationCollator,
    add_teacher_logits,
    check_teachers,
    distillation_loss,
    task_teacher_annealing,
    teacher_weight,
)
from sentence_multitask.sampling import MultiTaskSampler, annealed_alpha, source_shares
from sentence_multitask import trainer as trainer_module
from sentence_multitask.trainer import LOSS_BALANCING_FILE, MultiTaskTrainer

TOPICS = {"sports": ["the team won the match", "the striker scored twice"],
          "health": ["the doctor changed my medicine", "my flu is finally gone"],
          "tech": ["the laptop update broke wifi", "the app crashes on start"]}
FEELINGS = {"negative": ["and it was awful", "sadly a disaster"], "positive": ["and it was wonderful", "what a joy"]}
TASKS = {"topic": sorted(TOPICS), "sentiment": sorted(FEELINGS)}


def write_rows(path: Path, n: int, seed: int, tasks=("topic", "sentiment")) -> str:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, feeling = rng.choice(sorted(TOPICS)), rng.choice(sorted(FEELINGS))
        row = {"text": f"{rng.choice(TOPICS[topic])} {rng.choice(FEELINGS[feeling])}" + " really" * rng.randint(0, 5)}
        row.update({task: value for task, value in (("topic", topic), ("sentiment", feeling)) if task in tasks})
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("distillation-data")
    return {"topic": write_rows(folder / "topic.jsonl", 24, 1, ("topic",)),
            "sentiment": write_rows(folder / "sentiment.jsonl", 16, 2, ("sentiment",)),
            "validation": write_rows(folder / "validation.jsonl", 12, 3)}


def save_teacher(folder: Path, encoder: str, tasks: dict[str, list[str]], seed: int = 0) -> str:
    torch.manual_seed(seed)
    SentenceMultiTaskModel.from_encoder(encoder, tasks=tasks).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_encoder) -> dict[str, str]:
    """Single-task teachers; the sentiment teacher lists its labels in the other order."""
    folder = tmp_path_factory.mktemp("teachers")
    return {"topic": save_teacher(folder / "topic", tiny_encoder, {"topic": TASKS["topic"]}, 1),
            "sentiment": save_teacher(folder / "sentiment", tiny_encoder, {"sentiment": ["positive", "negative"]}, 2)}


def run_args(tiny_encoder: str, out: Path, files: dict[str, str], *extra: str) -> list[str]:
    return ["--encoder", tiny_encoder, "--output_dir", str(out), "--per_device_train_batch_size", "8",
            "--train_files", f"topic={files['topic']}", f"sentiment={files['sentiment']}",
            "--labels", "topic=" + ",".join(TASKS["topic"]), "sentiment=" + ",".join(TASKS["sentiment"]),
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", "--head_dropout", "0", *extra]


# ---------------------------------------------------------------------------------------------------- the loss


def test_distillation_loss_is_the_supervised_loss_without_teacher_weight(tiny_encoder):
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS, task_weights={"sentiment": 3.0})
    torch.manual_seed(0)
    logits = {task: torch.randn(6, len(labels)) for task, labels in TASKS.items()}
    labels = {"topic": torch.tensor([0, 1, 2, IGNORE, 1, 0]), "sentiment": torch.tensor([1, IGNORE, 0, 0, 1, 1])}
    teachers = {task: torch.randn(6, len(names)) for task, names in TASKS.items()}
    for epsilon in (0.0, 0.1):
        plain = model.compute_loss(logits, labels, label_smoothing=epsilon)
        blended = sum(
            distillation_loss(model.compute_loss({t: logits[t]}, {t: labels[t]}, label_smoothing=epsilon), logits[t],
                              teachers[t], teacher_weight(10, 10), temperature=2.0,
                              task_weight=model.config.task_weight(t))
            for t in TASKS)
        torch.testing.assert_close(blended, plain)


def test_pure_distillation_of_a_student_equal_to_its_teacher_has_zero_gradient():
    torch.manual_seed(0)
    teacher = torch.randn(5, 3) * 4
    teacher[2] = float("nan")  # a row without teacher logits
    for temperature in (1.0, 2.0):
        student = torch.where(torch.isnan(teacher), torch.randn(5, 3), teacher).requires_grad_()
        supervised = torch.nn.functional.cross_entropy(student, torch.tensor([0, 1, 2, 0, 1]))
        loss = distillation_loss(supervised, student, teacher, teacher_weight=1.0, temperature=temperature)
        (gradient,) = torch.autograd.grad(loss, student)
        assert loss.abs().item() < 1e-6 and gradient.abs().max().item() < 1e-6
        other = (teacher.nan_to_num() + torch.randn(5, 3)).requires_grad_()
        loss = distillation_loss(supervised.detach(), other, teacher, 1.0, temperature)
        (gradient,) = torch.autograd.grad(loss, other)
        assert gradient.abs().max().item() > 1e-3 and gradient[2].abs().max().item() == 0  # NaN rows: no teacher


def test_teacher_weight_anneals_linearly_from_one_to_zero_or_stays_constant():
    assert [teacher_weight(step, 4) for step in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert teacher_weight(3, 4, "constant", 0.3) == 0.3
    with pytest.raises(ValueError, match="linear, constant"):
        teacher_weight(0, 4, "cosine")


# ---------------------------------------------------------------------------------------------------- teachers


def test_teacher_labels_in_another_order_are_mapped_by_name(tiny_encoder, teachers):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    texts = ["what a joy", "the app crashes on start and it was awful", "my flu is finally gone"]
    table = {**tokenizer(texts), LABEL_PREFIX + "sentiment": [1, 0, IGNORE], LABEL_PREFIX + "topic": [0, 1, 2]}
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    dataset = add_teacher_logits(datasets.Dataset.from_dict(table), {"sentiment": teachers["sentiment"]}, student,
                                 tokenizer, batch_size=2)
    stored = np.asarray(dataset[TEACHER_PREFIX + "sentiment"], dtype=np.float32)
    teacher = SentenceMultiTaskModel.from_pretrained(teachers["sentiment"]).eval()
    with torch.no_grad():
        own = teacher(**tokenizer(texts[:2], padding=True, return_tensors="pt")).logits["sentiment"].numpy()
    # The teacher's labels are [positive, negative], the student's [negative, positive].
    np.testing.assert_allclose(stored[:2], own[:, ::-1], atol=1e-5)
    assert np.isnan(stored[2]).all()  # a row without a sentiment label gets no teacher logits
    batch = DistillationCollator(tokenizer, ["topic", "sentiment"])([dataset[i] for i in range(3)])
    assert list(batch["teacher_logits"]) == ["sentiment"] and batch["teacher_logits"]["sentiment"].shape == (3, 2)


def test_teacher_logits_are_cached_and_read_back_until_the_teacher_or_the_data_changes(tmp_path, tiny_encoder, teachers,
                                                                                       monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    ids = [tokenizer(text)["input_ids"] for text in ("the team won", "what a joy it was", "the app crashes")]
    data = datasets.Dataset.from_dict({"input_ids": ids, LABEL_PREFIX + "topic": [0, IGNORE, 2]})
    first = add_teacher_logits(data, {"topic": teachers["topic"]}, student, tokenizer)[TEACHER_PREFIX + "topic"]
    assert len(list((tmp_path / "cache" / "sentence_multitask_teacher_logits").glob("*.npy"))) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("the teacher ran although its logits are cached")

    with monkeypatch.context() as patched:
        patched.setattr(SentenceMultiTaskModel, "forward", no_forward)
        again = add_teacher_logits(data, {"topic": teachers["topic"]}, student, tokenizer)[TEACHER_PREFIX + "topic"]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    # The same labelled rows among other rows (another file's, unlabelled for the task) read the same logits back.
    longer = datasets.concatenate_datasets([datasets.Dataset.from_dict({"input_ids": ids[:1], LABEL_PREFIX + "topic":
                                                                        [IGNORE]}), data])
    with monkeypatch.context() as patched:
        patched.setattr(SentenceMultiTaskModel, "forward", no_forward)
        shifted = add_teacher_logits(longer, {"topic": teachers["topic"]}, student, tokenizer)[TEACHER_PREFIX + "topic"]
    assert np.isnan(shifted[0]).all()
    np.testing.assert_array_equal(np.asarray(shifted[1:]), np.asarray(first))
    other_teacher = save_teacher(tmp_path / "other", tiny_encoder, {"topic": TASKS["topic"]}, seed=5)
    add_teacher_logits(data, {"topic": other_teacher}, student, tokenizer)
    other_rows = data.map(lambda row: {"input_ids": row["input_ids"][:-2] + row["input_ids"][-1:]})
    add_teacher_logits(other_rows, {"topic": teachers["topic"]}, student, tokenizer)
    assert len(list((tmp_path / "cache" / "sentence_multitask_teacher_logits").glob("*.npy"))) == 3
    with monkeypatch.context() as patched:
        patched.setattr(datasets, "is_caching_enabled", lambda: False)
        patched.setattr(SentenceMultiTaskModel, "forward", no_forward)
        with pytest.raises(AssertionError, match="the teacher ran"):
            add_teacher_logits(data, {"topic": teachers["topic"]}, student, tokenizer)


def test_teachers_on_every_row_also_train_each_head_on_the_other_tasks_texts(tmp_path, tiny_encoder, teachers,
                                                                            monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS)
    texts = ["the team won", "what a joy it was", "the app crashes"]
    data = datasets.Dataset.from_dict({**tokenizer(texts), LABEL_PREFIX + "topic": [0, IGNORE, 2],
                                       LABEL_PREFIX + "sentiment": [IGNORE, 1, IGNORE]})
    column = TEACHER_PREFIX + "topic"
    labelled_only = add_teacher_logits(data, {"topic": teachers["topic"]}, student.config, tokenizer)
    labelled_only = np.asarray(labelled_only[column])
    everywhere = add_teacher_logits(data, {"topic": teachers["topic"]}, student.config, tokenizer, rows="all")
    every_row = np.asarray(everywhere[column])
    assert np.isnan(labelled_only[1]).all() and np.isfinite(every_row).all()
    np.testing.assert_allclose(every_row[[0, 2]], labelled_only[[0, 2]], atol=1e-5)
    # Each row set is cached apart: the labelled rows' file is not read back as every row's.
    assert len(list((tmp_path / "cache" / "sentence_multitask_teacher_logits").glob("*.npy"))) == 2
    with pytest.raises(ValueError, match="--teacher_rows must be one of labelled, all, got 'some'"):
        add_teacher_logits(data, {"topic": teachers["topic"]}, student.config, tokenizer, rows="some")
    # The sentiment row, which has no topic label, now trains the topic head through the teacher term.
    batch = DistillationCollator(tokenizer, ["topic", "sentiment"])([everywhere[1]])
    args = parse_args(["--output_dir", str(tmp_path / "out"), "--eval_strategy", "no"])[2]
    trainer = MultiTaskTrainer(model=student, args=args)
    trainer.state.max_steps = 10
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    trainer.training_loss(student, logits, batch["labels"], batch["teacher_logits"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.heads["topic"].parameters())


def test_a_task_with_several_teachers_distils_from_their_mean_probabilities(tmp_path, tiny_encoder, teachers):
    from transformers import AutoTokenizer

    from sentence_multitask.distillation import parse_teachers

    second = save_teacher(tmp_path / "second", tiny_encoder, {"sentiment": ["negative", "positive"]}, seed=9)
    items = [f"sentiment={teachers['sentiment']}", f"topic={teachers['topic']}", f"sentiment={second}"]
    parsed = parse_teachers(items)
    assert parsed == {"sentiment": [teachers["sentiment"], second], "topic": [teachers["topic"]]}
    with pytest.raises(ValueError, match="gives sentiment=.* twice"):
        parse_teachers([*items, f"sentiment={second}"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    table = {**tokenizer(["what a joy", "it was awful", "the team won"]), LABEL_PREFIX + "sentiment": [1, 0, IGNORE]}
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    data = datasets.Dataset.from_dict(table)
    ensemble = np.asarray(add_teacher_logits(data, {"sentiment": parsed["sentiment"]}, student, tokenizer)[
        TEACHER_PREFIX + "sentiment"], dtype=np.float32)
    members = [np.asarray(add_teacher_logits(data, {"sentiment": source}, student, tokenizer)[
        TEACHER_PREFIX + "sentiment"], dtype=np.float32) for source in parsed["sentiment"]]
    mean = np.mean([torch.from_numpy(m[:2]).softmax(-1).numpy() for m in members], axis=0)
    np.testing.assert_allclose(np.exp(ensemble[:2]), mean, atol=1e-6)  # the second teacher's labels in another order
    assert not np.allclose(members[0][:2], members[1][:2]) and np.isnan(ensemble[2]).all()


def test_an_ensemble_of_very_sure_teachers_gives_finite_logits_and_loss(monkeypatch, tiny_encoder):
    from transformers import AutoTokenizer

    from sentence_multitask import distillation

    members = iter([np.array([[60.0, -60.0]], dtype=np.float32), np.array([[70.0, -50.0]], dtype=np.float32)])
    monkeypatch.setattr(distillation, "_cached_teacher_logits", lambda *args: next(members))
    monkeypatch.setattr(distillation, "check_teachers",
                        lambda teachers, config, tokenizer, folds=0: {"sentiment": [("a", [0, 1]), ("b", [0, 1])]})
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    data = datasets.Dataset.from_dict({**tokenizer(["what a joy"]), LABEL_PREFIX + "sentiment": [0]})
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    logits = torch.tensor(add_teacher_logits(data, {"sentiment": ["a", "b"]}, student, tokenizer)[
        TEACHER_PREFIX + "sentiment"])
    assert torch.isfinite(logits).all()
    np.testing.assert_allclose(logits.exp().sum(-1), [1.0], atol=1e-6)
    loss = distillation_loss(torch.tensor(0.5), torch.zeros(1, 2, requires_grad=True), logits, 1.0, 1.0, 2.0)
    assert torch.isfinite(loss)


def test_a_teacher_without_the_task_or_with_other_labels_is_refused_by_name(tmp_path, tiny_encoder, teachers):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    with pytest.raises(ValueError, match=r"--teachers sentiment=.*has no task 'sentiment' \(its tasks are \['topic'\]"):
        check_teachers({"sentiment": teachers["topic"]}, student, tokenizer)
    other = save_teacher(tmp_path / "other", tiny_encoder, {"sentiment": ["bad", "good"]})
    with pytest.raises(ValueError, match=r"its labels \['bad', 'good'\] are not the student's \['negative', 'posi"):
        check_teachers({"sentiment": other}, student, tokenizer)
    with pytest.raises(ValueError, match=r"--teachers names task 'emotion', but the tasks are"):
        check_teachers({"emotion": teachers["topic"]}, student, tokenizer)
    for missing, problem in ((tmp_path / "nope", "does not exist"), (tmp_path / "other" / "config.json", "is a file")):
        with pytest.raises(FileNotFoundError, match=rf"--teachers topic={missing}: {missing} {problem}; give the "):
            training.main(["--teachers", f"topic={missing}", "--output_dir", str(tmp_path / "out")])


# ---------------------------------------------------------------------------------------------------- training


def test_training_with_teachers_and_gradient_accumulation(tmp_path, tiny_encoder, files, teachers, monkeypatch):
    weights = {}  # number of labels (the task) -> teacher weights used

    def recording(supervised, student_logits, teacher_logits, teacher_weight, *args):
        weights.setdefault(student_logits.shape[-1], []).append(teacher_weight)
        return distillation_loss(supervised, student_logits, teacher_logits, teacher_weight, *args)

    monkeypatch.setattr(trainer_module, "distillation_loss", recording)
    training.main(run_args(tiny_encoder, tmp_path, files, "--teachers", f"topic={teachers['topic']}",
                           f"sentiment={teachers['sentiment']}", "--distillation_temperature", "2", "--max_steps", "2",
                           "--gradient_accumulation_steps", "2", "--teacher_annealing", "constant", "topic=linear",
                           "--distillation_weight", "0.7", "--task_sampling", "annealed", "--teacher_rows", "all"))
    assert list(SentenceMultiTaskModel.from_pretrained(tmp_path).config.tasks) == ["topic", "sentiment"]
    card = (tmp_path / "README.md").read_text()
    assert ("temperature 2.0, teacher weight topic annealed linearly from 1 to 0, sentiment constant 0.7, on every "
            "training row" in card)
    assert set(weights[len(TASKS["sentiment"])]) == {0.7}
    assert sorted(set(weights[len(TASKS["topic"])]), reverse=True) == [1.0, 0.5]  # steps 0 and 1 of 2


class Interrupted(Exception):
    pass


def test_resume_with_teachers_and_uncertainty_weighting_is_exact(tmp_path, tiny_encoder, files, teachers, monkeypatch):
    from transformers import TrainerCallback

    options = ["--teachers", f"sentiment={teachers['sentiment']}", "--loss_balancing", "uncertainty",
               "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3", "--seed", "5"]
    training.main(run_args(tiny_encoder, tmp_path / "a", files, *options))

    class CrashAfterCheckpoint3(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Interrupted

    class CrashingTrainer(MultiTaskTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(CrashAfterCheckpoint3())

    with monkeypatch.context() as patch:
        patch.setattr(training, "MultiTaskTrainer", CrashingTrainer)
        with pytest.raises(Interrupted):
            training.main(run_args(tiny_encoder, tmp_path / "b", files, *options))
    halfway = torch.load(tmp_path / "b" / "checkpoint-3" / LOSS_BALANCING_FILE)["log_variances"]
    assert halfway.abs().max() > 0  # learned, and saved with the checkpoint
    training.main(run_args(tiny_encoder, tmp_path / "b", files, *options, "--resume_from_checkpoint",
                           str(tmp_path / "b" / "checkpoint-3")))

    uninterrupted, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("a", "b"))
    worst = max((uninterrupted[k] - resumed[k]).abs().max().item() for k in uninterrupted)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by up to {worst}"
    final = [torch.load(tmp_path / name / "checkpoint-6" / LOSS_BALANCING_FILE)["log_variances"] for name in "ab"]
    torch.testing.assert_close(final[0], final[1], rtol=0, atol=1e-6)
    assert not torch.equal(final[1], halfway)
    assert LOSS_BALANCING_FILE not in os.listdir(tmp_path / "a")  # not part of the saved model


@pytest.mark.parametrize("option, value, message", [
    ("--distillation_temperature", "0", "--distillation_temperature must be positive"),
    ("--distillation_weight", "1.5", r"--distillation_weight must be in \[0, 1\]"),
])
def test_bad_options_are_refused_by_name(option, value, message):
    with pytest.raises(ValueError, match=message):
        parse_args([option, value])


@pytest.mark.parametrize("values, message", [
    (["cosine"], r"--teacher_annealing must be one of linear, constant, got 'cosine'"),
    (["linear", "sentiment=cosine"], r"--teacher_annealing must be one of linear, constant, got 'sentiment=cosine'"),
    (["linear", "constant"], r"--teacher_annealing gives 2 modes for every task \(linear, constant\); give one"),
    (["topic=linear", "topic=constant"], r"--teacher_annealing gives 'topic' twice"),
])
def test_bad_teacher_annealing_is_refused_by_name(values, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        parse_args(["--teacher_annealing", *values])
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"teacher_annealing": values if len(values) > 1 else values[0]}))
    with pytest.raises(ValueError, match=message):
        parse_args([str(options)])


def test_teacher_annealing_per_task():
    assert teacher_annealing_modes(["linear", "sentiment=constant"]) == {None: "linear", "sentiment": "constant"}
    assert teacher_annealing_modes(["topic=constant"]) == {None: "linear", "topic": "constant"}
    teachers = {"topic": ["t"], "sentiment": ["s"]}
    assert task_teacher_annealing(["constant", "topic=linear"], teachers) == {"topic": "linear",
                                                                             "sentiment": "constant"}
    assert task_teacher_annealing(parse_args([])[2].teacher_annealing, teachers) == {"topic": "linear",
                                                                                 "sentiment": "linear"}
    with pytest.raises(ValueError, match=r"--teacher_annealing names 'emotion', which --teachers does not distil"):
        task_teacher_annealing(["emotion=constant"], teachers)


@pytest.mark.parametrize("option, value, choices", [
    ("--loss_balancing", "gradnorm", "static, uncertainty"),
    ("--task_sampling", "annealing", "proportional, temperature, round_robin, annealed"),
    ("--teacher_rows", "every", "labelled, all"),
])
def test_a_value_outside_the_choices_is_refused_by_name(option, value, choices, tmp_path, capsys):
    with pytest.raises(SystemExit):  # on the command line: argparse, with the choices
        parse_args([option, value])
    assert re.search(rf"argument {option}\S*: invalid choice: '{value}'", capsys.readouterr().err)
    options = tmp_path / "options.json"  # in an options file: the arguments' own check
    options.write_text(json.dumps({option.removeprefix("--"): value}))
    with pytest.raises(ValueError, match=f"{option} must be one of {choices}"):
        parse_args([str(options)])


# ---------------------------------------------------------------------------------------------------- sampling


def test_annealed_sampling_changes_the_shares_across_epochs():
    sizes = [900, 100]
    assert [annealed_alpha(epoch, 3) for epoch in range(3)] == pytest.approx([1.0, 0.6, 0.2])
    assert annealed_alpha(0, 1) == 1.0
    sources = np.repeat([0, 1], sizes)
    sampler = MultiTaskSampler(sources, None, batch_size=10, mode="annealed", seed=3, group_by_length=False, epochs=3)
    for epoch, alpha in enumerate((1.0, 0.6, 0.2)):
        expected = np.power(sizes, alpha) / np.power(sizes, alpha).sum()
        np.testing.assert_allclose(source_shares(sizes, "annealed", epoch=epoch, epochs=3), expected)
        sampler.set_epoch(epoch)
        drawn = np.bincount(sources[np.array(list(sampler))], minlength=2) / len(sources)
        np.testing.assert_allclose(drawn, expected, atol=0.04)


def test_annealed_sampling_spans_the_epochs_the_run_trains():
    from types import SimpleNamespace

    args = SimpleNamespace(max_steps=-1, num_train_epochs=2.5, per_device_train_batch_size=8, world_size=1,
                           gradient_accumulation_steps=1)
    epochs = lambda rows: MultiTaskTrainer.training_epochs(SimpleNamespace(args=args), rows)
    assert epochs(40) == 3
    args.max_steps = 12  # 40 rows in batches of 8: 5 steps per epoch
    assert epochs(40) == 3
    args.gradient_accumulation_steps = 2  # 2 optimizer steps per epoch
    assert epochs(40) == 6
