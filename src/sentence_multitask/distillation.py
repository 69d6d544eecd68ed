"""Distillation from single-task teachers with teacher annealing (BAM!, Clark et al. 2019).

A teacher is any saved sentence-multitask model that has the task. Its labels are matched to the student's by name;
its logits are computed once before training, for the rows labelled for the task (the rows whose gold label the
distillation term sits beside) or for every row (`--teacher_rows all`: the other tasks' texts then train the task's
head too, as multi-task self-training does, Ghiasi et al. 2021), and stored as a `teacher_<task>` column of the
training set (NaN on the rows without). With `--teacher_folds N` a task's N teachers are cross-fitted: the K-th was
trained without fold K of the rows (`--holdout_fold K/N`) and labels only that fold, so no soft label comes from a
teacher that saw its row.
The collator puts them in the batch, so training runs no teacher forward pass. The loss of a distilled task is

    (1 - w) * supervised + w * task_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

where the teacher weight `w` goes linearly from 1 to 0 over training (teacher annealing) or stays constant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers.utils.logging import tqdm

from .arguments import (TEACHER_ANNEALING_MODES, check_teacher_rows, parse_key_values, teacher_annealing_modes,
                        teacher_annealing_of)
from .configuration_sentence_multitask import SINGLE_LABEL, SentenceMultiTaskConfig
from .data import LABEL_PREFIX, MultiTaskCollator
from .folds import FOLD_COLUMN
from .batching_sentence_multitask import CPU_BATCH_TOKENS, length_sorted_batches
from .inference_sentence_multitask import labelled, load_tokenizer, not_a_model_folder
from .modeling_sentence_multitask import SentenceMultiTaskModel

logger = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher_"


def parse_teachers(items: Sequence[str] | None) -> dict[str, list[str]]:
    """--teachers TASK=MODEL items as {task: [model folder or Hub id, ...]}: a task named several times is distilled
    from the ensemble of its teachers. A local path that is no folder is named here, before any model or data is
    loaded."""
    teachers: dict[str, list[str]] = {}
    for item in items or []:
        task, source = next(iter(parse_key_values([item], "--teachers").items()))
        if os.path.realpath(source) in map(os.path.realpath, teachers.get(task, [])):
            raise ValueError(f"--teachers gives {task}={source} twice; give each teacher once.")
        problem = not_a_model_folder(source)
        if problem:
            raise FileNotFoundError(f"--teachers {task}={source}: {source} {problem}; give the folder of a saved "
                                    "sentence-multitask model (or its Hub id).")
        teachers.setdefault(task, []).append(source)
    return teachers


def check_teacher_folds(teachers: Mapping[str, Sequence[str]], folds: int) -> None:
    """With --teacher_folds N, every distilled task names N teachers (the K-th trained with --holdout_fold K/N); an
    error names the task and how many it has. Checked before any data is read."""
    if not folds:
        return
    if not teachers:
        raise ValueError(f"--teacher_folds {folds} needs --teachers: name {folds} teachers per distilled task.")
    for task, sources in teachers.items():
        if len(sources) != folds:
            raise ValueError(f"--teacher_folds {folds}: --teachers names {len(sources)} teacher(s) of {task!r}; name "
                             f"{folds}, in fold order: {task}=MODEL_0 ... where MODEL_K was trained with "
                             f"--holdout_fold K/{folds}.")


def teacher_sources(teachers: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    """{task: [source, ...]} of teachers given as one source or several per task."""
    return {task: [sources] if isinstance(sources, str) else list(sources) for task, sources in teachers.items()}


def teacher_label_order(teacher_config, task: str, labels: Sequence[str], source: str) -> list[int]:
    """The teacher's logit column of each of the student's `labels` of `task`, matched by name; an error names the
    teacher and what does not match."""
    teacher_tasks = teacher_config.tasks
    if task not in teacher_tasks:
        raise ValueError(f"--teachers {task}={source}: that model has no task {task!r} (its tasks are "
                         f"{list(teacher_tasks)}); give a model trained on {task!r}.")
    if teacher_config.task_type(task) != SINGLE_LABEL:
        raise ValueError(f"--teachers {task}={source}: its task {task!r} is {teacher_config.task_type(task)}; "
                         "distillation applies to single-label tasks.")
    theirs = list(teacher_tasks[task])
    if sorted(theirs) != sorted(labels):
        raise ValueError(f"--teachers {task}={source}: its labels {theirs} are not the student's {list(labels)}; "
                         "a teacher needs the same label names (in any order).")
    return [theirs.index(label) for label in labels]


def check_teachers(teachers: Mapping[str, str | Sequence[str]], student_config, tokenizer,
                   folds: int = 0) -> dict[str, list[tuple[str, list[int]]]]:
    """Load each teacher's config and check it against the student (task, single-label type, label names,
    vocabulary; with `folds`, its --holdout_fold) before any teacher weights are read; returns each task's teachers
    with their label order (`teacher_label_order`)."""
    checked: dict[str, list[tuple[str, list[int]]]] = {}
    for task, source in ((task, source) for task, sources in teacher_sources(teachers).items() for source in sources):
        if task not in student_config.tasks:
            raise ValueError(f"--teachers names task {task!r}, but the tasks are {list(student_config.tasks)}.")
        if student_config.task_type(task) != SINGLE_LABEL:
            raise ValueError(f"--teachers {task}=...: task {task!r} is {student_config.task_type(task)}; "
                             "distillation applies to single-label tasks.")
        try:
            config = SentenceMultiTaskConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ValueError(f"--teachers {task}={source}: not a saved sentence-multitask model ({error}).") from None
        order = teacher_label_order(config, task, student_config.tasks[task], source)
        # The teacher reads the student's token ids (the texts are tokenised once, before training).
        if load_tokenizer(source, config.encoder).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"--teachers {task}={source}: its tokenizer's vocabulary differs from the student's; "
                             "the teacher reads the student's token ids, so give a teacher trained from the same "
                             "encoder family.")
        if folds:
            check_teacher_fold(task, source, config, len(checked.get(task, [])), folds)
        checked.setdefault(task, []).append((source, order))
    return checked


def check_teacher_fold(task: str, source: str, config, fold: int, folds: int) -> None:
    """The `fold`-th teacher of `task` under --teacher_folds `folds` was trained with --holdout_fold fold/folds: a
    teacher named out of order would label rows it trained on."""
    expected = f"{fold}/{folds}"
    held_out = getattr(config, "holdout_fold", None)
    if held_out != expected:
        trained = f"with --holdout_fold {held_out}" if held_out else "without --holdout_fold"
        raise ValueError(f"--teacher_folds {folds}: teacher {fold} of {task!r} ({source}) was trained {trained}, not "
                         f"{expected}; name the teachers of each task in fold order (the K-th trained with "
                         f"--holdout_fold K/{folds}), or train that one with --holdout_fold {expected}.")


def teacher_logits_key(teacher: SentenceMultiTaskModel, task: str, order: Sequence[int], ids: Sequence[Sequence[int]],
                       precision: str, device: torch.device, rows: str = "labelled") -> str:
    """What the teacher logits of `task` depend on, hashed: the teacher's weights and pooling, the label order, the
    token ids, the precision and the kind of device (a GPU's fp32 differs from a CPU's in the last bits)."""
    # The first item names what a cached file holds (the logits of the labelled or of all rows, in their order).
    digest = hashlib.sha256(json.dumps([f"{rows} rows", task, list(order), teacher.config.pooling, precision,
                                        device.type]).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(np.asarray([len(row) for row in ids], dtype=np.int64).tobytes())
    digest.update(np.asarray([token for row in ids for token in row], dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def teacher_logits_cache() -> str | None:
    """The folder of cached teacher logits, in the `datasets` cache (`HF_DATASETS_CACHE`); None where `datasets`
    caching is off (`datasets.disable_caching()`)."""
    if not datasets.is_caching_enabled():
        return None
    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "sentence_multitask_teacher_logits")


def add_teacher_logits(dataset: datasets.Dataset, teachers: Mapping[str, str | Sequence[str]], student_config,
                       tokenizer, device: torch.device | str = "cpu", batch_size: int = 128,
                       bf16: bool = False, rows: str = "labelled", folds: int = 0) -> datasets.Dataset:
    """`dataset` with a `teacher_<task>` column per task: its teacher's logits in the student's label order on the
    rows labelled for the task (`rows="labelled"`) or on every row (`rows="all"`), NaN on the others; with several
    teachers, the log of their mean probabilities (the ensemble's distribution, as MT-DNN's distillation averages its
    teachers' soft targets), or with `folds` (--teacher_folds; the dataset has a FOLD_COLUMN) the K-th teacher's logits
    on the rows of fold K. One batched, length-sorted pass per teacher, under inference mode; each teacher's logits
    are cached (`teacher_logits_cache`), so a later run with the same teacher and data reads them back."""
    check_teacher_rows(rows)
    check_teacher_folds(teacher_sources(teachers), folds)
    device = torch.device(device)
    fold_of = np.asarray(dataset[FOLD_COLUMN]) if folds else None
    for task, checked in check_teachers(teachers, student_config, tokenizer, folds).items():
        chosen = (np.arange(len(dataset)) if rows == "all"
                  else np.flatnonzero(labelled(np.asarray(dataset[LABEL_PREFIX + task]))))
        logits = np.full((len(dataset), len(checked[0][1])), np.nan, dtype=np.float32)
        if fold_of is not None:  # cross-fitted: each teacher labels the chosen rows of its own held-out fold
            for fold, (source, order) in enumerate(checked):
                part = chosen[fold_of[chosen] == fold]
                logits[part] = _cached_teacher_logits(source, task, order, _token_ids(dataset, part), tokenizer,
                                                      device, batch_size, bf16, rows)
        else:  # one teacher, or an ensemble, on every chosen row
            ids = _token_ids(dataset, chosen)
            members = [_cached_teacher_logits(source, task, order, ids, tokenizer, device, batch_size, bf16, rows)
                       for source, order in checked]
            if len(members) > 1:  # log of the mean probability, finite however sure each teacher is
                log_probabilities = torch.stack([torch.from_numpy(member).log_softmax(-1) for member in members])
                members = [(torch.logsumexp(log_probabilities, 0) - math.log(len(members))).numpy()]
            logits[chosen] = members[0]
        dataset = dataset.add_column(TEACHER_PREFIX + task, logits.tolist())
    return dataset


def _token_ids(dataset: datasets.Dataset, rows: np.ndarray) -> list:
    """The token ids of `rows` of `dataset`."""
    return list(dataset.select(rows)["input_ids"]) if len(rows) else []


def _cached_teacher_logits(source: str, task: str, order: list[int], ids: list, tokenizer, device: torch.device,
                           batch_size: int, bf16: bool, rows: str) -> np.ndarray:
    """One teacher's logits (see `_teacher_logits`), read from the cache where they are in it, else computed and
    written there."""
    cache = teacher_logits_cache()
    teacher = SentenceMultiTaskModel.from_pretrained(source).to(device).eval()
    path = cache and os.path.join(
        cache, teacher_logits_key(teacher, task, order, ids, "bf16" if bf16 else "fp32", device, rows) + ".npy")
    if path and os.path.isfile(path):
        try:
            logits = np.load(path)
        except (OSError, ValueError) as error:  # a damaged file: computed again and replaced
            logger.warning("Cached teacher logits %s could not be read (%s); computing them again.", path, error)
        else:
            if logits.shape == (len(ids), len(order)):
                logger.info("Teacher logits of task %r from %s: read from the cache, %s", task, source, path)
                return logits
    logits = _teacher_logits(teacher, task, order, ids, tokenizer, device, batch_size, bf16)
    logger.info("Teacher logits of task %r from %s on %d rows%s", task, source, len(ids),
                f", cached in {path}" if path else "")
    if path:
        os.makedirs(cache, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=cache, suffix=".partial")  # unique across processes and hosts
        with os.fdopen(handle, "wb") as file:
            np.save(file, logits)
        os.replace(partial, path)  # complete or absent, whoever else writes the same file
    return logits


def _teacher_logits(teacher, task: str, order: Sequence[int], ids: list, tokenizer, device: torch.device,
                    batch_size: int, bf16: bool) -> np.ndarray:
    """The teacher's logits of `task` (student's label order) on the rows of token `ids`."""
    logits = np.empty((len(ids), len(order)), dtype=np.float32)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    # The rows are token ids already: the identity "tokenizer" hands them to the shared length-sorted batching.
    batches = length_sorted_batches(ids, lambda texts: texts, batch_size, pad_id=tokenizer.pad_token_id or 0,
                                    device=device, token_cap=CPU_BATCH_TOKENS if device.type == "cpu" else None,
                                    show_progress_bar=None, progress_bar=tqdm)
    with torch.inference_mode(), autocast, contextlib.closing(batches):
        for positions, inputs in batches:
            scores = teacher(**inputs).logits[task][:, order]
            logits[positions] = scores.float().cpu().numpy()
    return logits


def teacher_weight(step: int, max_steps: int, annealing: str = "linear", constant: float = 0.5) -> float:
    """The weight of the teacher term at optimizer step `step` of `max_steps`: linear annealing goes from 1 at the
    first step towards 0 at the last; constant keeps `constant`. A function of the step only, so a resumed run
    continues exactly."""
    if annealing == "constant":
        return constant
    if annealing != "linear":
        raise ValueError(f"teacher annealing must be one of {', '.join(TEACHER_ANNEALING_MODES)}, got {annealing!r}.")
    return max(0.0, 1.0 - step / max(1, max_steps))


def task_teacher_annealing(items: Sequence[str] | None, teachers: Mapping[str, Any]) -> dict[str, str]:
    """Each distilled task's --teacher_annealing mode (`teacher_annealing_modes`); a task named there without a
    teacher is refused by name."""
    modes = teacher_annealing_modes(items)
    strays = [task for task in modes if task is not None and task not in teachers]
    if strays:
        raise ValueError(f"--teacher_annealing names {', '.join(map(repr, strays))}, which --teachers does not "
                         f"distil (it distils {list(teachers)}); name only tasks that have a teacher.")
    return {task: teacher_annealing_of(items, task) for task in teachers}


def distillation_loss(supervised: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      teacher_weight: float, temperature: float = 1.0, task_weight: float = 1.0) -> torch.Tensor:
    """`(1 - w) * supervised + w * task_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))`, the KL
    averaged over the rows that have teacher logits (rows of NaN have none).

    Args:
        supervised: the task's supervised loss on this batch, already weighted by its task weight (the model's
            `compute_loss` of this one task).
        student_logits, teacher_logits: `(batch, labels)`, in the same label order.
        teacher_weight: `w`, in [0, 1].
        temperature: `T`; `T^2` keeps the gradient's scale independent of it (Hinton et al. 2015).
        task_weight: the task's static weight, applied to the distillation term as it is to `supervised`.
    """
    teacher_logits = teacher_logits.to(student_logits.device)
    rows = labelled(teacher_logits)
    if teacher_weight == 0 or not bool(rows.any()):
        distilled = student_logits.sum() * 0.0  # keeps the head in the graph
    else:
        student = nn.functional.log_softmax(student_logits[rows].float() / temperature, dim=-1)
        teacher = nn.functional.log_softmax(teacher_logits[rows].float() / temperature, dim=-1)
        distilled = nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2
    return (1.0 - teacher_weight) * supervised + teacher_weight * task_weight * distilled


class DistillationCollator(MultiTaskCollator):
    """`MultiTaskCollator` that also gathers the `teacher_<task>` columns of the active tasks into
    `batch["teacher_logits"]` (task -> float tensor `(batch, labels)`, NaN rows: no teacher)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(rows)
        teachers = {task: torch.tensor([row[TEACHER_PREFIX + task] for row in rows], dtype=torch.float32)
                    for task in self.tasks if TEACHER_PREFIX + task in rows[0]}
        if teachers:
            batch["teacher_logits"] = teachers
        return batch
