"""What the fast-path test files share: texts of the shared data (validation rows, a seeded sample of them,
training texts for calibration) and running an ONNX graph directly on them."""

import json
import random

import numpy as np

from .conftest import SHARED_DATA


# Validation texts per task in the sample the agreement bounds are checked on. The tightest bounds are 99 % of the
# labels kept and at most 0.5 points of accuracy lost: on 600 texts 6 and 3 texts (1 text: 0.17 points).
SAMPLE_PER_TASK = 600


def validation_texts(n_per_task=300):
    """The first `n_per_task` validation rows of each task; None: a seeded sample of SAMPLE_PER_TASK (the same on
    every run)."""
    rows = {}
    for task in ("topic", "sentiment"):
        with open(SHARED_DATA / f"{task}_validation.jsonl", encoding="utf-8") as handle:
            task_rows = [json.loads(line) for line in handle]
        rows[task] = (random.Random(0).sample(task_rows, SAMPLE_PER_TASK) if n_per_task is None
                      else task_rows[:n_per_task])
    return rows


def training_texts(n_per_task=250):
    texts = []
    for task in ("topic", "sentiment"):
        with open(SHARED_DATA / f"{task}_train.jsonl", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(n_per_task), handle)]
    return texts


def run_graph(graph, model, n_per_task=100):
    """The graph's outputs for validation texts, padded to the longest like one batch."""
    import onnxruntime

    texts = [row["text"] for rows in validation_texts(n_per_task).values() for row in rows]
    inputs = model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np",
                             return_token_type_ids=False)
    inputs = {name: value.astype(np.int64) for name, value in inputs.items()}
    return onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, inputs)
