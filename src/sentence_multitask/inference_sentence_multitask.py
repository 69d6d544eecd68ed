"""Inference shared by the PyTorch model and the ONNX model: text checks, precision, tokenising with one truncation
warning per call (batching is in batching_sentence_multitask.py), pooling, the task heads and the `encode` /
`predict` API on top of them.

This file travels with every saved model, next to the modeling file that imports it, and is executed by
``trust_remote_code``. It imports torch, transformers' tokenizers and the standard library, not transformers'
modeling stack, so that the ONNX model starts without it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer

from .batching_sentence_multitask import CPU_BATCH_TOKENS, max_tokens, to_device, token_ids
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
IGNORE_INDEX = -100  # class id of a row without a label for a single-label task


class TaskHead(nn.Module):
    """Linear(hidden -> head) -> GELU -> dropout -> Linear(head -> labels)."""

    def __init__(self, hidden_size: int, head_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, head_size)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(head_size, num_labels)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.activation(self.dense(embeddings))))


def pool(token_states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn `(batch, tokens, hidden)` states into `(batch, hidden)` sentence embeddings, ignoring padding."""
    if mode == "cls":
        return token_states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    if mode == "max":
        return token_states.masked_fill(mask == 0, torch.finfo(token_states.dtype).min).amax(dim=1)
    return (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@functools.lru_cache(None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None: plain fp32), refusing what the hardware lacks."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    native_bf16 = device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if precision == "auto":
        return torch.bfloat16 if native_bf16 else None
    if precision == "fp16":
        raise ValueError("precision='fp16' needs a GPU; on CPU use 'bf16' (or 'auto').")
    if not native_bf16:
        _warn_once("This CPU has no native bf16: precision='bf16' is emulated and likely slower than fp32.")
    return torch.bfloat16


def attention_kernels(device: torch.device):
    """The attention kernels to run under: on CUDA, every SDPA backend but cuDNN's. Length-sorted (inference) and
    length-grouped (training) batches come in many widths, and cuDNN's attention builds a new plan for each one, which
    costs more CPU time than the attention itself. Elsewhere the defaults."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def not_a_model_folder(source) -> str | None:
    """Why `source` cannot be loaded, when it names a local path that is no folder ("does not exist" or "is a file"),
    else None. A Hub id is "name" or "namespace/name"; transformers tries anything else as one too, and answers a
    missing folder with "Repo id must be in the form ..."."""
    path = str(source)
    if os.path.isdir(path):
        return None
    if os.path.exists(path):
        return "is a file"
    looks_local = (isinstance(source, os.PathLike) or os.path.isabs(path) or path.startswith((".", "~"))
                   or path.count("/") > 1 or "\\" in path or os.path.isdir(os.path.dirname(path)))
    return "does not exist" if looks_local else None


# Files save_pretrained writes besides config.json (the code files end in "_sentence_multitask.py").
MODEL_FILES = ("README.md", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt")


def files_a_save_would_replace(folder) -> list[str]:
    """The files in `folder` that saving a model there would write over, when `folder` holds no saved model (no
    config.json): a project's own README.md, say. Empty for a model's folder, which its callers check otherwise."""
    if not os.path.isdir(folder) or os.path.isfile(os.path.join(folder, "config.json")):
        return []
    return sorted(name for name in os.listdir(folder) if name in MODEL_FILES or name.endswith("_sentence_multitask.py"))


def check_texts(texts) -> list[str]:
    """Return `texts` as a list of strings, or raise naming the first bad position."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}.")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{position}] is {type(text).__name__}, not str: pass one string per text "
                "(decode bytes first, drop or replace None)."
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"texts[{position}] holds a lone surrogate, which is not valid Unicode text; decode the source with "
                "errors='replace' or remove the character."
            ) from None
    return list(texts)


def labelled(labels):
    """Which rows of one task's label tensor or array carry a label: class ids other than -100 (single-label, shape
    `(batch,)`), rows without NaN (multi-label 0/1 rows and regression targets, shape `(batch, outputs)`)."""
    if labels.ndim == 1:
        return labels != IGNORE_INDEX
    return (labels == labels).all(-1)  # NaN is the one value unequal to itself


def serve(config, task: str, raw: torch.Tensor) -> torch.Tensor:
    """A head's output as the model serves it: logits of a single-label task (softmax is left to the caller),
    sigmoid probabilities of a multi-label task, values of a regression task in the targets' units (the head predicts
    standardised targets). The ONNX graph bakes this in."""
    kind = config.task_type(task)
    if kind == MULTI_LABEL:
        return raw.sigmoid()
    if kind == REGRESSION:
        mean, std = config.task_target_stats(task)
        return raw * raw.new_tensor(std) + raw.new_tensor(mean)
    return raw


def _label_results(outputs: Mapping[str, torch.Tensor], config, return_all_scores: bool):
    """One dict per text of every task's result, from served outputs (see `serve`)."""
    n = len(next(iter(outputs.values())))
    results: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    for task, values in outputs.items():
        labels, kind = config.tasks[task], config.task_type(task)
        values = values.float()
        if kind == REGRESSION:
            rows = values.tolist()
            for i in range(n):
                results[i][task] = {"value": rows[i][0]} if len(labels) == 1 else {"values": dict(zip(labels, rows[i]))}
            continue
        if kind == MULTI_LABEL:
            chosen = (values >= values.new_tensor(config.task_thresholds(task))).tolist()
            rows = values.tolist()
            for i in range(n):
                scores = {label: p for label, p, keep in zip(labels, rows[i], chosen[i]) if keep or return_all_scores}
                results[i][task] = {"labels": [label for label, keep in zip(labels, chosen[i]) if keep],
                                    "scores": scores}
            continue
        probs = values.softmax(-1)
        scores, best = probs.max(-1)
        probs_list, scores_list, best_list = probs.tolist(), scores.tolist(), best.tolist()
        for i in range(n):
            entry = {"label": labels[best_list[i]], "score": scores_list[i]}
            if return_all_scores:
                entry["scores"] = dict(zip(labels, probs_list[i]))
            results[i][task] = entry
    return results


def check_json_file(path: str | os.PathLike) -> None:
    """A file of a saved model that should hold JSON and does not is named as such (transformers' own error gives only
    the parser's position); a missing file is left to the loader."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise OSError(f"{path} is not valid JSON ({error}); it is damaged: restore the {os.path.basename(path)} saved "
                      "with the model, or save the model again.") from None


def load_tokenizer(source: str | os.PathLike, encoder_config):
    """The tokenizer saved at `source` (a folder or Hub id); an error where there is none."""
    if os.path.isdir(source):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            check_json_file(os.path.join(source, name))
    # The encoder config names the tokenizer family; without it, AutoTokenizer would read config.json and ask again
    # whether to trust this remote code.
    tokenizer = AutoTokenizer.from_pretrained(source, config=encoder_config)
    # Without tokenizer files transformers builds a tokenizer that knows only its special tokens: every word would
    # become [UNK] and every prediction would be wrong, without an error.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        files = ["tokenizer.json", "tokenizer_config.json"]
        if os.path.isdir(source):
            files = [name for name in files if not os.path.isfile(os.path.join(source, name))] or files
        raise OSError(
            f"{source} has no tokenizer vocabulary (missing {', '.join(files)}). Save the tokenizer with the model: "
            f"model.tokenizer.save_pretrained(folder), or AutoTokenizer.from_pretrained(ENCODER).save_pretrained("
            f"{str(source)!r}) with the encoder it was trained from (`sentence-multitask train` saves it)."
        )
    return tokenizer


class SentenceInferenceMixin:
    """
    `encode`, `predict` and `predict_proba` for a model that provides `config` (`tasks`, `pooling`, `hidden_size`,
    `num_labels_per_task`), `device`, `heads` (task -> [`TaskHead`]), `training` / `eval()` (as an `nn.Module` does),
    `_batches(texts, batch_size, max_length, show_progress_bar)` and `_token_states(inputs, autocast_dtype)` (the
    encoder's last hidden states of one batch; `_run` calls it under autocast to `autocast_dtype` when that is not
    None). A model may instead override `_run` (the ONNX model does).
    """

    def _tokenize(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids of every text, truncated to `max_length` tokens (see `_report_truncation`)."""
        tokenizer = self.tokenizer

        def encode(batch: list[str], limit: int) -> list[list[int]]:
            return tokenizer(batch, truncation=True, max_length=limit, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]

        limit = self._max_tokens(max_length, tokenizer)
        # A fast tokenizer is not safe to call from several threads at once ("Already borrowed").
        with self._tokenizer_lock:
            ids, cut = token_ids(encode, texts, limit)
        self._report_truncation(cut, len(texts), limit)
        return ids

    def _report_truncation(self, cut: int, total: int, limit: int) -> None:
        """A warning the first time texts are cut at `limit` tokens by this model, as transformers warns once; later
        calls log at INFO level (a loop over batches would otherwise repeat it at every call)."""
        if not cut:
            return
        warned = self.__dict__.setdefault("_truncation_warned", set())
        level = logging.INFO if limit in warned else logging.WARNING
        warned.add(limit)
        logger.log(level, f"{cut} of {total} texts are longer than {limit} tokens and were truncated (set max_length "
                          "to change the limit; this warning is shown once per model and limit).")

    def _max_tokens(self, max_length: int | None, tokenizer) -> int:
        """`max_length` checked, None the config's, capped at what the encoder and the tokenizer take."""
        encoder_limit = getattr(self.config.encoder, "max_position_embeddings", None)
        return max_tokens(max_length, self.config.max_length, encoder_limit,
                          getattr(tokenizer, "model_max_length", None))

    # Precision of encode/predict when a call names none: "fp32" (exact), "bf16", "fp16" or "auto".
    inference_precision: str = "fp32"
    # Most tokens (rows x padded width) in one CPU batch; results do not depend on it, speed does.
    cpu_batch_tokens: int = CPU_BATCH_TOKENS

    # The lock that keeps threads from sharing the fast tokenizer cannot be copied or pickled: copy.deepcopy(model),
    # pickle and torch.save(model) give the copy a lock of its own.
    def __getstate__(self):
        parent = getattr(super(), "__getstate__", None)  # nn.Module's drops its compiled forward
        state = dict(parent() if parent is not None else self.__dict__)
        state.pop("_tokenizer_lock", None)
        return state

    def __setstate__(self, state):
        parent = getattr(super(), "__setstate__", None)
        if parent is not None:
            parent(state)
        else:
            self.__dict__.update(state)
        self._tokenizer_lock = threading.Lock()

    def _run(self, texts, batch_size, max_length, show_progress_bar, with_heads: bool, precision: str | None = None):
        texts = check_texts(texts)
        autocast_dtype = resolve_precision(precision or self.inference_precision, self.device)
        # Results stay on a GPU until the end: a copy to the host per batch would make the host wait for every batch.
        keep = self.device if self.device.type == "cuda" else torch.device("cpu")
        embeddings = torch.empty((len(texts), self.config.hidden_size), device=keep)
        logits = {task: torch.empty((len(texts) if with_heads else 0, n), device=keep)
                  for task, n in self.config.num_labels_per_task.items()}
        if not texts:
            return embeddings.cpu(), {task: values.cpu() for task, values in logits.items()}
        if self.training:
            self.eval()  # inference never uses dropout; training code switches back with model.train()
        autocast = torch.autocast(self.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with torch.inference_mode(), autocast, attention_kernels(self.device):
            for positions, inputs in self._batches(texts, batch_size, max_length, show_progress_bar):
                token_states = self._token_states(inputs, autocast_dtype)
                pooled = pool(token_states, inputs["attention_mask"], self.config.pooling)
                index = to_device(torch.tensor(positions), keep)  # a blocking copy would wait for the GPU
                embeddings[index] = pooled.float().to(keep)
                if with_heads:
                    for task, head in self.heads.items():
                        logits[task][index] = serve(self.config, task, head(pooled).float()).to(keep)
        return embeddings.cpu(), {task: values.cpu() for task, values in logits.items()}

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = None,
        normalize: bool = True,
        convert_to: str = "numpy",
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        precision: str | None = None,
    ):
        """
        Sentence embeddings of `texts`, in input order.

        Args:
            texts: one string or a list of strings.
            batch_size: texts per forward pass (default: 512 on a GPU, 32 elsewhere). Batches hold texts of similar
                length; on CPU a batch of long texts is cut to at most `cpu_batch_tokens` tokens, which is faster and
                gives the same results.
            normalize: L2-normalise each embedding (cosine similarity becomes a dot product).
            convert_to: `"numpy"` or `"torch"`.
            max_length: truncate texts to this many tokens, at least 2 and at most the encoder's position limit
                (more is capped to it; default: `config.max_length`).
            show_progress_bar: default on for 256 texts or more.
            precision: `"fp32"` (exact, the default), `"bf16"` (CPUs with native bf16 and GPUs: faster, and close
                to fp32, see docs/performance.md), `"fp16"` (GPU only) or `"auto"` (bf16 where the hardware runs it
                natively, else fp32). Default: `model.inference_precision`.

        Returns:
            An array or tensor of shape `(len(texts), hidden_size)`; `(hidden_size,)` for a single string.
            An empty or whitespace-only text gets the embedding of the bare special tokens (`[CLS] [SEP]`).
        """
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}.")
        embeddings, _ = self._run(texts, batch_size, max_length, show_progress_bar, with_heads=False,
                                  precision=precision)
        if normalize:
            embeddings = nn.functional.normalize(embeddings, p=2, dim=-1)
        if isinstance(texts, str):
            embeddings = embeddings[0]
        return embeddings.numpy() if convert_to == "numpy" else embeddings

    def predict(
        self,
        texts: str | Sequence[str],
        batch_size: int | None = None,
        return_all_scores: bool = False,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        precision: str | None = None,
    ) -> list[dict[str, dict[str, Any]]]:
        """
        Every task's result for each text, in input order (options as for `encode`).

        Returns:
            One dict per text, `{task: result}`. A single-label task gives `{"label": name, "score": probability}`,
            plus `"scores"` (`{label: probability}` over all labels) when `return_all_scores=True`; a multi-label
            task `{"labels": [names at or over their thresholds], "scores": {label: probability}}` (the chosen labels,
            or all with `return_all_scores=True`); a regression task `{"value": number}` (one output) or
            `{"values": {output: number}}`, in the targets' units. A single string gives one dict.
        """
        _, logits = self._run(texts, batch_size, max_length, show_progress_bar, with_heads=True, precision=precision)
        results = _label_results(logits, self.config, return_all_scores)
        return results[0] if isinstance(texts, str) else results

    def predict_proba(
        self, texts: Sequence[str], batch_size: int | None = None, max_length: int | None = None,
        precision: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per task, a tensor of shape `(len(texts), num_labels)` in the configured label order: class probabilities
        (single-label: softmax; multi-label: one sigmoid per label), or a regression task's values in its targets'
        units."""
        _, outputs = self._run(texts, batch_size, max_length, None, with_heads=True, precision=precision)
        return {task: values.softmax(-1) if self.config.task_type(task) == SINGLE_LABEL else values
                for task, values in outputs.items()}


__all__ = [
    "IGNORE_INDEX",
    "PRECISIONS",
    "SentenceInferenceMixin",
    "TaskHead",
    "check_texts",
    "labelled",
    "load_tokenizer",
    "not_a_model_folder",
    "pool",
    "resolve_precision",
    "serve",
]
