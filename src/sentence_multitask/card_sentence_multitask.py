"""The model card (README.md) of a saved model, rendered from its config and what training measured.

This file travels with every saved model (the modeling file imports it when it saves): it imports only
huggingface_hub and the standard library.
"""

from __future__ import annotations

import os
from string import Template
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

TEMPLATE = """---
$metadata
---

# $model_name

A multi-task sentence model built with [sentence-multitask](https://pypi.org/project/sentence-multitask/): one
`$encoder_type` encoder ($base_model) mean-pools each text into a $hidden_size-dimensional embedding, and one small
MLP head per task predicts every task in the same forward pass.

$data_note

## Use it

```python
from transformers import AutoModel
model = AutoModel.from_pretrained("$repo_id", trust_remote_code=True)
print(model.predict(["$example"]))
```

`model.encode(texts)` returns L2-normalised sentence embeddings; `model.predict(texts, return_all_scores=True)` adds
every label's probability. The same through a pipeline, with only `transformers` and `torch` installed:

```python
from transformers import pipeline
classifier = pipeline(model="$repo_id", trust_remote_code=True)
classifier("$example")
```

## Tasks and labels

$labels

## Training

$training

## Evaluation

$metrics

$confusion

## Limitations

The heads only know the labels listed above: every text gets one label per task, even when none fits. Scores are
softmax probabilities from a model fine-tuned on the data named above; they are not calibrated for other domains.
"""

METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "macro_recall": "Macro-recall"}


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
            task_name=f"{task} classification",
            # The Hub groups model-index results by dataset type: one per task keeps each task's metrics apart.
            dataset_type=f"{task}-validation",
            dataset_name=(summary.get("validation_data") or {}).get(task, f"{task} validation"),
            dataset_split="validation",
            metric_type=metric,
            metric_name=f"{task} {METRIC_NAMES[metric]}",
            metric_value=round(float(values[metric]), 4),
        )
        for task, values in metrics.items()
        for metric in METRIC_NAMES
        if metric in values
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        base_model=hub_base,
        tags=["sentence-multitask", "multi-task", "sentence-embeddings", "text-classification", "custom_code"],
        datasets=datasets or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    values = {
        "metadata": card_data.to_yaml(),
        "model_name": model_name,
        "encoder_type": config.encoder.model_type,
        "base_model": f"`{hub_base or base_model}`" if (hub_base or base_model) else "a custom encoder",
        "hidden_size": config.hidden_size,
        "repo_id": summary.get("repo_id", "path/to/this/model"),
        "example": "The team won the championship last night!",
        "data_note": summary.get("data_note", ""),
        "labels": "\n".join(f"- `{task}`: {', '.join(f'`{label}`' for label in labels)}" for task, labels in config.tasks.items()),
        "training": _training_section(summary, config),
        "metrics": _metrics_table(metrics, summary.get("metrics_note")),
        "confusion": _confusion_section(summary.get("confusion_matrices") or {}, config.tasks),
    }
    return Template(TEMPLATE).safe_substitute(values)


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
    if not summary:
        lines.insert(0, "This model has not been fine-tuned yet: its heads are freshly initialised.\n")
    return "\n".join(lines)


def _metrics_table(metrics: dict[str, dict[str, Any]], note: str | None = None) -> str:
    """The metrics table; without metrics, `note` (e.g. a checkpoint's), or that no evaluation was run."""
    if not metrics:
        return note or "No evaluation was run for this model."
    rows = ["| task | accuracy | macro-F1 | macro-recall | per-class F1 |", "|---|---|---|---|---|"]
    for task, values in metrics.items():
        per_class = ", ".join(f"{label} {score:.3f}" for label, score in (values.get("per_class_f1") or {}).items())
        rows.append(
            f"| {task} | {values.get('accuracy', float('nan')):.4f} | {values.get('macro_f1', float('nan')):.4f} | "
            f"{values.get('macro_recall', float('nan')):.4f} | {per_class} |"
        )
    return "\n".join(rows)


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
