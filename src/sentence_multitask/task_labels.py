"""Labels of every task type, from data to training rows: the type of each task (`--task_types`, or a column of lists),
the checks and encoding of multi-label lists and regression targets, the standardisation of regression targets and
the class weights (`--class_weights`).

A single-label task's row holds a class id (-100: no label); a multi-label task's row one 0/1 value per label and a
regression task's row one value per output (a row of NaN: no label). `inference_sentence_multitask.labelled` tells the
labelled rows apart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arguments import parse_key_values
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TASK_TYPES

NAN = float("nan")


def parse_task_types(items, tasks) -> dict[str, str]:
    """--task_types TASK=TYPE items; an error names the option and the bad item."""
    types = parse_key_values(items, "--task_types")
    for task, kind in types.items():
        if task not in tasks:
            raise ValueError(f"--task_types names task {task!r}, but the tasks are {list(tasks)}; give TASK=TYPE for "
                             "those.")
        if kind not in TASK_TYPES:
            raise ValueError(f"--task_types {task}={kind}: unknown type; use one of {', '.join(TASK_TYPES)}.")
    return types


def detect_types(sources, tasks, given: dict[str, str]) -> dict[str, str]:
    """Every task's type: as given, else multi-label where every labelled training cell of the task holds a list,
    else single-label (a regression task must be named in --task_types: numbers are also class ids). A column that
    mixes lists and names stays single-label, and its first list is then refused with its file and line."""
    types = {}
    for task in tasks:
        if task in given:
            types[task] = given[task]
            continue
        values = [value for _, dataset, columns in sources if task in columns for value in dataset[columns[task]]
                  if has_value(value)]
        lists = bool(values) and all(isinstance(value, list) for value in values)
        types[task] = MULTI_LABEL if lists else SINGLE_LABEL
    return types


def has_value(value: Any) -> bool:
    """Whether a cell holds a label at all (None and a blank CSV cell, NaN, do not)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def label_names(value: Any, delimiter: str | None) -> list:
    """The labels of one multi-label cell: a list of names or ids, or a `delimiter`-separated string of names (a
    string without a delimiter is one name)."""
    if isinstance(value, str):
        parts = value.split(delimiter) if delimiter else [value]
        return [part.strip() for part in parts if part.strip()]
    return list(value)


def infer_multi_label(values, delimiter: str | None) -> set:
    """The distinct labels in a multi-label column."""
    return {label for value in values if has_value(value) and isinstance(value, (str, list))
            for label in label_names(value, delimiter)}


def output_count(values) -> int:
    """The number of outputs of a regression column: 1 for numbers, the length of its lists otherwise."""
    for value in values:
        if isinstance(value, list):
            return len(value)
        if has_value(value):
            return 1
    return 1


class LabelProblem(ValueError):
    """A bad cell: the message says what is wrong and how to fix it (the caller adds the file, row and column)."""


def multi_hot(value: Any, names: list[str], delimiter: str | None, allow_empty: bool) -> list[float]:
    """One 0/1 value per label of a multi-label cell; NaN for each when the cell has no value."""
    if not has_value(value):
        return [NAN] * len(names)
    if not isinstance(value, (str, list)):
        raise LabelProblem(f"{value!r} of type {type(value).__name__} is no label list; give a list of label names "
                           "(or ids), a string of names with --label_delimiter TASK=;, or null")
    labels = label_names(value, delimiter)
    if not labels and not allow_empty:
        raise LabelProblem("empty label list, which --allow_empty_labels false refuses; give the row its labels, "
                           "null to leave the task out for this row, or allow empty lists")
    row = [0.0] * len(names)
    index_of = {name: i for i, name in enumerate(names)}
    for label in labels:
        if isinstance(label, str) and label in index_of:
            row[index_of[label]] = 1.0
        elif type(label) is int and 0 <= label < len(names):
            row[label] = 1.0
        else:
            hint = ""
            if isinstance(label, str) and delimiter is None and any(mark in label for mark in ",;|"):
                hint = " If the cell lists several labels in one string, name the separator with --label_delimiter TASK=;."
            raise LabelProblem(f"unknown label {label!r} in {value!r}; the labels are {names} (or their ids "
                               f"0-{len(names) - 1}). Fix the row or add the label with --labels TASK=...{hint}")
    return row


def targets(value: Any, outputs: int, nan_is_missing: bool) -> list[float]:
    """The regression targets of one cell (a number, or a list of one number per output); NaN for each when the cell
    has no value. `nan_is_missing`: a NaN is a blank cell (CSV), not a bad value."""
    if value is None or (nan_is_missing and isinstance(value, float) and math.isnan(value)):
        return [NAN] * outputs
    numbers = value if isinstance(value, list) else [value]
    if len(numbers) != outputs:
        raise LabelProblem(f"{value!r} holds {len(numbers)} value(s), but the task has {outputs} output(s); give one "
                           "number per output")
    for number in numbers:
        if isinstance(number, str):
            raise LabelProblem(f"{number!r} is a string, not a number; write numbers unquoted (3.5, not \"3.5\"), "
                               "or null for a row without a value")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise LabelProblem(f"{number!r} of type {type(number).__name__} is not a number; give a number, or null")
        if math.isnan(number):
            raise LabelProblem("NaN is not a target value; write null (or leave the field out) for a row without one")
        if math.isinf(number):
            raise LabelProblem(f"{number!r} is not a finite number; give a finite target, or null")
    return [float(number) for number in numbers]


def target_stats(rows: list[list[float]]) -> dict[str, list[float]]:
    """Mean and standard deviation of each output over the labelled rows (a constant output gets std 1)."""
    values = np.asarray([row for row in rows if not any(math.isnan(v) for v in row)], dtype=np.float64)
    mean, std = values.mean(0), values.std(0)
    std[~(std > 1e-12)] = 1.0
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def class_weights(items, types: dict[str, str], labels: dict[str, list[str]],
                  rows: dict[str, list]) -> dict[str, list[float]]:
    """--class_weights TASK=auto|W1,W2,... as one weight per label. `auto`: for a single-label task the inverse of
    each class's frequency, scaled to average 1 over the classes (n / (classes x count)); for a multi-label task each
    label's negatives over positives (its binary cross-entropy's pos_weight). `rows`: the task's encoded training
    labels."""
    weights = {}
    for task, value in parse_key_values(items, "--class_weights").items():
        if task not in types:
            raise ValueError(f"--class_weights names task {task!r}, but the tasks are {list(types)}.")
        if types[task] == REGRESSION:
            raise ValueError(f"--class_weights {task}=...: {task!r} is a regression task, which has no classes; "
                             "remove it.")
        count = len(labels[task])
        if value == "auto":
            if types[task] == MULTI_LABEL:
                matrix = np.asarray([row for row in rows[task] if not math.isnan(row[0])], dtype=np.float64)
                positives = matrix.sum(0)
                weights[task] = [float(v) for v in (len(matrix) - positives) / np.maximum(positives, 1.0)]
            else:
                ids = np.asarray([i for i in rows[task] if i >= 0], dtype=np.int64)
                counts = np.maximum(np.bincount(ids, minlength=count), 1)
                weights[task] = [float(v) for v in len(ids) / (count * counts)]
            continue
        try:
            weights[task] = [float(part) for part in value.split(",")]
        except ValueError:
            weights[task] = None
        if weights[task] is None or len(weights[task]) != count:
            raise ValueError(f"--class_weights {task}={value}: give `auto` or {count} comma-separated numbers, one per "
                             f"label of {labels[task]}.")
    return weights


__all__ = ["LabelProblem", "class_weights", "detect_types", "has_value", "infer_multi_label", "multi_hot",
           "output_count", "parse_task_types", "target_stats", "targets"]
