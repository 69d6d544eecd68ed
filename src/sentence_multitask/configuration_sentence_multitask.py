"""Configuration of the multi-task sentence model.

This file travels with every saved model and is executed by ``trust_remote_code``: it imports only
transformers (and the standard library).
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

from transformers import AutoConfig, PretrainedConfig

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError as error:  # a saved model's copy of this file can meet any transformers
    import transformers

    raise ImportError(f"sentence-multitask models need transformers>=5.20 (SubConfigSpec); this is "
                      f"{transformers.__version__}. Upgrade it: pip install -U 'transformers>=5.20,<6'") from error

POOLING_MODES = ("mean", "cls", "max")
SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label", "multi_label", "regression"
TASK_TYPES = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
DEFAULT_THRESHOLD = 0.5


class SentenceMultiTaskConfig(PretrainedConfig):
    r"""
    Configuration of a [`SentenceMultiTaskModel`]: one encoder, a pooling step, one small MLP head per task.

    Args:
        encoder (`PretrainedConfig` or `dict`, *optional*):
            Configuration of the encoder (any model `AutoModel.from_config` can build). A dict needs a `model_type`;
            defaults to a BERT configuration.
        tasks (`dict[str, list[str]]`):
            Ordered mapping of task name to its ordered label names, e.g.
            `{"topic": ["sports", "health", ...], "sentiment": ["negative", "neutral", "positive"]}`; for a regression
            task, the names of its outputs (e.g. `["score"]`). A single-label task needs at least two distinct,
            non-empty labels, the other types at least one. Task names must be non-empty and may not contain a dot.
        task_types (`dict[str, str]`, *optional*):
            Type of each task: `"single_label"` (one label of N: softmax, cross-entropy; the default for a task left
            out), `"multi_label"` (any of N: one sigmoid per label, binary cross-entropy) or `"regression"` (one real
            value per output name: mean squared error on standardised targets).
        thresholds (`dict[str, list[float]]`, *optional*):
            Per multi-label task, the decision threshold of each label on its sigmoid probability, in label order
            (values in (0, 1)); a task left out uses 0.5 for every label. Training tunes them on the validation data.
        target_stats (`dict[str, dict[str, list[float]]]`, *optional*):
            Per regression task, `{"mean": [...], "std": [...]}` of its training targets, one number per output: the
            head predicts `(target - mean) / std` and the model returns values in the targets' own units. A task left
            out uses mean 0 and std 1.
        class_weights (`dict[str, list[float]]`, *optional*):
            Per classification task, one positive weight per label: the class weight of the cross-entropy
            (single-label) or the `pos_weight` of each label's binary cross-entropy (multi-label).
        head_hidden_size (`int`, *optional*):
            Width of each head's hidden layer; defaults to half the encoder's hidden size.
        head_dropout (`float`, *optional*, defaults to 0.1):
            Dropout between the two linear layers of each head.
        pooling (`str`, *optional*, defaults to `"mean"`):
            How token states become one sentence embedding: `"mean"` (over the attention mask), `"cls"` (first
            token) or `"max"` (over the attention mask).
        task_weights (`dict[str, float]`, *optional*):
            Weight of each task's loss in the total loss; missing tasks weigh 1.0.
        max_length (`int`, *optional*, defaults to 256):
            Number of tokens a text is truncated to by `encode` and `predict`.
        holdout_fold (`str`, *optional*):
            `"K/N"` for a model trained without fold K of N of its training rows (`--holdout_fold`); a student's
            `--teacher_folds N` checks that its K-th teacher has it. Like `finetuning_task`, a record of training.

    Example:

    ```python
    >>> from sentence_multitask import SentenceMultiTaskConfig
    >>> config = SentenceMultiTaskConfig(tasks={"sentiment": ["negative", "neutral", "positive"]})
    >>> config.num_labels_per_task
    {'sentiment': 3}
    ```
    """

    model_type = "sentence-multitask"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    # The Trainer gathers everything the model returns except these at evaluation time.
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["embeddings"]

    encoder: PretrainedConfig | dict | None = None
    tasks: dict | None = None
    head_hidden_size: int | None = None
    head_dropout: float = 0.1
    pooling: str = "mean"
    task_weights: dict | None = None
    max_length: int = 256
    task_types: dict | None = None
    thresholds: dict | None = None
    target_stats: dict | None = None
    class_weights: dict | None = None
    holdout_fold: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_heads()
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"Unknown pooling mode {self.pooling!r}: use one of {', '.join(POOLING_MODES)}.")
        if isinstance(self.head_dropout, bool) or not isinstance(self.head_dropout, (int, float)) \
                or not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be a number in [0, 1), got {self.head_dropout!r}.")
        if self.head_hidden_size is not None and not _whole(self.head_hidden_size, 1):
            raise ValueError(f"head_hidden_size must be a positive integer, got {self.head_hidden_size!r}.")
        if not _whole(self.max_length, 2):
            raise ValueError(f"max_length must be a whole number of at least 2 tokens, got {self.max_length!r}.")
        weights = dict(self.task_weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"task_weights names unknown task(s) {unknown}; the tasks are {list(self.tasks)}.")
        for task, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
                raise ValueError(f"task_weights[{task!r}] must be a non-negative number, got {weight!r}.")
        self.task_weights = weights or None
        # Lets `pipeline(model=dir, trust_remote_code=True)` find the pipeline saved with the model.
        self.custom_pipelines = {
            "sentence-multitask": {
                "impl": "pipeline_sentence_multitask.SentenceMultiTaskPipeline",
                "pt": ["AutoModel"],
                "type": "text",
            }
        }

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # Loading another model's config.json as ours would build a half-matching model: refuse it by name.
        found = config_dict.get("model_type")
        if found is not None and found != cls.model_type:
            raise ValueError(
                f"config.json has model_type {found!r}, not {cls.model_type!r}: this is not a sentence-multitask "
                "model. Load it with its own class, or fix model_type in config.json."
            )
        return super().from_dict(config_dict, **kwargs)

    def check_heads(self) -> None:
        """Check `tasks` with their `task_types`, `thresholds`, `target_stats` and `class_weights`, and store them
        normalised (settings at their defaults are left out, so a config of single-label tasks saves as before)."""
        self.tasks = _check_tasks(self.tasks or {}, self.task_types)
        self.task_types = _check_types(self.tasks, self.task_types)
        self.thresholds = _check_per_label("thresholds", self.thresholds, self.tasks, self.task_types, (MULTI_LABEL,),
                                           lambda value: 0 < value < 1, "a number in (0, 1)")
        self.class_weights = _check_per_label("class_weights", self.class_weights, self.tasks, self.task_types,
                                              (SINGLE_LABEL, MULTI_LABEL), lambda value: 0 < value < math.inf,
                                              "a positive number")
        self.target_stats = _check_target_stats(self.target_stats, self.tasks, self.task_types)

    def task_type(self, task: str) -> str:
        """`"single_label"`, `"multi_label"` or `"regression"`."""
        return (self.task_types or {}).get(task, SINGLE_LABEL)

    def task_thresholds(self, task: str) -> list[float]:
        """The decision threshold of each label of a multi-label task."""
        return list((self.thresholds or {}).get(task) or [DEFAULT_THRESHOLD] * len(self.tasks[task]))

    def task_target_stats(self, task: str) -> tuple[list[float], list[float]]:
        """(mean, std) of each output of a regression task."""
        stats = (self.target_stats or {}).get(task)
        outputs = len(self.tasks[task])
        return (list(stats["mean"]), list(stats["std"])) if stats else ([0.0] * outputs, [1.0] * outputs)

    def to_json_string(self, use_diff: bool = True) -> str:
        # transformers sorts every key; the order of the tasks is part of the model (outputs, ONNX graph), keep it.
        data = json.loads(super().to_json_string(use_diff))
        if "tasks" in data:
            data["tasks"] = dict(self.tasks)
        return json.dumps(data, indent=2) + "\n"

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    @property
    def head_size(self) -> int:
        return int(self.head_hidden_size or max(1, self.encoder.hidden_size // 2))

    @property
    def num_labels_per_task(self) -> dict[str, int]:
        return {task: len(labels) for task, labels in self.tasks.items()}

    def task_weight(self, task: str) -> float:
        return float((self.task_weights or {}).get(task, 1.0))


def _whole(value, minimum: int) -> bool:
    """`value` is a whole number (an int, or a float such as 256.0 that a JSON file may hold) of at least `minimum`."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()
            and value >= minimum)


def _check_tasks(tasks, task_types=None) -> dict[str, list[str]]:
    if not isinstance(tasks, dict):
        raise TypeError(
            f"tasks must be a dict mapping task name to its label names, got {type(tasks).__name__}; "
            'e.g. {"sentiment": ["negative", "neutral", "positive"]}.'
        )
    checked = {}
    for task, labels in tasks.items():
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"Task names must be non-empty strings, got {task!r}.")
        if "." in task or task != task.strip():
            raise ValueError(f"Task name {task!r} may not contain a dot or surrounding spaces; rename it.")
        if task == "average":  # the metrics' average_accuracy etc. would be taken for the task's own
            raise ValueError("'average' names the mean of the tasks' metrics; give the task another name.")
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
            raise TypeError(f"Labels of task {task!r} must be a list of names, got {labels!r}.")
        labels = list(labels)
        single = (task_types or {}).get(task, SINGLE_LABEL) == SINGLE_LABEL
        if len(labels) < (2 if single else 1):
            raise ValueError(f"Task {task!r} needs at least two labels, got {labels}." if single else
                             f"Task {task!r} needs at least one label (or output name), got {labels}.")
        for label in labels:
            if not isinstance(label, str) or not label.strip():
                raise ValueError(f"Task {task!r} has an empty or non-string label {label!r}; labels are names.")
            if label != label.strip():  # ' sports' and 'sports' would be two classes
                raise ValueError(f"Task {task!r} has label {label!r} with surrounding spaces; strip them (in the "
                                 "data, too).")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"Task {task!r} lists label(s) {duplicates} more than once; each label must be unique.")
        checked[task] = labels
    return checked


def _check_types(tasks: dict[str, list[str]], task_types) -> dict[str, str] | None:
    if task_types is None:
        return None
    if not isinstance(task_types, dict):
        raise TypeError(f"task_types must be a dict mapping task name to its type, got {type(task_types).__name__}; "
                        f'e.g. {{"emotions": "{MULTI_LABEL}"}}.')
    unknown = sorted(set(task_types) - set(tasks))
    if unknown:
        raise ValueError(f"task_types names unknown task(s) {unknown}; the tasks are {list(tasks)}.")
    for task, kind in task_types.items():
        if kind not in TASK_TYPES:
            raise ValueError(f"Task {task!r} has unknown type {kind!r}; use one of {', '.join(TASK_TYPES)}.")
    checked = {task: task_types[task] for task in tasks if task_types.get(task, SINGLE_LABEL) != SINGLE_LABEL}
    return checked or None


def _check_per_label(name: str, values, tasks, task_types, kinds, valid, expected: str) -> dict | None:
    """A `{task: [one number per label]}` setting of tasks of the given `kinds`."""
    if values is None:
        return None
    if not isinstance(values, dict):
        raise TypeError(f"{name} must be a dict mapping task name to one number per label, got "
                        f"{type(values).__name__}.")
    checked = {}
    for task, numbers in values.items():
        if task not in tasks:
            raise ValueError(f"{name} names unknown task {task!r}; the tasks are {list(tasks)}.")
        kind = (task_types or {}).get(task, SINGLE_LABEL)
        if kind not in kinds:
            raise ValueError(f"{name} applies to {' and '.join(kinds)} tasks; task {task!r} is {kind}. Remove it.")
        if isinstance(numbers, (str, bytes)) or not isinstance(numbers, (list, tuple)) or len(numbers) != len(tasks[task]):
            raise ValueError(f"{name}[{task!r}] must list one number per label ({len(tasks[task])}: "
                             f"{tasks[task]}), got {numbers!r}.")
        for number in numbers:
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not valid(number):
                raise ValueError(f"{name}[{task!r}] holds {number!r}; each value must be {expected}.")
        checked[task] = [float(number) for number in numbers]
    return checked or None


def _check_target_stats(stats, tasks, task_types) -> dict | None:
    if stats is None:
        return None
    if not isinstance(stats, dict):
        raise TypeError(f"target_stats must be a dict mapping task name to {{'mean': [...], 'std': [...]}}, got "
                        f"{type(stats).__name__}.")
    checked = {}
    for task, values in stats.items():
        if task not in tasks or (task_types or {}).get(task) != REGRESSION:
            raise ValueError(f"target_stats names {task!r}, which is no regression task; the regression tasks are "
                             f"{[name for name, kind in (task_types or {}).items() if kind == REGRESSION]}.")
        outputs = len(tasks[task])
        if not isinstance(values, dict) or set(values) != {"mean", "std"}:
            raise ValueError(f"target_stats[{task!r}] must be {{'mean': [...], 'std': [...]}}, got {values!r}.")
        for key in ("mean", "std"):
            numbers = values[key]
            if not isinstance(numbers, (list, tuple)) or len(numbers) != outputs or any(
                    isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n)
                    or (key == "std" and n <= 0) for n in numbers):
                wanted = "positive numbers" if key == "std" else "finite numbers"
                raise ValueError(f"target_stats[{task!r}][{key!r}] must list {outputs} {wanted} (one per output "
                                 f"{tasks[task]}), got {numbers!r}.")
        checked[task] = {"mean": [float(n) for n in values["mean"]], "std": [float(n) for n in values["std"]]}
    return checked or None


__all__ = ["DEFAULT_THRESHOLD", "MULTI_LABEL", "REGRESSION", "SINGLE_LABEL", "TASK_TYPES", "SentenceMultiTaskConfig"]
