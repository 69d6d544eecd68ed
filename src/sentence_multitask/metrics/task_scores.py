"""Scores of the multi-label and regression tasks, and the tuning of multi-label decision thresholds (numpy only)."""

from __future__ import annotations

import numpy as np

# Candidate thresholds of the tuning; a label with fewer validation positives than MIN_POSITIVES takes the global one.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
MIN_POSITIVES = 5


def _f1(predicted: np.ndarray, references: np.ndarray) -> np.ndarray:
    """F1 of each column of 0/1 arrays `(rows, labels)` (0 where a label is neither predicted nor present)."""
    true_positives = (predicted & references).sum(0).astype(float)
    denominator = predicted.sum(0) + references.sum(0)
    return np.divide(2 * true_positives, denominator, out=np.zeros(predicted.shape[1]), where=denominator > 0)


def multi_label_scores(predicted, references) -> dict:
    """Micro- and macro-F1 over the labels, each label's F1, subset accuracy (every label of a row right) and the
    mean number of labels per row, from 0/1 arrays of shape `(rows, labels)`."""
    predicted, references = np.asarray(predicted).astype(bool), np.asarray(references).astype(bool)
    if predicted.shape != references.shape:
        raise ValueError(f"predictions of shape {predicted.shape} but references of shape {references.shape}.")
    if len(references) == 0:
        raise ValueError("No labelled examples to score.")
    true_positives = float((predicted & references).sum())
    denominator = float(predicted.sum() + references.sum())
    per_label = _f1(predicted, references)
    return {
        "micro_f1": 2 * true_positives / denominator if denominator else 0.0,
        "macro_f1": float(per_label.mean()),
        "subset_accuracy": float((predicted == references).all(1).mean()),
        "per_class_f1": [float(value) for value in per_label],
        "labels_per_row": float(predicted.sum(1).mean()),
    }


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of each column, ties sharing their mean rank."""
    ranks = np.empty_like(values, dtype=np.float64)
    for column in range(values.shape[1]):
        _, inverse, counts = np.unique(values[:, column], return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        ranks[:, column] = (ends - (counts - 1) / 2.0)[inverse]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column pair (0 where a column is constant)."""
    a, b = a - a.mean(0), b - b.mean(0)
    denominator = np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))
    return np.divide((a * b).sum(0), denominator, out=np.zeros(a.shape[1]), where=denominator > 0)


def regression_scores(predicted, references) -> dict:
    """MSE, MAE, Pearson and Spearman correlation, averaged over the outputs, and each output's, from arrays of shape
    `(rows, outputs)` (or `(rows,)`)."""
    predicted, references = np.asarray(predicted, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if predicted.ndim == 1:
        predicted, references = predicted[:, None], references[:, None]
    if predicted.shape != references.shape:
        raise ValueError(f"predictions of shape {predicted.shape} but references of shape {references.shape}.")
    if len(references) == 0:
        raise ValueError("No labelled examples to score.")
    per_output = {
        "mse": ((predicted - references) ** 2).mean(0),
        "mae": np.abs(predicted - references).mean(0),
        "pearson": _pearson(predicted, references),
        "spearman": _pearson(_ranks(predicted), _ranks(references)),
    }
    scores = {name: float(values.mean()) for name, values in per_output.items()}
    scores["per_output"] = {name: [float(v) for v in values] for name, values in per_output.items()}
    return scores


def tune_thresholds(probabilities, references, grid=THRESHOLD_GRID, min_positives: int = MIN_POSITIVES) -> dict:
    """Per label, the threshold of `grid` with the best F1 on `(rows, labels)` probabilities and 0/1 references; a
    label with fewer than `min_positives` positives takes the global threshold (the best micro-F1 of all labels
    sharing one). Returns `thresholds` (one per label), `global` and `fallback` (the labels that took it)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    references = np.asarray(references).astype(bool)
    best_f1 = np.full(references.shape[1], -1.0)
    best = np.full(references.shape[1], 0.5)
    best_micro, global_threshold = -1.0, 0.5
    for threshold in grid:
        predicted = probabilities >= threshold
        f1 = _f1(predicted, references)
        better = f1 > best_f1
        best[better], best_f1[better] = threshold, f1[better]
        micro = multi_label_scores(predicted, references)["micro_f1"]
        if micro > best_micro:
            best_micro, global_threshold = micro, float(threshold)
    fallback = references.sum(0) < min_positives
    best[fallback] = global_threshold
    return {"thresholds": [float(v) for v in best], "global": global_threshold,
            "fallback": [int(i) for i in np.flatnonzero(fallback)]}


__all__ = ["MIN_POSITIVES", "THRESHOLD_GRID", "multi_label_scores", "regression_scores", "tune_thresholds"]
