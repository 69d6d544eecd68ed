"""How `sentence-multitask ... --help` reads: one spelling per option (the first; other spellings still work), each
default stated once, the options of `train` in groups (the package's first, then the Trainer options used most; the
other Trainer options with `train --help_all`), and an example at the end of every subcommand."""

from __future__ import annotations

import argparse


def _states_nothing(default) -> bool:
    """Whether a default is the same as "not given" (None, False, an empty list): no default worth stating."""
    return default is None or default is False or default == [] or default is argparse.SUPPRESS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option under its first name only (`--text_column`, not also `--text-column`) and appends
    "(default: X)" to help that does not already speak of its default."""

    def _format_action_invocation(self, action):
        long_names = [option for option in action.option_strings if option.startswith("--")]
        if len(long_names) < 2:
            return super()._format_action_invocation(action)
        short_names = [option for option in action.option_strings if not option.startswith("--")]
        shown = argparse.Action(option_strings=short_names + long_names[:1], dest=action.dest, nargs=action.nargs,
                                metavar=action.metavar, choices=action.choices)
        return super()._format_action_invocation(shown)

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text.lower() and "%(default)" not in text
                and not _states_nothing(action.default) and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


# `train --help`: title -> option names, in this order. Every other option is an "other Trainer option".
TRAIN_GROUPS = {
    "data": ["train_files", "validation_files", "tasks", "labels", "text_column", "label_columns", "task_types",
             "label_delimiter", "allow_empty_labels", "class_weights", "max_length", "dataset_names", "train_split",
             "validation_split", "max_train_samples", "max_eval_samples", "holdout_fold", "preprocessing_num_workers"],
    "model": ["encoder", "model", "head_hidden_size", "head_dropout", "pooling", "freeze_encoder",
              "trainable_encoder_layers"],
    "multi-task training": ["task_sampling", "sampling_temperature", "task_weights", "loss_balancing",
                            "training_mode", "primary_tasks", "head_learning_rate", "teachers",
                            "distillation_temperature", "teacher_annealing", "distillation_weight", "teacher_rows",
                            "teacher_folds",
                            "hp_search"],
    "training (Trainer options)": [
        "output_dir", "overwrite_model", "learning_rate", "num_train_epochs", "max_steps",
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "warmup_ratio",
        "weight_decay", "lr_scheduler_type", "train_sampling_strategy", "eval_strategy", "eval_steps",
        "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
        "greater_is_better", "logging_steps", "report_to", "seed", "bf16", "fp16", "use_cpu",
        "resume_from_checkpoint"],
    "publishing to the Hub": ["push_to_hub", "hub_model_id", "hub_token", "hub_revision", "hub_private_repo",
                              "hub_strategy"],
}
OTHER_TRAINER_OPTIONS = "other Trainer options (accepted as TrainingArguments documents them)"
# Trainer options that do nothing here, or only one value works: never shown (arguments.py refuses --do_predict
# and --remove_unused_columns true).
NO_OP_OPTIONS = ("do_train", "do_eval", "do_predict", "local_rank", "remove_unused_columns")

TRAIN_EXAMPLE = """\
examples:
  sentence-multitask train --train_files topic=topic.csv sentiment=sentiment.csv \\
      --validation_files topic=topic_val.csv sentiment=sentiment_val.csv --output_dir my-model
  sentence-multitask train options.json       # the same options as one JSON object
"""


def group_train_options(parser: argparse.ArgumentParser, show_all: bool) -> None:
    """Sort the options of the `train` parser (an HfArgumentParser) into TRAIN_GROUPS; the other Trainer options
    go last (`show_all`) or are left out of the help (they still parse).

    argparse has no public way to move an option between groups: this uses its `_action_groups` and `_group_actions`
    lists, here only (tests/test_cli_help.py fails if they change)."""
    by_dest: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "help_all"):
            by_dest.setdefault(action.dest, []).append(action)
    for group in parser._action_groups:
        group._group_actions[:] = [action for action in group._group_actions if action.dest in ("help", "help_all")]
    for title, names in TRAIN_GROUPS.items():
        parser.add_argument_group(title)._group_actions.extend(action for name in names for action in by_dest.pop(name))
    rest = parser.add_argument_group(OTHER_TRAINER_OPTIONS)
    for name, actions in by_dest.items():
        rest._group_actions.extend(actions)
        if name in NO_OP_OPTIONS or not show_all:
            for action in actions:
                action.help = argparse.SUPPRESS
    for group in parser._action_groups:  # `--no_X` of a boolean X that defaults to true: `--X false` says the same
        for action in group._group_actions:
            if any(option.startswith("--no_") for option in action.option_strings):
                action.help = argparse.SUPPRESS
