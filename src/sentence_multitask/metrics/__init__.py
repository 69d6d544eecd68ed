"""Task metrics: the `evaluate` metric module `multitask_classification.py` (one task), and `MultiTaskMetrics`, which
scores every task with it for the Trainer (`compute_metrics`) and for `sentence-multitask evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import evaluate
import numpy as np

from ..data import IGNORE, LABEL_PREFIX

METRIC_PATH = str(Path(__file__).parent / "multitask_classification.py")
SCORES = ("accuracy", "macro_f1", "macro_recall")


class MultiTaskMetrics:
    """`compute_metrics` for the Trainer: per task accuracy, macro-F1, macro-recall, per-class F1, and averages."""

    def __init__(self, tasks: dict[str, list[str]]):
        self.tasks = tasks
        self.metric = evaluate.load(METRIC_PATH)
        self.last: dict[str, dict[str, Any]] = {}

    def __call__(self, prediction) -> dict[str, float]:
        logits, label_ids = prediction.predictions, prediction.label_ids
        return self.score(
            {task: np.asarray(logits[task]).argmax(-1) for task in self.tasks if task in logits},
            {task: np.asarray(label_ids[task]) for task in self.tasks if task in label_ids},
        )

    def score(self, predicted: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> dict[str, float]:
        flat, self.last = {}, {}
        for task, labels in self.tasks.items():
            if task not in predicted or task not in references:
                continue
            keep = references[task] != IGNORE
            if not keep.any():
                continue
            scores = self.metric.compute(
                predictions=predicted[task][keep], references=references[task][keep], num_labels=len(labels)
            )
            scores["per_class_f1"] = dict(zip(labels, scores["per_class_f1"]))
            self.last[task] = scores
            for name in SCORES:
                flat[f"{task}_{name}"] = scores[name]
            for label, value in scores["per_class_f1"].items():
                flat[f"{task}_f1_{label}"] = value
        for name in SCORES:
            values = [scores[name] for scores in self.last.values()]
            if values:
                flat[f"average_{name}"] = float(np.mean(values))
        return flat


def check_metric_for_best_model(args, data) -> None:
    """--metric_for_best_model must be a metric that evaluation reports; otherwise the Trainer fails with a KeyError
    after the first evaluation."""
    name = args.metric_for_best_model
    if not name or args.eval_strategy == "no" or data.validation is None:
        return
    name = name[len("eval_"):] if name.startswith("eval_") else name
    evaluated = [task for task in data.tasks
                 if (np.asarray(data.validation[LABEL_PREFIX + task]) != IGNORE).any()]
    available = ["loss"]
    for task in evaluated:
        available += [f"{task}_{metric}" for metric in SCORES]
        available += [f"{task}_f1_{label}" for label in data.tasks[task]]
    if evaluated:
        available += [f"average_{metric}" for metric in SCORES]
    if name in available or name in ("runtime", "samples_per_second", "steps_per_second"):
        return
    missing = [task for task in data.tasks if task not in evaluated and name.startswith(f"{task}_")]
    if missing:
        raise ValueError(
            f"--metric_for_best_model {args.metric_for_best_model}: the validation data has no {missing[0]!r} labels, "
            f"so evaluation never reports it. Add {missing[0]} labels to --validation_files, or choose one of "
            f"{', '.join(available)}."
        )
    raise ValueError(f"--metric_for_best_model {args.metric_for_best_model} is not a metric evaluation reports; "
                     f"choose one of {', '.join(available)}.")
