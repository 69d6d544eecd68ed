"""Metrics of a saved model on labelled files: what `sentence-multitask evaluate` prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .arguments import parse_key_values
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION
from .data import check_label_types, encode_labels, load_source, parse_specs, resolve_columns
from .inference_sentence_multitask import labelled
from .metrics import MultiTaskMetrics


def evaluate_model(model, data: Sequence[str], text_column: str = "text", label_columns: Sequence[str] | None = None,
                   batch_size: int = 64, label_delimiter: Sequence[str] | None = None) -> dict[str, Any]:
    """Every task's metrics by its type (single-label: accuracy, macro-F1, macro-recall, per-class F1, confusion
    matrix; multi-label: micro- and macro-F1 at the model's thresholds, per-label F1, subset accuracy; regression:
    MSE, MAE, Pearson, Spearman) over every labelled row of `data` (files as `PATH` or `TASK=PATH`). Labels are checked
    against the model's label lists first; `label_delimiter` (`TASK=;`) splits multi-label strings."""
    config = model.config
    tasks = dict(config.tasks)
    types = {task: config.task_type(task) for task in tasks}
    columns_by_task = parse_key_values(label_columns, "--label_columns")
    delimiters = parse_key_values(label_delimiter, "--label_delimiter")
    outputs: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    references: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    rows = 0
    for spec in parse_specs(data):
        dataset = load_source(spec, "evaluation")
        columns = resolve_columns(spec, dataset, list(tasks), columns_by_task, text_column, "evaluation")
        check_label_types(spec, dataset, columns, "evaluation", types)
        ids = encode_labels(spec, dataset, columns, tasks, text_column, "evaluation", types, delimiters)
        predicted = model.predict_proba(dataset[text_column], batch_size=batch_size)
        for task, task_ids in ids.items():
            outputs[task].append(predicted[task].numpy())
            references[task].append(np.asarray(task_ids, dtype=np.int64 if types[task] not in (MULTI_LABEL, REGRESSION)
                                                else np.float64))
        rows += len(dataset)
    if not any(labelled(values).any() for parts in references.values() for values in parts):
        raise ValueError(f"No row of {', '.join(data)} has a label for the model's tasks {list(tasks)}: there is "
                         "nothing to score. Fill the label columns (--label_columns TASK=COLUMN names them).")
    metrics = MultiTaskMetrics(tasks, config)
    flat = metrics.score(
        {task: np.concatenate(values) for task, values in outputs.items() if values},
        {task: np.concatenate(values) for task, values in references.items() if values},
    )
    report_tasks = {}
    for task, scores in metrics.last.items():
        scores = {**scores, "support": int(labelled(np.concatenate(references[task])).sum()), "labels": tasks[task]}
        if types[task] == MULTI_LABEL:
            scores["thresholds"] = dict(zip(tasks[task], config.task_thresholds(task)))
        report_tasks[task] = scores
    return {
        "rows": rows,
        "tasks": report_tasks,
        "average": {key.removeprefix("average_"): value for key, value in flat.items() if key.startswith("average_")},
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as text: one line per task with its type's scores and per-class F1."""
    lines = [f"{'task':<14}{'n':>7}{'accuracy':>10}{'macro-F1':>10}{'macro-rec':>11}  per-class F1"]
    for task, scores in report["tasks"].items():
        kind = scores.get("task_type")
        if kind == REGRESSION:
            lines.append(f"{task:<14}{scores['support']:>7}  regression: MSE {scores['mse']:.4f}, MAE "
                         f"{scores['mae']:.4f}, Pearson {scores['pearson']:.4f}, Spearman {scores['spearman']:.4f}")
            continue
        per_class = ", ".join(f"{label} {value:.3f}" for label, value in scores["per_class_f1"].items())
        if kind == MULTI_LABEL:
            lines.append(f"{task:<14}{scores['support']:>7}  multi-label: micro-F1 {scores['micro_f1']:.4f}, macro-F1 "
                         f"{scores['macro_f1']:.4f}, subset accuracy {scores['subset_accuracy']:.4f}  {per_class}")
            continue
        lines.append(
            f"{task:<14}{scores['support']:>7}{scores['accuracy']:>10.4f}{scores['macro_f1']:>10.4f}"
            f"{scores['macro_recall']:>11.4f}  {per_class}"
        )
    return "\n".join(lines)
