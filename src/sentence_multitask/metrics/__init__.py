"""Task metrics: the `evaluate` metric module `multitask_classification.py` (one single-label task), the multi-label
and regression scores of `task_scores.py`, and `MultiTaskMetrics`, which scores every task by its type for the Trainer
(`compute_metrics`) and for `sentence-multitask evaluate`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import torch

from ..configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL, SentenceMultiTaskConfig
from ..data import LABEL_PREFIX
from ..inference_sentence_multitask import labelled, serve
from .task_scores import multi_label_scores, regression_scores, tune_thresholds

logger = logging.getLogger(__name__)

METRIC_PATH = str(Path(__file__).parent / "multitask_classification.py")
# The flat scores of each task type (`{task}_{score}`); the classification types also report `{task}_f1_{label}`.
SCORES = {
    SINGLE_LABEL: ("accuracy", "macro_f1", "macro_recall"),
    MULTI_LABEL: ("micro_f1", "macro_f1", "subset_accuracy"),
    REGRESSION: ("mse", "mae", "pearson", "spearman"),
}
LOWER_IS_BETTER = ("mse", "mae")


class MultiTaskMetrics:
    """`compute_metrics` for the Trainer: every task's scores by its type (single-label: accuracy, macro-F1,
    macro-recall and per-class F1; multi-label: micro- and macro-F1 at the config's thresholds, per-label F1, subset
    accuracy; regression: MSE, MAE, Pearson, Spearman), and each score's average over the tasks that report it.
    `config` gives the task types, thresholds and target statistics (None: every task single-label). The last call's
    multi-label probabilities stay in `outputs` for tuning the thresholds."""

    def __init__(self, tasks: dict[str, list[str]], config: SentenceMultiTaskConfig | None = None):
        self.tasks = tasks
        self.config = config if config is not None else SentenceMultiTaskConfig(tasks=tasks)
        self.metric = evaluate.load(METRIC_PATH)
        self.last: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, prediction) -> dict[str, float]:
        logits, label_ids = prediction.predictions, prediction.label_ids
        served = {task: serve(self.config, task, torch.as_tensor(np.asarray(logits[task]), dtype=torch.float32))
                  for task in self.tasks if task in logits}
        return self.score({task: values.numpy() for task, values in served.items()},
                          {task: np.asarray(label_ids[task]) for task in self.tasks if task in label_ids})

    def score(self, outputs: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> dict[str, float]:
        """Scores from served outputs (see `inference_sentence_multitask.serve`: logits or class probabilities of a
        single-label task, or its predicted ids; probabilities of a multi-label task; values of a regression task)."""
        flat, self.last, self.outputs = {}, {}, {}
        for task, labels in self.tasks.items():
            if task not in outputs or task not in references:
                continue
            kind = self.config.task_type(task)
            keep = labelled(references[task])
            if not keep.any():
                continue
            values, truth = np.asarray(outputs[task])[keep], references[task][keep]
            if kind == MULTI_LABEL:
                self.outputs[task] = (values, truth)
                scores = multi_label_scores(values >= np.asarray(self.config.task_thresholds(task)), truth)
            elif kind == REGRESSION:
                scores = regression_scores(values, truth)
            else:
                predicted = values.argmax(-1) if values.ndim > 1 else values
                scores = self.metric.compute(predictions=predicted, references=truth, num_labels=len(labels))
            if kind != REGRESSION:
                scores["per_class_f1"] = dict(zip(labels, scores["per_class_f1"]))
            scores["task_type"] = kind
            self.last[task] = scores
            for name in SCORES[kind]:
                flat[f"{task}_{name}"] = scores[name]
            for label, value in scores.get("per_class_f1", {}).items():
                flat[f"{task}_f1_{label}"] = value
        for name in dict.fromkeys(name for names in SCORES.values() for name in names):
            values = [scores[name] for scores in self.last.values() if name in scores]
            if values:
                flat[f"average_{name}"] = float(np.mean(values))
        return flat


def tune_model_thresholds(config: SentenceMultiTaskConfig, metrics: MultiTaskMetrics) -> None:
    """Tune the thresholds of every multi-label task on the last evaluation's probabilities (`metrics.outputs`): per
    label the best F1, the global threshold for labels with too few positives. Stores them in `config.thresholds` and
    adds the scores at the tuned thresholds to `metrics.last[task]["tuned"]` (measured on the data they were tuned
    on, so optimistic)."""
    thresholds = dict(config.thresholds or {})
    for task, (probabilities, references) in metrics.outputs.items():
        tuned = tune_thresholds(probabilities, references)
        thresholds[task] = tuned["thresholds"]
        scores = multi_label_scores(probabilities >= np.asarray(tuned["thresholds"]), references)
        labels = config.tasks[task]
        metrics.last[task]["tuned"] = {
            "thresholds": dict(zip(labels, tuned["thresholds"])), "global_threshold": tuned["global"],
            "fallback_labels": [labels[i] for i in tuned["fallback"]],
            **{name: scores[name] for name in SCORES[MULTI_LABEL]},
            "per_class_f1": dict(zip(labels, scores["per_class_f1"])),
        }
        logger.info("Thresholds of %r tuned on the validation data: macro-F1 %.4f -> %.4f", task,
                    metrics.last[task]["macro_f1"], scores["macro_f1"])
    if thresholds:
        config.thresholds = thresholds
        config.check_heads()


def available_metrics(tasks: dict[str, list[str]], config: SentenceMultiTaskConfig, evaluated) -> list[str]:
    """The metric names evaluation reports for the `evaluated` tasks."""
    available = ["loss"]
    kinds = set()
    for task in evaluated:
        kind = config.task_type(task)
        kinds.add(kind)
        available += [f"{task}_{metric}" for metric in SCORES[kind]]
        if kind != REGRESSION:
            available += [f"{task}_f1_{label}" for label in tasks[task]]
    available += [f"average_{metric}" for metric in dict.fromkeys(m for kind in kinds for m in SCORES[kind])]
    return available


def check_metric_for_best_model(args, data) -> None:
    """--metric_for_best_model must be a metric that evaluation reports; otherwise the Trainer fails with a KeyError
    after the first evaluation. An error metric (MSE, MAE) needs --greater_is_better false."""
    name = args.metric_for_best_model
    if not name or args.eval_strategy == "no" or data.validation is None:
        return
    name = name[len("eval_"):] if name.startswith("eval_") else name
    config = SentenceMultiTaskConfig(tasks=data.tasks, task_types=(data.heads or {}).get("task_types"))
    evaluated = [task for task in data.tasks
                 if labelled(np.asarray(data.validation[LABEL_PREFIX + task], dtype=np.float64)).any()]
    available = available_metrics(data.tasks, config, evaluated)
    if name in available or name in ("runtime", "samples_per_second", "steps_per_second"):
        if name.endswith(LOWER_IS_BETTER) and args.greater_is_better:
            raise ValueError(f"--metric_for_best_model {args.metric_for_best_model} is an error (lower is better): "
                             "add --greater_is_better false.")
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
