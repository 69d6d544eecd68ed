"""What a model card says about training: the summary of a run (data, options, metrics) that the final model's card
is rendered from, and the card of each intermediate checkpoint. The rendering itself travels with the model
(card_sentence_multitask.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .arguments import teacher_annealing_of
from .card_sentence_multitask import render_model_card

CHECKPOINT_METRICS_NOTE = ("Intermediate checkpoint: the evaluations run so far are in the `log_history` of its "
                           "trainer_state.json; the final model's card lists its validation metrics.")
DEMO_NOTE = ("**Demo model.** It was fine-tuned on the small demonstration set bundled with sentence-multitask "
             "(360 hand-written sentences), to show the workflow; do not use it for real decisions.")


def training_summary(model_args, data_args, args, data, metrics: dict[str, dict[str, Any]] | None = None,
                     seconds: float = 0.0, epochs: Sequence[float] | None = None) -> dict[str, Any]:
    """What the card says about a training run: its data (a `PreparedData`), options, and the per-task `metrics` of
    the final evaluation (`MultiTaskMetrics.last`); `epochs`: the epochs each phase actually trained (a --max_steps
    run can stop long before --num_train_epochs)."""
    demo = not data_args.train_files and not data_args.dataset_names
    metrics = metrics or {}
    if epochs:
        shown = " + ".join(f"{epoch:.4g}" for epoch in epochs)
        epochs_value = shown + (" (phase 1 + phase 2)" if len(epochs) > 1 else "")
    else:
        epochs_value = args.num_train_epochs
    hyper = {
        "encoder": model_args.model or model_args.encoder or "all-MiniLM-L6-v2",
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
    hyper.update(recipe_summary(args))
    return {
        "model_name": Path(args.output_dir).name,
        "repo_id": args.hub_model_id or Path(args.output_dir).name,
        "datasets": data.dataset_names,
        "data": data.description,
        "validation_data": data.validation_description,
        "data_note": DEMO_NOTE if demo else "",
        "hyperparameters": hyper,
        "metrics": {task: {k: v for k, v in scores.items() if k != "confusion_matrix"} for task, scores in metrics.items()},
        "confusion_matrices": {task: scores["confusion_matrix"] for task, scores in metrics.items()
                               if "confusion_matrix" in scores},  # single-label tasks
    }


def recipe_summary(args) -> dict[str, Any]:
    """The card's lines on distillation, loss balancing and the recipe search, for the runs that used them."""
    lines: dict[str, Any] = {}
    if getattr(args, "teachers", None):
        described = {"linear": "annealed linearly from 1 to 0", "constant": f"constant {args.distillation_weight}"}
        per_task = {task: described[teacher_annealing_of(args.teacher_annealing, task)]
                    for task in dict.fromkeys(item.partition("=")[0].strip() for item in args.teachers)}
        weight = (next(iter(per_task.values())) if len(set(per_task.values())) == 1
                  else ", ".join(f"{task} {text}" for task, text in per_task.items()))
        rows = ", on every training row" if getattr(args, "teacher_rows", "labelled") == "all" else ""
        if getattr(args, "teacher_folds", 0):
            rows += f", cross-fitted over {args.teacher_folds} folds: each teacher labels the rows it did not train on"
        lines["teachers"] = (f"{', '.join(args.teachers)} (temperature {args.distillation_temperature}, teacher "
                             f"weight {weight}{rows})")
    if getattr(args, "loss_balancing", "static") != "static":
        lines["loss balancing"] = f"{args.loss_balancing} (learned task weights)"
    if getattr(args, "hp_search", 0):
        lines["recipe search"] = f"best of {args.hp_search} Optuna trials (hp_search.json)"
    return lines


def checkpoint_summary(summary: dict[str, Any], config, step: int, epoch: float) -> dict[str, Any]:
    """The run's `summary` as a checkpoint's card tells it: an intermediate checkpoint at `step`, without metrics (not
    "not fine-tuned yet", nor the card, metrics included, of the model training continued from)."""
    summary = dict(summary)
    hyper = {key: value for key, value in (summary.get("hyperparameters") or {}).items()
             if key not in ("epochs", "training time")}
    hyper = {"steps trained": step, "epochs trained": f"{epoch:.4g}", **hyper}
    tasks = ", ".join(f"`{task}`" for task in config.tasks)
    base = getattr(config, "base_model", None) or hyper.get("encoder") or "its encoder"
    note = (f"**Intermediate checkpoint** at step {step} (epoch {epoch:.4g}) of a sentence-multitask training "
            f"run of the tasks {tasks}, starting from `{base}`. It is saved to resume training; the final model "
            "and its card, with the validation metrics, are written when training ends.")
    summary.update(data_note=(note + "\n\n" + summary["data_note"]) if summary.get("data_note") else note,
                   hyperparameters=hyper, metrics={}, confusion_matrices={}, metrics_note=CHECKPOINT_METRICS_NOTE)
    return summary


def write_checkpoint_card(model, folder: str | os.PathLike, summary: dict[str, Any], step: int, epoch: float) -> None:
    """Write README.md of the checkpoint in `folder`, saved at `step` of the run that `summary` describes."""
    # The renderer reads the summary from the model: hand it one that carries the checkpoint's.
    card = render_model_card(SimpleNamespace(config=model.config,
                                             training_summary=checkpoint_summary(summary, model.config, step, epoch)))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card)
