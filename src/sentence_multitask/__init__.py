"""sentence-multitask: one sentence encoder, several task heads, one forward pass.

The model, config and pipeline classes load on first use: they need transformers, which takes seconds to import, and
the command line's `--help` or an ONNX `predict` does without them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

REFERENCE_TASKS = {
    "topic": ["sports", "health", "tech", "finance", "education", "other"],
    "sentiment": ["negative", "neutral", "positive"],
}

_LAZY_NAMES = {
    "SentenceMultiTaskConfig": "configuration_sentence_multitask",
    "SentenceMultiTaskModel": "modeling_sentence_multitask",
    "SentenceMultiTaskOutput": "modeling_sentence_multitask",
    "SentenceMultiTaskPipeline": "pipeline_sentence_multitask",
    "local_default_encoder": "modeling_sentence_multitask",
}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        # Importing the modeling file also registers the pipeline task "sentence-multitask" in this process.
        importlib.import_module(".modeling_sentence_multitask", __name__)
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "REFERENCE_TASKS",
    "SentenceMultiTaskConfig",
    "SentenceMultiTaskModel",
    "SentenceMultiTaskOutput",
    "SentenceMultiTaskPipeline",
    "local_default_encoder",
]
