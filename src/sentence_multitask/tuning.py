"""Recipe search: `sentence-multitask train --hp_search N` runs N Optuna trials through
`Trainer.hyperparameter_search` on the training and validation data, records them in `hp_search.json` in --output_dir,
and hands the best trial's options back, with which `train` then trains the final model.

The objective is the validation metric of --metric_for_best_model, by default `average_macro_f1` (the mean over tasks
of each task's macro-F1). Optuna is an optional dependency: `pip install 'sentence-multitask[tune]'`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from .arguments import LOSS_BALANCING_MODES
from .sampling import SAMPLING_MODES

logger = logging.getLogger(__name__)

TRIALS_FILE = "hp_search.json"
DEFAULT_OBJECTIVE = "average_macro_f1"
TASK_WEIGHT_PREFIX = "task_weight_"  # trial parameters that are task weights (of the model), not Trainer options
STUDY_NAME = "sentence-multitask"


def require_optuna():
    """The optuna module, or an error that names the extra to install."""
    try:
        import optuna
    except ImportError:
        raise ImportError("--hp_search needs Optuna: pip install 'sentence-multitask[tune]' (or pip install "
                          "optuna).") from None
    return optuna


def search_space(trial, args, tasks: Sequence[str], distilling: bool) -> dict[str, Any]:
    """The Trainer options a trial sets: encoder and head learning rates, epochs (up to --num_train_epochs, when no
    --max_steps fixes the length), task sampling, its temperature and the loss balancing (several tasks), and the
    distillation temperature (with --teachers)."""
    space: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 2e-4, log=True),
        "head_learning_rate": trial.suggest_float("head_learning_rate", 1e-4, 3e-3, log=True),
    }
    if args.max_steps <= 0 and args.num_train_epochs > 1:
        space["num_train_epochs"] = trial.suggest_int("num_train_epochs", 1, math.ceil(args.num_train_epochs))
    if len(tasks) > 1:
        space["task_sampling"] = trial.suggest_categorical("task_sampling", list(SAMPLING_MODES))
        if space["task_sampling"] == "temperature":
            space["sampling_temperature"] = trial.suggest_float("sampling_temperature", 1.0, 5.0)
        space["loss_balancing"] = trial.suggest_categorical("loss_balancing", list(LOSS_BALANCING_MODES))
    if distilling:
        space["distillation_temperature"] = trial.suggest_float("distillation_temperature", 1.0, 4.0)
    return space


def trial_task_weights(trial, tasks: Sequence[str]) -> dict[str, float]:
    """The task weights of a trial (several tasks only; none outside a search, where `trial` is None). Optuna
    returns the same value when `model_init` and the search space ask a trial for the same parameter."""
    if trial is None or len(tasks) < 2:
        return {}
    return {task: trial.suggest_float(TASK_WEIGHT_PREFIX + task, 0.5, 2.0, log=True) for task in tasks}


def objective(args) -> tuple[str, str]:
    """(metric key, direction) of the search: --metric_for_best_model, else the mean macro-F1 over tasks."""
    name = args.metric_for_best_model or DEFAULT_OBJECTIVE
    key = name if name.startswith("eval_") else f"eval_{name}"
    maximize = args.greater_is_better is not False if args.metric_for_best_model else True
    return key, "maximize" if maximize else "minimize"


def command_line(params: dict[str, Any]) -> list[str]:
    """The `sentence-multitask train` options of a trial's parameters."""
    options, weights = [], []
    for name, value in params.items():
        if name.startswith(TASK_WEIGHT_PREFIX):
            weights.append(f"{name[len(TASK_WEIGHT_PREFIX):]}={value:.4g}")
        else:
            options += [f"--{name}", f"{value:.4g}" if isinstance(value, float) else str(value)]
    return options + (["--task_weights", *weights] if weights else [])


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """A trial's parameters as (Trainer options, task weights)."""
    options = {name: value for name, value in params.items() if not name.startswith(TASK_WEIGHT_PREFIX)}
    weights = {name[len(TASK_WEIGHT_PREFIX):]: value for name, value in params.items()
               if name.startswith(TASK_WEIGHT_PREFIX)}
    return options, weights


def search_recipe(trainer, args, tasks: Sequence[str], distilling: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Run `args.hp_search` trials with `trainer` (built with `model_init`, whose trial sets the task weights with
    `trial_task_weights`); write every trial and the best to `hp_search.json` in `args.output_dir`; return the best
    trial's (Trainer options, task weights)."""
    optuna = require_optuna()
    key, direction = objective(args)
    storage = optuna.storages.InMemoryStorage()

    def compute_objective(metrics: dict[str, float]) -> float:
        if key not in metrics:
            raise KeyError(f"--hp_search: evaluation reported no {key}; choose --metric_for_best_model among "
                           f"{sorted(metrics)}.")
        return metrics[key]

    best = trainer.hyperparameter_search(
        hp_space=lambda trial: search_space(trial, args, tasks, distilling),
        compute_objective=compute_objective, n_trials=args.hp_search, direction=direction, backend="optuna",
        study_name=STUDY_NAME, storage=storage, sampler=optuna.samplers.TPESampler(seed=args.seed),
    )
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    trials = [{"number": trial.number, "state": trial.state.name, "objective": trial.value, "params": trial.params}
              for trial in study.trials]
    record = {"objective": key, "direction": direction, "trials": trials,
              "best": {"number": int(best.run_id), "objective": best.objective, "params": best.hyperparameters,
                       "options": command_line(best.hyperparameters)}}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, TRIALS_FILE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    logger.info("Best of %d trials: %s = %.4f with %s; training the final model with these options (all trials: "
                "%s).", len(trials), key, best.objective, " ".join(command_line(best.hyperparameters)),
                os.path.join(args.output_dir, TRIALS_FILE))
    return split_params(best.hyperparameters)


def check_search(args, has_validation: bool) -> None:
    """--hp_search needs validation data, one process and joint training; checked before any trial."""
    if not args.hp_search:
        return
    require_optuna()
    if not has_validation:
        raise ValueError("--hp_search scores each trial on validation data: give --validation_files (with labels).")
    if args.world_size > 1:
        raise ValueError("--hp_search runs in one process: run the search without torchrun, then train the final "
                         "model under torchrun with the options it prints.")
    if args.training_mode != "joint":
        raise ValueError("--hp_search searches joint training; leave out --training_mode sequential.")

