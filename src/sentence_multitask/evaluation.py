"""Metrics of a saved model on labelled files: what `sentence-multitask evaluate` prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .arguments import parse_key_values
from .data import IGNORE, check_label_types, encode_labels, load_source, parse_specs, resolve_columns
from .metrics import MultiTaskMetrics


def evaluate_model(model, data: Sequence[str], text_column: str = "text", label_columns: Sequence[str] | None = None,
                   batch_size: int = 64) -> dict[str, Any]:
    """Per task accuracy, macro-F1, macro-recall, per-class F1 and confusion matrix, over every labelled row of
    `data` (files as `PATH` or `TASK=PATH`). Labels are checked against the model's label lists first."""
    tasks = dict(model.config.tasks)
    columns_by_task = parse_key_values(label_columns, "--label_columns")
    predicted: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    references: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
    rows = 0
    for spec in parse_specs(data):
        dataset = load_source(spec, "evaluation")
        columns = resolve_columns(spec, dataset, list(tasks), columns_by_task, text_column, "evaluation")
        check_label_types(spec, dataset, columns, "evaluation")
        ids = encode_labels(spec, dataset, columns, tasks, text_column, "evaluation")
        probabilities = model.predict_proba(dataset[text_column], batch_size=batch_size)
        for task, task_ids in ids.items():
            predicted[task].append(probabilities[task].argmax(-1).numpy())
            references[task].append(np.asarray(task_ids))
        rows += len(dataset)
    if not any((values != IGNORE).any() for parts in references.values() for values in parts):
        raise ValueError(f"No row of {', '.join(data)} has a label for the model's tasks {list(tasks)}: there is "
                         "nothing to score. Fill the label columns (--label_columns TASK=COLUMN names them).")
    metrics = MultiTaskMetrics(tasks)
    flat = metrics.score(
        {task: np.concatenate(values) for task, values in predicted.items() if values},
        {task: np.concatenate(values) for task, values in references.items() if values},
    )
    return {
        "rows": rows,
        "tasks": {
            task: {**scores, "support": int(np.sum(np.concatenate(references[task]) != IGNORE)), "labels": tasks[task]}
            for task, scores in metrics.last.items()
        },
        "average": {key.removeprefix("average_"): value for key, value in flat.items() if key.startswith("average_")},
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'task':<14}{'n':>7}{'accuracy':>10}{'macro-F1':>10}{'macro-rec':>11}  per-class F1"]
    for task, scores in report["tasks"].items():
        per_class = ", ".join(f"{label} {value:.3f}" for label, value in scores["per_class_f1"].items())
        lines.append(
            f"{task:<14}{scores['support']:>7}{scores['accuracy']:>10.4f}{scores['macro_f1']:>10.4f}"
            f"{scores['macro_recall']:>11.4f}  {per_class}"
        )
    return "\n".join(lines)
