"""The model card (README.md) of a saved model, rendered from its config and what training measured.

This file travels with every saved model (the modeling file imports it when it saves): it imports only torch,
transformers, huggingface_hub and the standard library.
"""

from __future__ import annotations

import json
import os
import re
from string import Template
from typing import Any

import huggingface_hub
import torch
import transformers
from huggingface_hub import EvalResult, ModelCardData

TEMPLATE = """---
$metadata
---

# $model_name

A multi-task sentence model built with sentence-multitask: one `$encoder_type` encoder ($base_model) mean-pools each
text into a $hidden_size-dimensional embedding, and one small MLP head per task predicts every task in the same
forward pass.

$data_note

## Usage

```bash
pip install "transformers>=5.20" torch
```

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("$repo_id", trust_remote_code=True)
print(model.predict(["$example"]))
```

Example output (one dict per text, one entry per task):

```text
$sample_output
```

`model.encode(texts)` returns L2-normalised sentence embeddings, `model.predict_proba(texts)` every label's
probability. The same through a pipeline:

```python
from transformers import pipeline

classifier = pipeline(model="$repo_id", trust_remote_code=True)
classifier("$example")
```

`trust_remote_code=True` runs the Python files stored with this model: `configuration_sentence_multitask.py`,
`modeling_sentence_multitask.py`, `inference_sentence_multitask.py`, `batching_sentence_multitask.py`,
`pipeline_sentence_multitask.py` and `card_sentence_multitask.py`. They import only torch, transformers, huggingface_hub and the standard library, and
make no network calls. Read them before you trust them, and pin the reviewed version with
`from_pretrained(..., revision="<commit hash>")`.

## Tasks and labels

$labels

## Intended use

Labelling short English texts (sentences, headlines, posts) with the tasks above, and sentence embeddings for search
or clustering, in the domain of the training data.

Out of scope: texts far from the training data's domain or language, labels other than the ones listed, and decisions
about people without human review.

## Training

$training

## Evaluation

$evaluation_note

$metrics

$confusion

## Limitations

The heads only know the labels listed above: a single-label task gives every text one label, even when none fits; a
multi-label task gives the labels whose probability reaches their threshold (possibly none). Scores are softmax or
sigmoid probabilities, and regression values are predictions, from a model fine-tuned on the data named above; they
are not calibrated for other domains. The model inherits the biases of its encoder's pre-training data and of its
training data.

## Framework versions

$versions

## Citation

```bibtex
@inproceedings{reimers-2019-sentence-bert,
  title = "Sentence-{BERT}: Sentence Embeddings using {S}iamese {BERT}-Networks",
  author = "Reimers, Nils and Gurevych, Iryna",
  booktitle = "Proceedings of EMNLP-IJCNLP 2019",
  year = "2019",
}
```
"""

# The Hub's metric ids (with their `args`) of each metric the model reports.
HUB_METRICS = {"accuracy": ("accuracy", None), "macro_f1": ("f1", {"average": "macro"}),
               "macro_recall": ("recall", {"average": "macro"}), "micro_f1": ("f1", {"average": "micro"}),
               "subset_accuracy": ("accuracy", None), "mse": ("mse", None), "mae": ("mae", None),
               "pearson": ("pearsonr", None), "spearman": ("spearmanr", None)}
METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "macro_recall": "Macro-recall",
                "micro_f1": "Micro-F1", "subset_accuracy": "Subset accuracy", "mse": "MSE", "mae": "MAE",
                "pearson": "Pearson", "spearman": "Spearman"}
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EVALUATION_NOTE = ("The figures below are on the validation files named in Training, which also chose the training "
                   "options (and a multi-label task's thresholds): they are optimistic estimates. Check the model on "
                   "held-out data of your own before you rely on it.")
TYPE_NAMES = {"single_label": "single-label", "multi_label": "multi-label", "regression": "regression"}


def render_model_card(model) -> str:
    """README.md for `model`: YAML metadata with a model-index, usage, labels, data, hyper-parameters, metrics."""
    config = model.config
    summary: dict[str, Any] = dict(getattr(model, "training_summary", None) or {})
    metrics: dict[str, dict[str, Any]] = summary.get("metrics") or {}
    base_model = getattr(config, "base_model", None) or summary.get("base_model")
    is_hub_id = base_model and "/" in base_model and not base_model.startswith((".", "/")) and not os.path.isdir(base_model)
    hub_base = base_model if is_hub_id else None
    model_name = summary.get("model_name") or "sentence-multitask model"
    datasets = [d for d in summary.get("datasets", []) if d and "/" in d and not d.startswith(("/", "."))]

    eval_results = [
        EvalResult(
            task_type="text-classification",
            task_name=f"{task} {'regression' if config.task_type(task) == 'regression' else 'classification'}",
            # The Hub groups model-index results by dataset type: one per task keeps each task's metrics apart.
            dataset_type=f"{task}-validation",
            dataset_name=(summary.get("validation_data") or {}).get(task, f"{task} validation"),
            dataset_split="validation",
            metric_type=HUB_METRICS[metric][0],
            metric_args=HUB_METRICS[metric][1],
            metric_name=f"{task} {METRIC_NAMES[metric]}",
            metric_value=round(float(values[metric]), 4),
        )
        for task, values in metrics.items()
        for metric in METRIC_NAMES
        if metric in values
    ]
    default_base = hub_base == DEFAULT_BASE_MODEL
    card_data = ModelCardData(
        license=summary.get("license") or ("apache-2.0" if default_base else None),
        language=summary.get("language") or (["en"] if default_base else None),
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=hub_base,
        tags=["sentence-multitask", "multi-task", "sentence-embeddings", "text-classification", "custom_code",
              *summary.get("tags", [])],
        datasets=datasets or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    example = "The team won the championship last night!"
    values = {
        "metadata": card_data.to_yaml(),
        "model_name": model_name,
        "encoder_type": config.encoder.model_type,
        "base_model": f"`{hub_base or base_model}`" if (hub_base or base_model) else "a custom encoder",
        "hidden_size": config.hidden_size,
        "repo_id": summary.get("repo_id", "path/to/this/model"),
        "example": example,
        "sample_output": _sample_output(model, example),
        "data_note": summary.get("data_note", ""),
        "labels": _labels_section(config),
        "training": _training_section(summary, config),
        "evaluation_note": EVALUATION_NOTE if metrics else "",
        "metrics": _metrics_table(metrics, summary.get("metrics_note"), config),
        "confusion": _confusion_section(summary.get("confusion_matrices") or {}, config.tasks),
        "versions": (f"- transformers {transformers.__version__}\n- torch {torch.__version__}\n"
                     f"- huggingface_hub {huggingface_hub.__version__}"),
    }
    return Template(TEMPLATE).safe_substitute(values)


def card_for_repo(card: str, repo_id: str) -> str:
    """`card` (a README.md this module rendered) with its usage snippets loading the model from `repo_id`."""
    card = re.sub(r'from_pretrained\("[^"\n]*", trust_remote_code=True', f'from_pretrained("{repo_id}", trust_remote_code=True',
                  card)
    return re.sub(r'pipeline\(model="[^"\n]*", trust_remote_code=True', f'pipeline(model="{repo_id}", trust_remote_code=True',
                  card)


def _sample_output(model, text: str) -> str:
    """What `model.predict([text])` prints, run now; the model's mode is left as it was (a save during training)."""
    was_training = getattr(model, "training", False)
    try:
        result = model.predict([text])
    except Exception as error:  # a card is written with every save: it must not stop one
        return f"(no example: {type(error).__name__}: {error})"
    finally:
        if was_training:
            model.train()
    return json.dumps(_rounded(result), ensure_ascii=False)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _labels_section(config) -> str:
    """Each task with its type and labels (or outputs); a multi-label task's thresholds, a regression task's target
    statistics."""
    lines = []
    for task, labels in config.tasks.items():
        kind = config.task_type(task)
        names = ", ".join(f"`{label}`" for label in labels)
        if kind == "multi_label":
            thresholds = ", ".join(f"`{label}` {value:.3g}" for label, value in zip(labels, config.task_thresholds(task)))
            lines.append(f"- `{task}` (multi-label: any of the labels, each whose probability reaches its threshold): "
                         f"{names}. Thresholds: {thresholds}.")
        elif kind == "regression":
            mean, std = config.task_target_stats(task)
            stats = ", ".join(f"`{name}` mean {m:.4g}, std {s:.4g}" for name, m, s in zip(labels, mean, std))
            lines.append(f"- `{task}` (regression; outputs {names}; training targets: {stats})")
        else:
            lines.append(f"- `{task}`: {names}")
    return "\n".join(lines)


def _training_section(summary: dict[str, Any], config) -> str:
    lines = []
    if summary.get("data"):
        lines.append("Data:\n")
        lines += [f"- `{task}`: {description}" for task, description in summary["data"].items()]
        lines.append("")
    hyper = summary.get("hyperparameters") or {}
    if hyper:
        lines.append("| hyper-parameter | value |\n|---|---|")
        lines += [f"| {name} | {value} |" for name, value in hyper.items()]
        lines.append("")
    lines.append(
        f"Heads: Linear({config.hidden_size} -> {config.head_size}) -> GELU -> dropout {config.head_dropout} -> "
        f"Linear({config.head_size} -> labels); pooling: {config.pooling}; max length: {config.max_length} tokens."
    )
    if not hyper and not summary.get("metrics"):
        lines.insert(0, "This model has not been fine-tuned yet: its heads are freshly initialised.\n")
    return "\n".join(lines)


def _metrics_table(metrics: dict[str, dict[str, Any]], note: str | None = None, config=None) -> str:
    """The metrics tables, one per task type; without metrics, `note` (e.g. a checkpoint's), or that no evaluation
    was run."""
    if not metrics:
        return note or "No evaluation was run for this model."
    kinds = {task: values.get("task_type") or (config.task_type(task) if config else "single_label")
             for task, values in metrics.items()}
    parts = []
    single = [task for task, kind in kinds.items() if kind == "single_label"]
    if single:
        rows = ["| task | accuracy | macro-F1 | macro-recall | per-class F1 |", "|---|---|---|---|---|"]
        for task in single:
            values = metrics[task]
            per_class = ", ".join(f"{label} {score:.3f}" for label, score in (values.get("per_class_f1") or {}).items())
            rows.append(
                f"| {task} | {values.get('accuracy', float('nan')):.4f} | {values.get('macro_f1', float('nan')):.4f} | "
                f"{values.get('macro_recall', float('nan')):.4f} | {per_class} |"
            )
        parts.append("\n".join(rows))
    for task in (task for task, kind in kinds.items() if kind == "multi_label"):
        parts.append(_multi_label_table(task, metrics[task]))
    regression = [task for task, kind in kinds.items() if kind == "regression"]
    if regression:
        rows = ["| regression task | MSE | MAE | Pearson | Spearman |", "|---|---|---|---|---|"]
        rows += [f"| {task} | {metrics[task]['mse']:.4g} | {metrics[task]['mae']:.4g} | {metrics[task]['pearson']:.4f} | "
                 f"{metrics[task]['spearman']:.4f} |" for task in regression]
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def _multi_label_table(task: str, values: dict[str, Any]) -> str:
    """A multi-label task's scores at 0.5 and, when training tuned them, at the tuned thresholds; per-label F1."""
    tuned = values.get("tuned") or {}
    lines = [f"Multi-label task `{task}`:\n", "| thresholds | micro-F1 | macro-F1 | subset accuracy |", "|---|---|---|---|"]
    lines.append(f"| at evaluation | {values['micro_f1']:.4f} | {values['macro_f1']:.4f} | {values['subset_accuracy']:.4f} |")
    if tuned:
        lines.append(f"| tuned per label on the same data (optimistic) | {tuned['micro_f1']:.4f} | {tuned['macro_f1']:.4f} "
                     f"| {tuned['subset_accuracy']:.4f} |")
    lines += ["", "| label | F1 | " + ("F1, tuned | threshold |" if tuned else ""),
              "|---|---|" + ("---|---|" if tuned else "")]
    for label, score in (values.get("per_class_f1") or {}).items():
        extra = (f" {tuned['per_class_f1'][label]:.3f} | {tuned['thresholds'][label]:.3g} |" if tuned else "")
        lines.append(f"| {label} | {score:.3f} |{extra}")
    if tuned.get("fallback_labels"):
        lines.append(f"\nLabels with too few validation positives take the global threshold "
                     f"{tuned['global_threshold']:.3g}: {', '.join(tuned['fallback_labels'])}.")
    return "\n".join(lines)


def _confusion_section(matrices: dict[str, list[list[int]]], tasks: dict[str, list[str]]) -> str:
    parts = []
    for task, matrix in matrices.items():
        labels = tasks[task]
        parts.append(f"Confusion matrix, `{task}` (rows: true label, columns: predicted):\n")
        parts.append("| true \\ predicted | " + " | ".join(labels) + " |")
        parts.append("|---" * (len(labels) + 1) + "|")
        parts += [f"| **{label}** | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, matrix)]
        parts.append("")
    return "\n".join(parts)
