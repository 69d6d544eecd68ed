"""Inference for saved models with a BERT encoder in plain torch, without transformers.

`sentence-multitask predict --model DIR "one sentence"` spends most of its time importing transformers' modeling stack
(transformers.modeling_utils pulls in torch.distributed, torch._dynamo, scipy ...), seconds more than the prediction
itself. This runtime needs only torch, tokenizers and safetensors and gives the results of
`SentenceMultiTaskModel.from_pretrained(DIR)` (same tokenizer, truncation, batching, pooling and heads, from the
shared inference_sentence_multitask module; the encoder's forward pass in the same torch operations as transformers'
BertModel with SDPA attention).

It serves only what it fully understands: a local directory written by `save_pretrained` with a BERT encoder (absolute
position embeddings, GELU), fp32 safetensors weights that match config.json exactly, and a BERT WordPiece
tokenizer.json that matches tokenizer_config.json; on CPU only. For anything else, including any config field it does
not know, `from_pretrained` raises `UnsupportedModelError` and the caller uses `SentenceMultiTaskModel` (the CLI does so
silently), which also reports damaged or mismatched files in its own words.

    from sentence_multitask.runtime import SentenceMultiTaskRuntime
    runtime = SentenceMultiTaskRuntime.from_pretrained("my-model")
    runtime.predict(["The striker scored twice."])
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from .inference_sentence_multitask import (
    SentenceInferenceMixin,
    TaskHead,
    length_sorted_batches,
    max_tokens,
    token_ids,
)

logger = logging.getLogger(__name__)

# Those of configuration_sentence_multitask.POOLING_MODES, which imports transformers (tests/test_runtime.py compares).
POOLING_MODES = ("mean", "cls", "max")

# config.json fields the runtime reads; fields it may ignore because inference does not depend on them. Any other field
# makes it refuse the model: it cannot know what a field it has never seen would change.
MODEL_FIELDS = {"model_type", "encoder", "tasks", "pooling", "max_length", "head_hidden_size", "head_dropout",
                "task_weights", "dtype", "torch_dtype"}
MODEL_FIELDS_IGNORED = {"architectures", "auto_map", "base_model", "custom_pipelines", "transformers_version",
                        "pad_token_id", "use_cache", "_name_or_path"}
ENCODER_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")
# Fields that change BertModel's forward pass, with the values this runtime implements (None: absent).
ENCODER_VALUES = {"model_type": ("bert",), "hidden_act": ("gelu",), "position_embedding_type": (None, "absolute"),
                  "is_decoder": (None, False), "add_cross_attention": (None, False),
                  "chunk_size_feed_forward": (None, 0), "dtype": (None, "float32"), "torch_dtype": (None, "float32")}
# Training-only or bookkeeping fields (dropouts, initialisation, the unused pooler's and decoder's settings).
ENCODER_FIELDS_IGNORED = {"_name_or_path", "architectures", "attention_probs_dropout_prob", "hidden_dropout_prob",
                          "classifier_dropout", "initializer_range", "gradient_checkpointing", "use_cache",
                          "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings", "transformers_version"}

# tokenizer_config.json: the special tokens, the normaliser's switches (checked against tokenizer.json), fields with
# the values transformers' BertTokenizer would tokenise with as this runtime does, and fields without effect on ids.
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
NORMALIZER_SWITCHES = {"do_lower_case": ("lowercase", True), "strip_accents": ("strip_accents", None),
                       "tokenize_chinese_chars": ("handle_chinese_chars", True)}
TOKENIZER_VALUES = {"tokenizer_class": ("BertTokenizer", "BertTokenizerFast"), "backend": (None, "tokenizers"),
                    "truncation_side": (None, "right"), "truncation_strategy": (None, "longest_first"),
                    "stride": (None, 0), "do_basic_tokenize": (None, True), "never_split": (None, []),
                    "split_special_tokens": (None, False), "extra_special_tokens": (None, [], {}),
                    "additional_special_tokens": (None, [])}
TOKENIZER_FIELDS_IGNORED = {"model_max_length", "max_length", "padding_side", "pad_to_multiple_of", "pad_token_type_id",
                            "is_local", "local_files_only", "name_or_path", "clean_up_tokenization_spaces",
                            "model_input_names", "added_tokens_decoder"}


class UnsupportedModelError(ValueError):
    """The runtime cannot serve this model exactly as `SentenceMultiTaskModel` would; load it with that class."""


@dataclass(frozen=True)
class RuntimeConfig:
    """What inference reads from config.json (the full `SentenceMultiTaskConfig` needs transformers)."""

    tasks: dict[str, list[str]]
    pooling: str
    max_length: int
    hidden_size: int
    head_size: int
    head_dropout: float
    max_position_embeddings: int

    @property
    def num_labels_per_task(self) -> dict[str, int]:
        return {task: len(labels) for task, labels in self.tasks.items()}


@dataclass(frozen=True)
class BertShape:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight of a BertModel without pooler, named as in model.safetensors."""
        hidden, inner = self.hidden_size, self.intermediate_size
        shapes = {
            "encoder.embeddings.word_embeddings.weight": (self.vocab_size, hidden),
            "encoder.embeddings.position_embeddings.weight": (self.max_position_embeddings, hidden),
            "encoder.embeddings.token_type_embeddings.weight": (self.type_vocab_size, hidden),
            "encoder.embeddings.LayerNorm.weight": (hidden,),
            "encoder.embeddings.LayerNorm.bias": (hidden,),
        }
        for i in range(self.num_hidden_layers):
            layer = f"encoder.encoder.layer.{i}."
            for name, shape in (("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
                                ("attention.self.value", (hidden, hidden)),
                                ("attention.output.dense", (hidden, hidden)), ("attention.output.LayerNorm", (hidden,)),
                                ("intermediate.dense", (inner, hidden)), ("output.dense", (hidden, inner)),
                                ("output.LayerNorm", (hidden,))):
                shapes[f"{layer}{name}.weight"] = shape
                shapes[f"{layer}{name}.bias"] = shape[:1]
        return shapes


class BertEncoder:
    """
    The forward pass of transformers' `BertModel` at inference (no dropout, no pooler, token type 0, SDPA attention
    with a boolean padding mask, none when nothing is padded), in the same torch operations and order, so that its
    last hidden states equal BertModel's.
    """

    LAYER_WEIGHTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")

    def __init__(self, shape: BertShape, weights: Mapping[str, torch.Tensor]):
        self.hidden_size = shape.hidden_size
        self.head_dim = shape.hidden_size // shape.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.eps = shape.layer_norm_eps
        embeddings = "encoder.embeddings."
        self.word = weights[embeddings + "word_embeddings.weight"]
        self.position = weights[embeddings + "position_embeddings.weight"]
        self.token_type = weights[embeddings + "token_type_embeddings.weight"]
        self.norm = (weights[embeddings + "LayerNorm.weight"], weights[embeddings + "LayerNorm.bias"])
        self.layers = [
            [(weights[f"encoder.encoder.layer.{i}.{name}.weight"], weights[f"encoder.encoder.layer.{i}.{name}.bias"])
             for name in self.LAYER_WEIGHTS]
            for i in range(shape.num_hidden_layers)
        ]

    def cast(self, dtype: torch.dtype) -> BertEncoder:
        """This encoder with its matrix products' weights and biases in `dtype`, as autocast casts them on every call
        (the embeddings and layer norms stay fp32, as autocast leaves them): run under autocast, it gives the same
        results without casting the weights anew for every batch."""
        cast = copy.copy(self)
        cast.layers = [[pair if name.endswith("LayerNorm") else (pair[0].to(dtype), pair[1].to(dtype))
                        for name, pair in zip(self.LAYER_WEIGHTS, layer)] for layer in self.layers]
        return cast

    def _layer_norm(self, states: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(states, (self.hidden_size,), norm[0], norm[1], self.eps)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, width = input_ids.shape
        states = F.embedding(input_ids, self.word) + self.token_type[0]  # inference passes no token types: all 0
        states = self._layer_norm(states + self.position[:width], self.norm)
        mask = None
        if not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :].expand(batch, 1, width, width)
        for query, key, value, attention_out, attention_norm, intermediate, out, out_norm in self.layers:
            heads = [F.linear(states, *weights).view(batch, width, -1, self.head_dim).transpose(1, 2)
                     for weights in (query, key, value)]
            attended = F.scaled_dot_product_attention(*heads, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                                      is_causal=False)
            attended = attended.transpose(1, 2).contiguous().reshape(batch, width, -1).contiguous()
            states = self._layer_norm(F.linear(attended, *attention_out) + states, attention_norm)
            inner = F.gelu(F.linear(states, *intermediate))
            states = self._layer_norm(F.linear(inner, *out) + states, out_norm)
        return states


class BertTokenizer:
    """tokenizer.json through the `tokenizers` library, tokenising as transformers' BertTokenizer does."""

    def __init__(self, backend: Tokenizer, pad_token_id: int | None, model_max_length: int | None):
        self.backend = backend
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length
        backend.no_padding()

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Ids with [CLS] ... [SEP], truncated on the right to `max_length` tokens (special tokens included)."""
        self.backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=True)]


class _NoProgressBar:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, disable: bool):
    """The bar transformers' tqdm shows (tqdm.auto, off where huggingface_hub's bars are off), imported when shown."""
    if not disable:
        from huggingface_hub.utils import are_progress_bars_disabled

        if not are_progress_bars_disabled():
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc)
    return _NoProgressBar()


class SentenceMultiTaskRuntime(SentenceInferenceMixin, nn.Module):
    """
    A saved model with a BERT encoder, run on CPU without transformers: `encode`, `predict` and `predict_proba` as
    `SentenceMultiTaskModel` has them, with the same results. Load it with `from_pretrained`.
    """

    device = torch.device("cpu")

    def __init__(self, config: RuntimeConfig, encoder: BertEncoder, heads: nn.ModuleDict, tokenizer: BertTokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.heads = heads
        self.tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._cast_encoders: dict[torch.dtype, BertEncoder] = {}
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SentenceMultiTaskRuntime:
        """Load a directory written by `SentenceMultiTaskModel.save_pretrained`, or raise `UnsupportedModelError`."""
        folder = Path(path)
        if not folder.is_dir():
            raise UnsupportedModelError(f"{path} is not a local directory.")
        try:
            config, shape = _read_config(_read_json(folder / "config.json"))
            tokenizer = _read_tokenizer(folder)
            weights = _read_weights(folder / "model.safetensors", config, shape)
        except UnsupportedModelError as error:
            logger.debug(f"{folder}: {error}")
            raise
        except (OSError, ValueError, TypeError, KeyError, AttributeError, SafetensorError) as error:
            logger.debug(f"{folder}: {error}")
            raise UnsupportedModelError(f"{folder}: {error}") from error
        with torch.device("meta"):  # no memory and no random initialisation: the weights are assigned below
            heads = nn.ModuleDict({
                task: TaskHead(config.hidden_size, config.head_size, len(labels), config.head_dropout)
                for task, labels in config.tasks.items()
            })
        heads.load_state_dict({name.removeprefix("heads."): tensor for name, tensor in weights.items()
                               if name.startswith("heads.")}, strict=True, assign=True)
        return cls(config, BertEncoder(shape, weights), heads, tokenizer)

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cuda() would move or cast the heads but not the encoder's plain tensors.
        raise TypeError("SentenceMultiTaskRuntime runs on CPU with fp32 weights (precision= picks bf16 compute); "
                        "for another device or dtype load SentenceMultiTaskModel.")

    def _tokenize(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        """Token ids of every text, truncated to `max_length` tokens with one warning for the whole call."""
        limit = max_tokens(max_length, self.config.max_length, self.config.max_position_embeddings,
                           self.tokenizer.model_max_length)
        # The backend's truncation setting is shared state: one call at a time.
        with self._tokenizer_lock:
            return token_ids(self.tokenizer.encode, texts, limit)

    def _batches(self, texts: list[str], batch_size: int, max_length: int | None, show_progress_bar: bool | None):
        """Tokenise once, then yield `(positions, inputs)` batches of similar length (longest first)."""
        return length_sorted_batches(
            texts, lambda batch: self._tokenize(batch, max_length), batch_size, pad_id=self.tokenizer.pad_token_id or 0,
            device=self.device, token_cap=self.cpu_batch_tokens, show_progress_bar=show_progress_bar,
            progress_bar=_progress_bar,
        )

    def _token_states(self, inputs: Mapping[str, torch.Tensor], autocast_dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        encoder = self.encoder
        if autocast_dtype is not None:  # the weights never change (see _apply): cast them once per dtype
            if autocast_dtype not in self._cast_encoders:
                self._cast_encoders[autocast_dtype] = self.encoder.cast(autocast_dtype)
            encoder = self._cast_encoders[autocast_dtype]
        return encoder(inputs["input_ids"], inputs["attention_mask"])


# ---------------------------------------------------------------------------------------------------- reading files


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path.name} does not hold a JSON object.")
    return data


def _check_fields(where: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise UnsupportedModelError(f"{where} has fields the runtime does not handle: {unknown}.")


def _check_values(where: str, data: Mapping[str, Any], allowed: Mapping[str, tuple]) -> None:
    for field, values in allowed.items():
        value = data.get(field)
        # `type(value) is type(v)` keeps 0 from passing for False and 1.0 for 1.
        if not any(type(value) is type(v) and value == v for v in values):
            raise UnsupportedModelError(f"{where}: {field}={value!r} is not one of {list(values)}.")


def _positive_int(where: str, data: Mapping[str, Any], field: str, minimum: int = 1) -> int:
    value = data.get(field)
    if type(value) is not int or value < minimum:
        raise UnsupportedModelError(f"{where}: {field}={value!r} is not an integer >= {minimum}.")
    return value


def _read_config(data: dict[str, Any]) -> tuple[RuntimeConfig, BertShape]:
    """The runtime's view of config.json, accepting only what SentenceMultiTaskConfig accepts and the runtime runs."""
    _check_values("config.json", data, {"model_type": ("sentence-multitask",), "dtype": (None, "float32"),
                                        "torch_dtype": (None, "float32"), "pooling": POOLING_MODES})
    _check_fields("config.json", data, MODEL_FIELDS | MODEL_FIELDS_IGNORED)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks or not all(_valid_task(task, labels) for task, labels in tasks.items()):
        raise UnsupportedModelError(f"config.json: tasks {tasks!r} are not a valid task -> labels mapping.")
    weights = data.get("task_weights") or {}
    if not isinstance(weights, dict) or not set(weights) <= set(tasks) or not all(
            type(w) in (int, float) and w >= 0 for w in weights.values()):
        raise UnsupportedModelError(f"config.json: task_weights {weights!r} are not valid.")
    dropout = data.get("head_dropout", 0.1)
    if type(dropout) not in (int, float) or not 0.0 <= dropout < 1.0:
        raise UnsupportedModelError(f"config.json: head_dropout={dropout!r} is not in [0, 1).")
    max_length = _positive_int("config.json", data, "max_length", minimum=2)
    head_hidden_size = None if data.get("head_hidden_size") is None else _positive_int("config.json", data,
                                                                                       "head_hidden_size")
    encoder = data.get("encoder")
    if not isinstance(encoder, dict):
        raise UnsupportedModelError("config.json has no encoder configuration.")
    _check_values("config.json encoder", encoder, ENCODER_VALUES)  # first: "model_type='roberta' ..." says most
    _check_fields("config.json encoder", encoder, set(ENCODER_SIZES) | {"layer_norm_eps"} | set(ENCODER_VALUES)
                  | ENCODER_FIELDS_IGNORED)
    sizes = {field: _positive_int("config.json encoder", encoder, field) for field in ENCODER_SIZES}
    eps = encoder.get("layer_norm_eps")
    if type(eps) is not float or not eps > 0:
        raise UnsupportedModelError(f"config.json encoder: layer_norm_eps={eps!r} is not a positive float.")
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise UnsupportedModelError("config.json encoder: hidden_size is not a multiple of num_attention_heads.")
    shape = BertShape(**sizes, layer_norm_eps=eps)
    hidden = shape.hidden_size
    config = RuntimeConfig(tasks={task: list(labels) for task, labels in tasks.items()}, pooling=data["pooling"],
                           max_length=max_length, hidden_size=hidden,
                           head_size=head_hidden_size or max(1, hidden // 2),  # as SentenceMultiTaskConfig.head_size
                           head_dropout=float(dropout), max_position_embeddings=shape.max_position_embeddings)
    return config, shape


def _valid_task(task: Any, labels: Any) -> bool:
    """What configuration_sentence_multitask._check_tasks accepts (it raises on anything else)."""
    return (isinstance(task, str) and task.strip() == task and bool(task) and "." not in task
            and isinstance(labels, list) and len(labels) >= 2
            and all(isinstance(label, str) and label.strip() for label in labels) and len(set(labels)) == len(labels))


def _read_tokenizer(folder: Path) -> BertTokenizer:
    """tokenizer.json, refused unless it tokenises as the BertTokenizer transformers builds from the same files."""
    for name in ("special_tokens_map.json", "added_tokens.json"):
        if (folder / name).exists():
            raise UnsupportedModelError(f"{name} (older tokenizer files) is left to transformers to interpret.")
    settings = _read_json(folder / "tokenizer_config.json")
    _check_fields("tokenizer_config.json", settings, set(SPECIAL_TOKENS) | set(NORMALIZER_SWITCHES)
                  | set(TOKENIZER_VALUES) | TOKENIZER_FIELDS_IGNORED)
    _check_values("tokenizer_config.json", settings, TOKENIZER_VALUES)
    tokens = {field: settings.get(field, default) for field, default in SPECIAL_TOKENS.items()}
    if not all(isinstance(token, str) for token in tokens.values()):
        raise UnsupportedModelError(f"tokenizer_config.json: special tokens {tokens} are not all strings.")
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    spec = json.loads(text)
    model = spec.get("model") or {}
    vocab = model.get("vocab") or {}
    if any(token not in vocab for token in tokens.values()):
        raise UnsupportedModelError("tokenizer.json: a special token is missing from the vocabulary.")
    # transformers' BertTokenizer rebuilds the normaliser, pre-tokeniser, WordPiece model and post-processor from
    # tokenizer_config.json and the vocabulary; the file's own must be the same.
    normalizer = {"type": "BertNormalizer", "clean_text": True}
    for field, (key, default) in NORMALIZER_SWITCHES.items():
        normalizer[key] = settings.get(field, default)
    expected = {
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": tokens["unk_token"], "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100},
    }
    for part, value in expected.items():
        found = spec.get(part) or {}
        if {key: found.get(key) for key in value} != value:
            raise UnsupportedModelError(f"tokenizer.json: {part} {found} differs from transformers' BertTokenizer.")
    cls_token, sep_token = tokens["cls_token"], tokens["sep_token"]
    template = _single_sequence_template(spec.get("post_processor"))
    if template != (cls_token, vocab[cls_token], sep_token, vocab[sep_token]):
        raise UnsupportedModelError("tokenizer.json: the post-processor does not add [CLS] text [SEP] as BERT does.")
    # Every added token must be one of the special tokens, matched whole and unnormalised (as transformers adds them).
    specials = set(tokens.values())
    added = spec.get("added_tokens") or []
    plain = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    if {token.get("content") for token in added} != specials or not all(
            vocab.get(token.get("content")) == token.get("id") and all(token.get(k) == v for k, v in plain.items())
            for token in added):
        raise UnsupportedModelError("tokenizer.json: its added tokens are not exactly the special tokens.")
    for token_id, token in (settings.get("added_tokens_decoder") or {}).items():
        content = token.get("content") if isinstance(token, dict) else None
        if content not in specials or str(vocab[content]) != str(token_id):
            raise UnsupportedModelError(f"tokenizer_config.json: added token {token_id} {token} is not a special one.")
    limit = settings.get("model_max_length")
    return BertTokenizer(Tokenizer.from_str(text), pad_token_id=vocab[tokens["pad_token"]],
                         model_max_length=limit if type(limit) is int else None)


def _single_sequence_template(processor: Any) -> tuple | None:
    """(cls, cls id, sep, sep id) of a post-processor that turns one text into [CLS] text [SEP]; None otherwise."""
    if not isinstance(processor, dict):
        return None
    if processor.get("type") == "BertProcessing":
        (sep, sep_id), (cls, cls_id) = processor["sep"], processor["cls"]
        return cls, cls_id, sep, sep_id
    if processor.get("type") != "TemplateProcessing":
        return None
    single = processor.get("single") or []
    if len(single) != 3 or single[1] != {"Sequence": {"id": "A", "type_id": 0}}:
        return None
    first, last = single[0].get("SpecialToken") or {}, single[2].get("SpecialToken") or {}
    if first.get("type_id") != 0 or last.get("type_id") != 0:
        return None
    specials = processor.get("special_tokens") or {}

    def only_id(token: str) -> int | None:
        ids = (specials.get(token) or {}).get("ids")
        return ids[0] if isinstance(ids, list) and len(ids) == 1 else None

    return first.get("id"), only_id(first.get("id")), last.get("id"), only_id(last.get("id"))


def _read_weights(path: Path, config: RuntimeConfig, shape: BertShape) -> dict[str, torch.Tensor]:
    """The fp32 tensors of model.safetensors, refused unless they are exactly the encoder's and the heads' weights."""
    expected = shape.weight_shapes()
    for task, labels in config.tasks.items():
        for name, size in (("dense", (config.head_size, config.hidden_size)),
                           ("out_proj", (len(labels), config.head_size))):
            expected[f"heads.{task}.{name}.weight"] = size
            expected[f"heads.{task}.{name}.bias"] = size[:1]
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("format", "pt") != "pt":
            raise UnsupportedModelError(f"{path.name} was not written by PyTorch.")
        names = set(handle.keys())
        if names != set(expected):
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            raise UnsupportedModelError(f"{path.name}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
        weights = {}
        for name in sorted(names):
            found = handle.get_slice(name)
            if found.get_dtype() != "F32" or tuple(found.get_shape()) != expected[name]:
                raise UnsupportedModelError(f"{path.name}: {name} is {found.get_dtype()} {found.get_shape()}, "
                                            f"not F32 {list(expected[name])}.")
            weights[name] = handle.get_tensor(name)
    return weights


__all__ = ["SentenceMultiTaskRuntime", "UnsupportedModelError"]
