"""Hugging Face Inference Endpoints handler for a sentence-multitask model.

`sentence-multitask export-handler --model DIR` copies this file into a saved model folder as `handler.py`; an
Inference Endpoint created from a repository holding it runs `EndpointHandler`. It needs only torch and transformers:
the model's own code travels with its weights.

Requests: `{"inputs": "text" or ["text", ...], "parameters": {...}}` with the parameters `return_all_scores` and
`max_length` of `predict`, or `"embed": true` with `normalize` and `max_length` for sentence embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel

PREDICT_PARAMETERS = {"return_all_scores", "max_length"}
EMBED_PARAMETERS = {"normalize", "max_length"}


class EndpointHandler:
    """Loads the model once; each call answers one request with one result per text."""

    def __init__(self, path: str = ""):
        self.model = AutoModel.from_pretrained(path or ".", trust_remote_code=True).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")

    def __call__(self, data: dict[str, Any]) -> list:
        """`data["inputs"]` (a text or a list of texts) -> a list: per text, `{task: {"label", "score"}}`, or with
        `"embed": true` in `data["parameters"]`, its embedding (a list of floats)."""
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('send {"inputs": "text" or ["text", ...], "parameters": {...}}.')
        inputs, parameters = data["inputs"], dict(data.get("parameters") or {})
        texts = [inputs] if isinstance(inputs, str) else inputs
        embed = parameters.pop("embed", False)
        unknown = sorted(set(parameters) - (EMBED_PARAMETERS if embed else PREDICT_PARAMETERS))
        if unknown:
            allowed = sorted(EMBED_PARAMETERS if embed else PREDICT_PARAMETERS)
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this handler takes embed and "
                             f"{', '.join(allowed)}.")
        if embed:
            return self.model.encode(texts, show_progress_bar=False, **parameters).tolist()
        return self.model.predict(texts, show_progress_bar=False, **parameters)
