"""Cross-fitted teachers: `--holdout_fold K/N` trains without one fold of the rows, `--teacher_folds N` has the K-th
teacher of a task label only the rows of fold K. On the tiny random encoder and small JSON Lines files."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from sentence_multitask import SentenceMultiTaskModel
from sentence_multitask.arguments import DataArguments, parse_args, parse_holdout_fold
from sentence_multitask.cli import main
from sentence_multitask.data import IGNORE, LABEL_PREFIX, prepare_data
from sentence_multitask.distillation import TEACHER_PREFIX, add_teacher_logits, check_teacher_folds
from sentence_multitask.folds import FOLD_COLUMN, text_fold, without_fold

TASKS = {"topic": ["sports", "tech"], "sentiment": ["negative", "positive"]}
TEXTS = [f"{subject} {verb} {ending}" for subject in ("the team", "the app", "my phone", "our coach")
         for verb in ("won", "crashed", "broke", "scored") for ending in ("today", "again", "at last")]


def write_file(path: Path, texts: list[str]) -> str:
    rows = [{"text": text, "topic": "sports" if "team" in text or "coach" in text else "tech",
             "sentiment": "positive" if "won" in text or "scored" in text else "negative"} for text in texts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_a_text_is_in_the_same_fold_in_every_process_and_the_folds_are_balanced():
    # Pinned: a hash that changed between processes or releases (Python's hash()) would mix the teachers' folds.
    texts = ["the team won today", "the app crashed again", "my phone broke at last", "headline number 7", "x",
             "é unicode"]
    assert [text_fold(text, 2) for text in texts] == [0, 1, 1, 0, 1, 0]
    assert [text_fold(text, 5) for text in texts] == [4, 2, 4, 4, 3, 4]
    many = [text_fold(f"headline number {number}", 2) for number in range(2000)]
    assert set(many) == {0, 1} and 900 < sum(many) < 1100
    assert {text_fold(f"text {number}", 5) for number in range(200)} == set(range(5))


def test_holdout_fold_trains_without_exactly_its_fold(tmp_path, tiny_encoder):
    dataset = datasets.Dataset.from_dict({"text": TEXTS})
    for fold in (0, 1):
        kept = without_fold("rows", dataset, "text", f"{fold}/2")["text"]
        assert kept == [text for text in TEXTS if text_fold(text, 2) != fold]
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    path = write_file(tmp_path / "train.jsonl", TEXTS)
    args = DataArguments(train_files=[path], tasks=["topic", "sentiment"], holdout_fold="1/2")
    data = prepare_data(args, tokenizer)
    assert len(data.train) == sum(text_fold(text, 2) != 1 for text in TEXTS)
    assert f"({len(data.train)} rows), without fold 1/2 (--holdout_fold)" in data.description["topic"]
    # A label only the held-out fold has is still one of the model's labels (every fold's model gets the same list).
    rare = {"text": "the doctor changed my medicine", "topic": "health", "sentiment": "positive"}
    assert text_fold(rare["text"], 2) == 1
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(rare) + "\n")
    assert prepare_data(args, tokenizer).tasks["topic"] == ["health", "sports", "tech"]
    with pytest.raises(ValueError, match="one.jsonl: --holdout_fold .* leaves no row of its 1"):
        without_fold("one.jsonl", datasets.Dataset.from_dict({"text": ["x"]}), "text", f"{text_fold('x', 2)}/2")


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "0/1", "0/-2"])
def test_a_bad_holdout_fold_is_refused_by_name(value):
    with pytest.raises(ValueError, match=f"--holdout_fold expects K/N .*got '{value}'"):
        parse_args(["--holdout_fold", value])
    assert parse_holdout_fold("2/3") == (2, 3) and parse_holdout_fold(None) is None


def test_teacher_folds_need_that_many_teachers_of_every_distilled_task():
    with pytest.raises(ValueError, match="--teacher_folds is a number of folds, at least 2"):
        parse_args(["--teacher_folds", "1"])
    with pytest.raises(ValueError, match="--teacher_folds 2 needs --teachers"):
        check_teacher_folds({}, 2)
    with pytest.raises(ValueError, match=r"names 1 teacher\(s\) of 'sentiment'; name 2, in fold order"):
        check_teacher_folds({"topic": ["a", "b"], "sentiment": ["c"]}, 2)
    check_teacher_folds({"topic": ["a"]}, 0)  # off: any number of teachers


def test_each_cross_fitted_teacher_labels_only_its_held_out_fold(tmp_path, tiny_encoder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    teachers = []
    for fold in (0, 1):
        torch.manual_seed(fold)
        teachers.append(str(tmp_path / f"teacher{fold}"))
        teacher = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": TASKS["topic"]})
        teacher.config.holdout_fold = f"{fold}/2"  # as training with --holdout_fold records it
        teacher.save_pretrained(teachers[-1])
    student = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).config
    labels = [IGNORE if number % 5 == 0 else number % 2 for number in range(len(TEXTS))]
    folds = [text_fold(text, 2) for text in TEXTS]
    data = datasets.Dataset.from_dict({**tokenizer(TEXTS), LABEL_PREFIX + "topic": labels, FOLD_COLUMN: folds})
    column = TEACHER_PREFIX + "topic"
    crossed = np.asarray(add_teacher_logits(data, {"topic": teachers}, student, tokenizer, folds=2)[column])
    alone = [np.asarray(add_teacher_logits(data, {"topic": [teacher]}, student, tokenizer)[column])
             for teacher in teachers]
    for row, (label, fold) in enumerate(zip(labels, folds)):
        if label == IGNORE:
            assert np.isnan(crossed[row]).all()
        else:
            np.testing.assert_allclose(crossed[row], alone[fold][row], atol=1e-5)
            assert not np.allclose(crossed[row], alone[1 - fold][row], atol=1e-3)
    assert {0, 1} <= {fold for label, fold in zip(labels, folds) if label != IGNORE}
    # Named out of fold order, each would label the rows it trained on: refused, naming the teacher.
    with pytest.raises(ValueError, match=r"teacher 0 of 'topic' \(.*teacher1\) was trained with --holdout_fold 1/2, "
                                         r"not 0/2; name the teachers of each task in fold order"):
        add_teacher_logits(data, {"topic": teachers[::-1]}, student, tokenizer, folds=2)
    with pytest.raises(ValueError, match="was trained with --holdout_fold 0/2, not 0/3"):
        add_teacher_logits(data, {"topic": [*teachers, teachers[0]]}, student, tokenizer, folds=3)


def test_training_with_cross_fitted_teachers_end_to_end(tmp_path, tiny_encoder):
    train = write_file(tmp_path / "train.jsonl", TEXTS)
    common = ["--encoder", tiny_encoder, "--tasks", "topic", "sentiment", "--train_files", train, "--max_steps", "2",
              "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
              "--report_to", "none", "--disable_tqdm", "true"]
    for fold in (0, 1):
        main(["train", *common, "--holdout_fold", f"{fold}/2", "--output_dir", str(tmp_path / f"teacher{fold}")])
    assert SentenceMultiTaskModel.from_pretrained(tmp_path / "teacher1").config.holdout_fold == "1/2"
    main(["train", *common, "--output_dir", str(tmp_path / "full")])
    with pytest.raises(SystemExit, match=r"teacher 1 of 'topic' \(.*full\) was trained without --holdout_fold"):
        main(["train", *common, "--teachers", f"topic={tmp_path / 'teacher0'}", f"topic={tmp_path / 'full'}",
              "--teacher_folds", "2", "--output_dir", str(tmp_path / "y")])
    teachers = [f"{task}={tmp_path / f'teacher{fold}'}" for task in TASKS for fold in (0, 1)]
    with pytest.raises(SystemExit, match="names 2 teacher"):
        main(["train", *common, "--teachers", *teachers, "--teacher_folds", "3", "--output_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # refused before anything was written
    main(["train", *common, "--teachers", *teachers, "--teacher_folds", "2", "--output_dir", str(tmp_path / "student")])
    card = (tmp_path / "student" / "README.md").read_text()
    assert "cross-fitted over 2 folds: each teacher labels the rows it did not train on" in card
