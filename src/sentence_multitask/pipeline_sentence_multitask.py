"""The `sentence-multitask` pipeline: `pipeline(model=path, trust_remote_code=True)`.

This file travels with every saved model (config.json names it under `custom_pipelines`): it imports only
transformers and the inference helpers next to it.
"""

from __future__ import annotations

from transformers import Pipeline
from transformers.utils import logging

from .inference_sentence_multitask import _label_results, check_texts, serve

logger = logging.get_logger(__name__)


class SentenceMultiTaskPipeline(Pipeline):
    """
    `pipeline(model=path, trust_remote_code=True)`: per text, every task's result, as `model.predict` gives it
    (label and score; labels over their thresholds and their scores; or values).

    Call options: `return_all_scores=True` adds every label's probability.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, return_all_scores=None, max_length=None, **kwargs):
        if kwargs:  # a typo or another pipeline's option would otherwise be ignored without a word
            raise TypeError(f"Unknown option(s) {sorted(kwargs)} for the sentence-multitask pipeline; it takes "
                            "return_all_scores, max_length and the pipeline's own batch_size / num_workers.")
        preprocess = {"max_length": max_length} if max_length is not None else {}
        postprocess = {"return_all_scores": return_all_scores} if return_all_scores is not None else {}
        return preprocess, {}, postprocess

    def __call__(self, inputs, *args, **kwargs):
        texts = check_texts(inputs)  # names the bad position before any work
        if not isinstance(inputs, str) and not texts:
            return []
        self._truncated = 0
        result = super().__call__(inputs if isinstance(inputs, str) else texts, *args, **kwargs)
        self.model._report_truncation(self._truncated, len(texts), getattr(self, "_limit", None))
        return result

    def preprocess(self, text, max_length=None):
        max_length = self._limit = self.model._max_tokens(max_length, self.tokenizer)
        encoded = self.tokenizer(text, truncation=True, max_length=max_length + 1, return_tensors="pt")
        if encoded["input_ids"].shape[-1] > max_length:
            self._truncated = getattr(self, "_truncated", 0) + 1
            encoded = self.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        return encoded

    def _forward(self, model_inputs):
        # One tensor per task: the pipeline splits a batch's outputs into single texts only where they are tensors.
        config = self.model.config
        return {f"outputs_{task}": serve(config, task, raw.float())
                for task, raw in self.model(**model_inputs).logits.items()}

    def postprocess(self, model_outputs, return_all_scores=False):
        config = self.model.config
        outputs = {task: model_outputs[f"outputs_{task}"] for task in config.tasks}
        return _label_results(outputs, config, return_all_scores)[0]


__all__ = ["SentenceMultiTaskPipeline"]
