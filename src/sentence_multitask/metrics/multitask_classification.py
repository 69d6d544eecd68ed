"""Classification metrics for one task: accuracy, macro-F1, macro-recall and per-class F1.

Loaded with `evaluate.load(path_to_this_file)`, which works offline (the Hub's metric scripts do not).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy, macro-averaged F1, macro-averaged recall (the SemEval/TweetEval sentiment metric) and the F1 of every
class, for single-label classification with integer class ids. Classes that never occur in either the
predictions or the references are left out of the macro averages unless `num_labels` is given.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_labels (int, optional): number of classes; classes 0..num_labels-1 all count in the macro averages.
Returns:
    accuracy, macro_f1, macro_recall (floats) and per_class_f1 (list of floats, one per class id),
    confusion_matrix (list of lists: rows true class, columns predicted class).
Example:
    >>> metric = evaluate.load("multitask_classification.py")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=2)["accuracy"]
    0.6666666666666666
"""

_CITATION = ""


class MultitaskClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=None):
        return classification_scores(np.asarray(predictions), np.asarray(references), num_labels)


def classification_scores(predictions, references, num_labels=None):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if len(references) == 0:
        raise ValueError("No labelled examples to score.")
    if num_labels is None:
        num_labels = int(max(predictions.max(), references.max())) + 1
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (references, predictions), 1)
    true_positives = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    recall = np.divide(true_positives, support, out=np.zeros(num_labels), where=support > 0)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_labels), where=predicted > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_labels), where=denominator > 0)
    return {
        "accuracy": float(true_positives.sum() / len(references)),
        "macro_f1": float(f1.mean()),
        "macro_recall": float(recall.mean()),
        "per_class_f1": [float(value) for value in f1],
        "confusion_matrix": matrix.tolist(),
    }
