"""Training data: files or Hub splits -> checked `datasets` with one label column per task -> tokenised rows.

`sentence-multitask evaluate` reads its files with the same functions, so both commands accept and refuse the same data.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
from datasets.fingerprint import generate_random_fingerprint
import numpy as np
import torch

from . import REFERENCE_TASKS, task_labels
from .arguments import DataArguments, parse_key_values, parse_labels
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL, SentenceMultiTaskConfig
from .batching_sentence_multitask import max_tokens
from .folds import FOLD_COLUMN, text_fold, without_fold
from .inference_sentence_multitask import labelled

logger = logging.getLogger(__name__)

IGNORE = -100  # label id of a row without a label for a task
LABEL_PREFIX = "labels_"


class DataError(ValueError):
    """Bad training data: the message names the file, the row and the fix."""


@dataclass
class DataSpec:
    """One data source: a file or Hub data set, and the tasks whose labels it carries."""

    source: str
    tasks: list[str] | None  # None: every task whose label column the source has
    is_hub: bool = False

    @property
    def name(self) -> str:
        return self.source


def parse_specs(items: Sequence[str] | None, is_hub: bool = False) -> list[DataSpec]:
    specs = []
    for item in items or []:
        prefix, sep, source = item.partition("=")
        if sep and not os.path.exists(item):
            tasks = [task.strip() for task in prefix.split(",") if task.strip()]
            specs.append(DataSpec(source=source.strip(), tasks=tasks, is_hub=is_hub))
        else:
            specs.append(DataSpec(source=item.strip(), tasks=None, is_hub=is_hub))
    return specs


def demo_files() -> tuple[str, str]:
    folder = resources.files("sentence_multitask") / "data"
    return str(folder / "demo_train.jsonl"), str(folder / "demo_validation.jsonl")


def load_source(spec: DataSpec, split: str, max_rows: int | None = None) -> datasets.Dataset:
    """Load one file or Hub split as a `datasets.Dataset`, with errors that name the file."""
    if spec.is_hub:
        name, _, config = spec.source.partition(":")
        dataset = datasets.load_dataset(name, config or None, split=split)
    else:
        path = spec.source
        if not os.path.isfile(path):
            options = "--eval_files" if split == "evaluation" else "--train_files / --validation_files"
            problem = "is a folder; give one file per item (TASK=PATH)" if os.path.isdir(path) else "no such file"
            raise DataError(f"{path}: {problem}. Check the path given to {options}.")
        suffix = Path(path).suffix.lower()
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
        if builder is None:
            raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet.")
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty; it needs at least one labelled row.")
        if builder == "json":
            _check_json_lines(path)
        try:
            dataset = datasets.load_dataset(builder, data_files=path, split="train")
        except Exception as error:  # datasets wraps parser errors in several exception types
            cause = error.__cause__ or error.__context__  # the parser's own message, e.g. the bad line
            detail = f"{error} ({cause})" if cause is not None and str(cause) not in str(error) else str(error)
            raise DataError(f"{path}: could not be read as {builder.upper()}: {detail}") from error
    if len(dataset) == 0:
        raise DataError(f"{spec.name} ({split}): no rows; give a file or split with labelled examples.")
    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.select(range(max_rows))
    return dataset


def _check_json_lines(path: str) -> None:
    """JSON Lines must be UTF-8 with one object per line; name the first bad line."""
    with open(path, "rb") as handle:
        if handle.read(4096).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
            return  # a JSON array file
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            try:
                # The reader skips a byte-order mark (some editors and Excel write one) too.
                line = (raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw).decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {number}: not UTF-8 ({error}); re-encode the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: malformed JSON ({error.msg}); fix or remove the line.") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object per line, got {type(value).__name__}.")


def is_missing_label(value: Any) -> bool:
    """None, or NaN: a blank cell of a CSV id column is read as NaN or None."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_id(value: Any) -> int | None:
    """`value` as a label id: an int, or a float that is a whole number (a CSV id column with a blank cell is read as
    floats: 0.0, 1.0, ...); None for anything else (names, 0.5, booleans)."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_label_types(spec: DataSpec, dataset: datasets.Dataset, columns: dict[str, str], split: str,
                      task_types: dict[str, str] | None = None) -> None:
    """A single-label task's column holds names (str) or ids (whole numbers), not both, and nothing else; name the
    first offending row. (The cells of the other task types are checked as they are encoded.)"""
    for task, column in columns.items():
        if (task_types or {}).get(task, SINGLE_LABEL) != SINGLE_LABEL:
            continue
        kind = None
        for index, value in enumerate(dataset[column]):
            if is_missing_label(value):
                continue
            found = "name" if isinstance(value, str) else "id" if label_id(value) is not None else None
            if found is None or (kind is not None and found != kind):
                expected = f"label {kind}s like the rows before it" if kind else "a label name or id"
                if found is None and isinstance(value, float):
                    expected += " (an id is a whole number; numeric targets: --task_types TASK=regression)"
                if isinstance(value, list):
                    expected += " (a list of labels: --task_types TASK=multi_label)"
                raise DataError(
                    f"{spec.name} ({split}), {row_name(spec, index)}: label {value!r} of type {type(value).__name__} "
                    f"for task {task!r} (column {column!r}); expected {expected}. Use one kind of label per column."
                )
            kind = found


def row_name(spec: DataSpec, index: int) -> str:
    """Human position of a row: the line number in JSON Lines and CSV files."""
    suffix = Path(spec.source).suffix.lower()
    if suffix == ".jsonl":
        return f"line {index + 1}"
    if suffix == ".csv":
        return f"line {index + 2}"
    return f"row {index}"


def label_column_for(task: str, dataset: datasets.Dataset, label_columns: dict[str, str], spec: DataSpec) -> str | None:
    columns = dataset.column_names
    if task in label_columns:
        return label_columns[task] if label_columns[task] in columns else None
    if task in columns:
        return task
    if spec.tasks is not None and "label" in columns:
        return "label"
    return None


def resolve_columns(spec, dataset, tasks, label_columns, text_column, split) -> dict[str, str]:
    """Which column holds which task's labels in this source; errors name the missing column."""
    stray = [task for task in label_columns if task not in tasks]
    if stray:  # a misspelt task would otherwise fall back to a column named like the task, or `label`
        raise DataError(f"--label_columns names task(s) {stray}, but the tasks are {list(tasks)}; give TASK=COLUMN "
                        "for those.")
    if text_column not in dataset.column_names:
        raise DataError(
            f"{spec.name} ({split}): no text column {text_column!r}; its columns are {dataset.column_names}. "
            "Name the right one with --text_column."
        )
    wanted = spec.tasks if spec.tasks is not None else tasks
    unknown = [task for task in wanted if task not in tasks]
    if unknown:
        raise DataError(f"{spec.name}: names task(s) {unknown}, but the tasks are {tasks}; the TASK= prefix of this "
                        "file must name one of them.")
    columns = {}
    for task in wanted:
        column = label_column_for(task, dataset, label_columns, spec)
        if column is None:
            if spec.tasks is None:
                continue  # this file does not carry that task
            expected = label_columns.get(task, f"{task!r} or 'label'")
            raise DataError(
                f"{spec.name} ({split}): no label column for task {task!r} (looked for {expected}); its columns are "
                f"{dataset.column_names}. Name it with --label_columns {task}=COLUMN."
            )
        columns[task] = column
    if not columns:
        raise DataError(
            f"{spec.name} ({split}): carries no label column of the tasks {tasks}; its columns are "
            f"{dataset.column_names}. Prefix the file with its task (TASK=PATH) or use --label_columns."
        )
    return columns


def infer_labels(sources, tasks: list[str], given: dict[str, list[str]], task_types: dict[str, str] | None = None,
                 delimiters: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Label lists: as given, else the sorted distinct string labels of the training data (logged); a regression
    task's outputs are named after the task (`task`, or `task_0`, `task_1`, ... for lists of numbers)."""
    labels = {}
    task_types, delimiters = task_types or {}, delimiters or {}
    for task in tasks:
        carriers = [(dataset, columns[task]) for spec, dataset, columns in sources if task in columns]
        if task in given and carriers:  # a carrying file with no label at all is named by prepare_data's build()
            labels[task] = given[task]
            continue
        kind = task_types.get(task, SINGLE_LABEL)
        if kind == REGRESSION:
            count = task_labels.output_count(value for dataset, column in carriers for value in dataset[column])
            labels[task] = [task] if count == 1 else [f"{task}_{i}" for i in range(count)]
            continue
        if kind == MULTI_LABEL:
            found = {value for dataset, column in carriers
                     for value in task_labels.infer_multi_label(dataset[column], delimiters.get(task))}
        else:
            found = {value for dataset, column in carriers for value in dataset[column] if not is_missing_label(value)}
        if not found:
            raise DataError(f"Task {task!r} has no labelled training row; give data for it (TASK=PATH in --train_files, "
                            "or a column named like the task), or drop it from --tasks / --labels.")
        if not all(isinstance(value, str) for value in found):
            raise DataError(
                f"Task {task!r} has numeric labels in its training data; list its label names with "
                f"--labels {task}=NAME0,NAME1,... so that ids map to names."
            )
        labels[task] = sorted(found)
        logger.info("Labels of task %r inferred from the training data (sorted): %s", task, labels[task])
    return labels


def encode_labels(spec, dataset, columns, labels, text_column, split, task_types: dict[str, str] | None = None,
                  delimiters: dict[str, str] | None = None, allow_empty: bool = True) -> dict[str, list]:
    """Check every text and label before training starts; return each task's labels: class ids of a single-label
    task (-100 = no label), 0/1 rows of a multi-label task and target rows of a regression task (NaN = no label)."""
    for index, text in enumerate(dataset[text_column]):
        if text is not None and not isinstance(text, str):
            raise DataError(
                f"{spec.name} ({split}), {row_name(spec, index)}: the text is {text!r} ({type(text).__name__}), not "
                f"a string; make column {text_column!r} hold texts (in JSON, quote them)."
            )
        if text is None or not text.strip():
            raise DataError(
                f"{spec.name} ({split}), {row_name(spec, index)}: the text is empty or missing ({text!r}); "
                "remove the row or fill in its text."
            )
    encoded = {}
    for task, column in columns.items():
        kind = (task_types or {}).get(task, SINGLE_LABEL)
        if kind != SINGLE_LABEL:
            encoded[task] = _encode_rows(spec, dataset[column], task, column, labels[task], kind, split,
                                         (delimiters or {}).get(task), allow_empty)
            continue
        names = labels[task]
        index_of = {name: i for i, name in enumerate(names)}
        ids = []
        for index, value in enumerate(dataset[column]):
            number = label_id(value)
            if is_missing_label(value):
                ids.append(IGNORE)
            elif isinstance(value, str) and value in index_of:
                ids.append(index_of[value])
            elif number is not None and (0 <= number < len(names) or number == IGNORE):
                ids.append(number)
            else:
                kind = "label" if isinstance(value, str) else f"label of type {type(value).__name__}"
                if isinstance(value, float) and number is None:
                    kind = "fractional label id"  # 0.5: ids are whole numbers
                raise DataError(
                    f"{spec.name} ({split}), {row_name(spec, index)}: unknown {kind} {value!r} for task {task!r} "
                    f"(column {column!r}); the labels are {names} (or their ids 0-{len(names) - 1}, whole numbers). "
                    + ("Fix the row: the model was trained on these labels." if split == "evaluation" else
                       f"Fix the row or add the label with --labels {task}=...")
                )
        encoded[task] = ids
    return encoded


def _encode_rows(spec, values, task, column, names, kind, split, delimiter, allow_empty) -> list[list[float]]:
    """The rows of a multi-label or regression column; a bad cell stops with its file, row and the fix."""
    nan_is_blank = Path(spec.source).suffix.lower() == ".csv"  # a blank CSV cell reads as NaN
    rows = []
    for index, value in enumerate(values):
        try:
            if kind == MULTI_LABEL:
                rows.append(task_labels.multi_hot(value, names, delimiter, allow_empty))
            else:
                rows.append(task_labels.targets(value, len(names), nan_is_blank))
        except task_labels.LabelProblem as problem:
            raise DataError(f"{spec.name} ({split}), {row_name(spec, index)}: {kind.replace('_', '-')} task {task!r} "
                            f"(column {column!r}): {problem}.") from None
    return rows


@dataclass
class PreparedData:
    tasks: dict[str, list[str]]
    train: datasets.Dataset
    validation: datasets.Dataset | None
    train_sizes: list[int]  # rows per training source, in source order (column "source")
    description: dict[str, str]
    validation_description: dict[str, str]
    dataset_names: list[str]
    # Config settings of the heads the data calls for: task_types, target_stats, class_weights (None: defaults).
    heads: dict[str, Any] | None = None


def prepare_data(data_args: DataArguments, tokenizer, given_labels: dict[str, list[str]] | None = None,
                 given_types: dict[str, str] | None = None, folds: int = 0) -> PreparedData:
    """Load, check, label-encode and tokenise every source; concatenate them with a `source` column. `given_labels`
    and `given_types`: a saved model's label lists and task types, unless the options give them anew. `folds`: the
    training rows also get their `text_fold` of that many folds (FOLD_COLUMN), for --teacher_folds."""
    train_specs = parse_specs(data_args.train_files) + parse_specs(data_args.dataset_names, is_hub=True)
    validation_specs = parse_specs(data_args.validation_files)
    if data_args.dataset_names and data_args.validation_split:
        validation_specs += parse_specs(data_args.dataset_names, is_hub=True)
    if not train_specs:
        if validation_specs:
            raise ValueError("--validation_files needs --train_files (or --dataset_names): without them training uses "
                             "the bundled demo set and its own validation file.")
        train_file, validation_file = demo_files()
        train_specs, validation_specs = parse_specs([train_file]), parse_specs([validation_file])
        logger.info("No --train_files given: training on the bundled demo set (%s).", train_file)
    label_spec = parse_labels(data_args.labels)
    tasks = list(data_args.tasks or label_spec or [])
    label_spec = {**(given_labels or {}), **label_spec}  # a saved model's label lists, unless given anew
    for spec in train_specs:
        tasks += [task for task in (spec.tasks or []) if task not in tasks]
    if not tasks:
        tasks = list(given_labels or []) if data_args.train_files or data_args.dataset_names else list(REFERENCE_TASKS)
    if not tasks:
        raise ValueError("No tasks named: use --tasks, --labels TASK=..., or TASK=PATH in --train_files.")
    label_columns = parse_key_values(data_args.label_columns, "--label_columns")

    delimiters = parse_key_values(data_args.label_delimiter, "--label_delimiter")
    given_types = {**(given_types or {}), **task_labels.parse_task_types(data_args.task_types, tasks)}

    def load_all(specs, split, max_rows):
        loaded = []
        for spec in specs:
            dataset = load_source(spec, split, max_rows)
            columns = resolve_columns(spec, dataset, tasks, label_columns, data_args.text_column, split)
            loaded.append((spec, dataset, columns))
        return loaded

    train_sources = load_all(train_specs, data_args.train_split, data_args.max_train_samples)
    validation_sources = load_all(validation_specs, data_args.validation_split or "validation", data_args.max_eval_samples)
    types = task_labels.detect_types(train_sources, tasks, given_types)
    for sources, split in ((train_sources, data_args.train_split),
                           (validation_sources, data_args.validation_split or "validation")):
        for spec, dataset, columns in sources:
            check_label_types(spec, dataset, columns, split, types)
    labels = infer_labels(train_sources, tasks, label_spec, types, delimiters)
    if data_args.holdout_fold:  # after the labels and types: every fold's model gets the same label list
        holdout = data_args.holdout_fold
        train_sources = [(spec, without_fold(spec.name, dataset, data_args.text_column, holdout), columns)
                         for spec, dataset, columns in train_sources]
    train_rows: dict[str, list] = {task: [] for task in labels}

    def build(sources, split, folds=0):
        parts = []
        for number, (spec, dataset, columns) in enumerate(sources):
            ids = encode_labels(spec, dataset, columns, labels, data_args.text_column, split, types, delimiters,
                                data_args.allow_empty_labels)
            if split == data_args.train_split:
                for task, task_ids in ids.items():
                    train_rows[task] += task_ids
                    if not labelled(np.asarray(task_ids, dtype=np.float64)).any():
                        raise DataError(
                            f"{spec.name} ({split}): every row lacks a label for task {task!r}; fill the column "
                            f"{columns[task]!r} or do not assign the task to this file."
                        )
            table = {"text": dataset[data_args.text_column], "source": [number] * len(dataset)}
            if folds:
                table[FOLD_COLUMN] = [text_fold(text, folds) for text in table["text"]]
            for task in labels:
                missing = IGNORE if types[task] == SINGLE_LABEL else [task_labels.NAN] * len(labels[task])
                table[LABEL_PREFIX + task] = ids.get(task, [missing] * len(dataset))
            parts.append(datasets.Dataset.from_dict(table))
        combined = datasets.concatenate_datasets(parts)
        return combined.map(
            lambda batch: tokenize(batch, tokenizer, data_args.max_length),
            batched=True,
            remove_columns=["text"],
            num_proc=data_args.preprocessing_num_workers,
            desc=f"Tokenising {split}",
            # The data is in memory, so no cache file is looked up: without a fingerprint of its own, datasets would
            # pickle the tokenizer to compute one, on every run.
            new_fingerprint=generate_random_fingerprint(),
        )

    train = build(train_sources, data_args.train_split, folds)
    validation = build(validation_sources, data_args.validation_split or "validation") if validation_sources else None
    description = {}
    for task in labels:
        files = [f"{Path(spec.source).name if not spec.is_hub else spec.source} ({len(dataset)} rows)"
                 for spec, dataset, columns in train_sources if task in columns]
        held_out = f", without fold {data_args.holdout_fold} (--holdout_fold)" if data_args.holdout_fold else ""
        description[task] = "trained on " + ", ".join(files) + held_out
    validation_description = {
        task: ", ".join(Path(spec.source).name if not spec.is_hub else spec.source
                        for spec, _, columns in validation_sources if task in columns)
        for task in labels
    }
    names = [spec.source for spec, _, _ in train_sources if spec.is_hub]
    heads = {
        "task_types": {task: kind for task, kind in types.items() if kind != SINGLE_LABEL} or None,
        "target_stats": {task: task_labels.target_stats(train_rows[task]) for task in labels
                         if types[task] == REGRESSION} or None,
        "class_weights": task_labels.class_weights(data_args.class_weights, types, labels, train_rows) or None,
    }
    SentenceMultiTaskConfig(tasks=labels, **heads)  # the config's own checks, before any training
    return PreparedData(
        tasks=labels,
        train=train,
        validation=validation,
        train_sizes=[len(dataset) for _, dataset, _ in train_sources],
        description=description,
        validation_description={task: value for task, value in validation_description.items() if value},
        dataset_names=names,
        heads=heads,
    )


def tokenize(batch: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded


class MultiTaskCollator:
    """Pads token ids to the longest text in the batch and gathers one label tensor per active task."""

    def __init__(self, tokenizer, tasks: Sequence[str]):
        self.tokenizer = tokenizer
        self.tasks = list(tasks)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{key: row[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in row} for row in rows]
        batch = dict(self.tokenizer.pad(features, padding="longest", return_tensors="pt"))
        batch["labels"] = {}
        for task in self.tasks:
            values = [row[LABEL_PREFIX + task] for row in rows]
            # Class ids of a single-label task; 0/1 rows (multi-label) or targets (regression) of the others.
            dtype = torch.float32 if isinstance(values[0], list) else torch.long
            batch["labels"][task] = torch.tensor(values, dtype=dtype)
        return batch


def rows_with_labels(dataset: datasets.Dataset | None, tasks: Sequence[str]) -> datasets.Dataset | None:
    """The rows of `dataset` that have a label for at least one of `tasks`."""
    if dataset is None:
        return None
    keep = np.zeros(len(dataset), dtype=bool)
    for task in tasks:
        keep |= labelled(np.asarray(dataset[LABEL_PREFIX + task], dtype=np.float64))
    return dataset if keep.all() else dataset.select(np.flatnonzero(keep))


def usable_max_length(max_length: int, encoder_config, tokenizer) -> int:
    """--max_length capped as inference caps it (`max_tokens`): at the encoder's position embeddings and the
    tokenizer's model_max_length, with a warning; the encoder cannot take longer texts."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    used = max_tokens(max_length, max_length, positions, tokenizer_limit)
    if used < max_length:
        limits = [name for name, limit in (("the encoder's max_position_embeddings", positions),
                                           ("the tokenizer's model_max_length", tokenizer_limit)) if limit == used]
        logger.warning("--max_length %d is more than the encoder takes (%s: %d): texts are truncated to %d tokens, "
                       "and the model is saved with max_length %d.", max_length, " and ".join(limits), used, used, used)
    return used
