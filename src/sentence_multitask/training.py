"""Multi-task fine-tuning with the Hugging Face Trainer: data -> tokenised datasets -> Trainer -> saved model + card.

Run `sentence-multitask train --help` for every option; a JSON file can hold them all
(`sentence-multitask train options.json`). With no options it fine-tunes all-MiniLM-L6-v2 on the bundled demo set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from transformers import AutoConfig, set_seed

from . import SentenceMultiTaskModel
from .arguments import (
    DEFAULT_MAX_LENGTH,
    DataArguments,
    ModelArguments,
    MultiTaskTrainingArguments,
    check_model_sources,
    parse_args,
    parse_task_weights,
)
from .card import training_summary
from .checkpoints import PHASE_FOLDERS, check_output_dir, check_steps_left, resume_plan, save_model_atomically
from .data import MultiTaskCollator, prepare_data, rows_with_labels, usable_max_length
from .distillation import (DistillationCollator, add_teacher_logits, check_teacher_folds, parse_teachers,
                           task_teacher_annealing, teacher_logits_cache)
from .metrics import MultiTaskMetrics, check_metric_for_best_model, tune_model_thresholds
from .modeling_sentence_multitask import default_encoder, load_tokenizer
from .trainer import CheckpointCard, HubPush, MultiTaskTrainer
from .tuning import check_search, search_recipe, trial_task_weights

logger = logging.getLogger(__name__)


def build_model(model_args: ModelArguments, tasks: dict[str, list[str]], task_weights: dict[str, float] | None,
                heads: dict[str, Any] | None = None):
    """A new model on --encoder, or the saved --model with a new head for each task it lacks. `heads`:
    the config settings of the heads (`PreparedData.heads`: task types, target statistics, class weights)."""
    heads = {name: value for name, value in (heads or {}).items() if value}
    if model_args.model:
        model = SentenceMultiTaskModel.from_pretrained(model_args.model)
        types = heads.get("task_types") or {}
        for task, labels in tasks.items():
            kind = types.get(task, "single_label")
            if task not in model.config.tasks:
                logger.info("Adding %s task %r (labels %s) with a new head to %s", kind, task, labels,
                            model_args.model)
                model.add_task(task, labels, kind, **{name: values[task] for name, values in heads.items()
                                                      if name != "task_types" and task in values})
            elif model.config.task_type(task) != kind:
                raise ValueError(f"{model_args.model} has a {model.config.task_type(task)} head for task "
                                 f"{task!r}, but the data makes it {kind}; give --task_types {task}="
                                 f"{model.config.task_type(task)} or start from --encoder.")
            elif model.config.tasks[task] != labels:
                raise ValueError(
                    f"{model_args.model} has labels {model.config.tasks[task]} for task {task!r}, but the "
                    f"data asks for {labels}; keep the model's labels (--labels {task}=...) or start from --encoder."
                )
        weights = {**(model.config.task_weights or {}), **(task_weights or {})}
        # Checked by the config class itself, as on the from_encoder path.
        model.config.task_weights = type(model.config)(tasks=model.config.tasks, task_weights=weights).task_weights
        model.config.class_weights = {**(model.config.class_weights or {}), **(heads.get("class_weights") or {})} or None
        model.config.check_heads()
        return model
    return SentenceMultiTaskModel.from_encoder(
        model_args.encoder,
        tasks=tasks,
        head_hidden_size=model_args.head_hidden_size,
        head_dropout=model_args.head_dropout,
        pooling=model_args.pooling,
        task_weights=task_weights,
        **heads,
    )


def training_phases(args: MultiTaskTrainingArguments,
                    tasks: Sequence[str]) -> list[tuple[list[str], MultiTaskTrainingArguments]]:
    """(tasks, Trainer arguments) of each phase: one in joint mode; in sequential mode the primary tasks, then the
    others, each phase in its own folder (phase 2 trains heads only, at --head_learning_rate). The Trainer never
    pushes: `HubPush` and `train` do."""
    if args.training_mode == "joint":
        return [(list(tasks), args.replace(push_to_hub=False))]
    unknown = [task for task in args.primary_tasks if task not in tasks]
    if unknown:
        raise ValueError(f"--primary_tasks names unknown task(s) {unknown}; the tasks are {list(tasks)}.")
    others = [task for task in tasks if task not in args.primary_tasks]
    if not others:
        raise ValueError("--primary_tasks lists every task: nothing is left for the second phase.")
    # train() resumes each phase from its own checkpoint (resume_plan)
    common = {"push_to_hub": False, "resume_from_checkpoint": None}
    second = {"load_best_model_at_end": False}
    metric = (args.metric_for_best_model or "").removeprefix("eval_")
    if metric and any(metric.startswith(f"{task}_") for task in args.primary_tasks):
        second["metric_for_best_model"] = "loss"  # phase 2 evaluates the other tasks only
    if args.head_learning_rate is not None:
        second["learning_rate"] = args.head_learning_rate
    first_dir, second_dir = (os.path.join(args.output_dir, folder) for folder in PHASE_FOLDERS)
    return [(list(args.primary_tasks), args.replace(output_dir=first_dir, **common)),
            (others, args.replace(output_dir=second_dir, **common, **second))]


def train(model_args: ModelArguments, data_args: DataArguments, args: MultiTaskTrainingArguments) -> dict[str, Any]:
    """The main job: returns the final validation metrics (flat, as the Trainer logs them)."""
    started = time.time()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    replaced = check_output_dir(args)
    resumes = resume_plan(args)
    set_seed(args.seed)
    weights = parse_task_weights(args.task_weights)
    teachers = parse_teachers(args.teachers)
    task_teacher_annealing(args.teacher_annealing, teachers)
    check_teacher_folds(teachers, args.teacher_folds)
    check_model_sources(model_args)

    # Tokenizer first (cheap), so that data errors surface before the encoder's weights are loaded.
    source = model_args.model or model_args.encoder or default_encoder()
    saved = (SentenceMultiTaskModel.config_class.from_pretrained(model_args.model)
             if model_args.model else None)
    tokenizer = load_tokenizer(source, saved.encoder if saved else None)
    encoder_config = saved.encoder if saved else AutoConfig.from_pretrained(source)
    requested = data_args.max_length or (saved.max_length if saved else DEFAULT_MAX_LENGTH)
    data_args.max_length = usable_max_length(requested, encoder_config, tokenizer)
    data = prepare_data(data_args, tokenizer, saved.tasks if saved else None, saved.task_types if saved else None,
                        args.teacher_folds)
    logger.info("Tasks: %s; %d training rows from %d source(s)", data.tasks, len(data.train), len(data.train_sizes))

    def make_model(task_weights: dict[str, float]):
        model = build_model(model_args, data.tasks, task_weights or None, data.heads)
        model.tokenizer = tokenizer
        model.config.max_length = data_args.max_length  # predict/encode truncate as training did
        model.config.holdout_fold = data_args.holdout_fold  # checked by a student's --teacher_folds
        if model_args.freeze_encoder:
            model.encoder.requires_grad_(False)
        if model_args.trainable_encoder_layers is not None:
            freeze_lower_layers(model.encoder, model_args.trainable_encoder_layers)
        return model

    model = make_model(weights)
    if teachers:  # once, before training (and before any search trial)
        # With the cache on, the first process of each node fills it and the others read it; without, all compute.
        first = args.main_process_first(desc="teacher logits") if teacher_logits_cache() else contextlib.nullcontext()
        with first:
            data.train = add_teacher_logits(data.train, teachers, model.config, tokenizer, args.device,
                                            args.per_device_eval_batch_size, args.bf16, args.teacher_rows,
                                            args.teacher_folds)
    collator = DistillationCollator if teachers else MultiTaskCollator
    metrics = MultiTaskMetrics(data.tasks, model.config)
    if data.validation is not None and len(rows_with_labels(data.validation, list(data.tasks))) == 0:
        logger.warning("No validation row has a label for any task: evaluation is skipped.")
        data.validation = None
    if data.validation is None and args.eval_strategy != "no":
        logger.warning("No validation data: evaluation is skipped.")
        args.eval_strategy = "no"
        args.load_best_model_at_end = False
    check_metric_for_best_model(args, data)
    check_search(args, data.validation is not None)
    if args.hp_search:
        def model_init(trial=None):
            return make_model({**weights, **trial_task_weights(trial, list(data.tasks))})

        search = MultiTaskTrainer(
            model_init=model_init, args=args.replace(save_strategy="no", load_best_model_at_end=False),
            train_dataset=data.train, eval_dataset=data.validation, data_collator=collator(tokenizer, list(data.tasks)),
            processing_class=tokenizer, compute_metrics=metrics,
        )
        options, best_weights = search_recipe(search, args, list(data.tasks), bool(teachers))
        args = args.replace(**options)
        weights = {**weights, **best_weights}
        set_seed(args.seed)
        model = make_model(weights)
    phases = training_phases(args, list(data.tasks))

    if replaced and args.should_save:  # --overwrite_model: the earlier run's checkpoints go with its model
        logger.info("--overwrite_model: removing the earlier run's checkpoints %s", ", ".join(replaced))
        for folder in replaced:
            shutil.rmtree(os.path.join(args.output_dir, folder))
    callbacks = [CheckpointCard(training_summary(model_args, data_args, args, data))]
    if args.push_to_hub:  # the checkpoints of sequential training's phases are not pushed
        callbacks.append(HubPush(checkpoints=len(phases) == 1))
    epochs, phase_metrics = [], []
    for number, ((active, phase_args), resume) in enumerate(zip(phases, resumes), start=1):
        if len(phases) > 1:
            logger.info("Phase %d of sequential training: tasks %s", number, active)
        if number == 2:  # the encoder and the primary heads stay as phase 1 left them
            model.encoder.requires_grad_(False)
            for task in phases[0][0]:
                model.heads[task].requires_grad_(False)
        eval_set = rows_with_labels(data.validation, active)
        if eval_set is not None and len(eval_set) == 0:
            logger.warning("No validation row has a label for %s: phase %d is not evaluated.", active, number)
            eval_set = None
            phase_args = phase_args.replace(eval_strategy="no", load_best_model_at_end=False)
        trainer = MultiTaskTrainer(
            model=model,
            args=phase_args,
            train_dataset=rows_with_labels(data.train, active),
            eval_dataset=eval_set,
            data_collator=collator(tokenizer, active),
            processing_class=tokenizer,
            compute_metrics=metrics,
            callbacks=callbacks,
        )
        check_steps_left(resume, phase_args)
        result = trainer.train(resume_from_checkpoint=resume)
        epochs.append(trainer.state.epoch or 0.0)
        if trainer.loss_balancer is not None:
            logger.info("Learned task weights (exp(-s)): %s", trainer.loss_balancer.task_weights())
        phase_metrics.append(result.metrics)
        if len(phases) > 1:
            trainer.save_metrics("train", result.metrics, combined=False)  # phaseN/train_results.json
    trainer.args = args  # the final results go to --output_dir, also after sequential training's phase folders
    trainer.save_metrics("train", phase_metrics[0] if len(phases) == 1 else sequential_metrics(phase_metrics))

    # Final evaluation of every task with the final weights.
    final_metrics: dict[str, Any] = {}
    if data.validation is not None:
        trainer.data_collator = MultiTaskCollator(tokenizer, list(data.tasks))
        final_metrics = trainer.evaluate(eval_dataset=data.validation)
        trainer.log_metrics("eval", final_metrics)
        trainer.save_metrics("eval", final_metrics)
        tune_model_thresholds(model.config, metrics)  # multi-label tasks: per-label thresholds, saved with the model

    model.training_summary = training_summary(model_args, data_args, args, data, metrics.last, time.time() - started,
                                              epochs)
    if trainer.is_world_process_zero():
        save_model_atomically(model, args.output_dir)
        logger.info("Model saved to %s", os.path.abspath(args.output_dir))
        if args.push_to_hub:  # code, weights, tokenizer and card together (one commit)
            model.push_to_hub(model.training_summary["repo_id"], private=args.hub_private_repo, token=args.hub_token,
                              commit_message="Upload sentence-multitask model", revision=args.hub_revision)
    return final_metrics


def freeze_lower_layers(encoder, keep: int) -> None:
    """Fix `encoder` (embeddings, pooler, every layer) but its top `keep` transformer layers: the blocks of its
    ModuleList of `num_hidden_layers` entries (BERT's encoder.layer, and the like in other encoders)."""
    count = encoder.config.num_hidden_layers
    layers = next((module for module in encoder.modules()
                   if isinstance(module, torch.nn.ModuleList) and len(module) == count), None)
    if layers is None:
        raise ValueError(f"--trainable_encoder_layers: no list of {count} layers found in the encoder "
                         f"({type(encoder).__name__}); use --freeze_encoder or train the whole encoder.")
    if keep > count:
        raise ValueError(f"--trainable_encoder_layers {keep}: the encoder has {count} layers.")
    encoder.requires_grad_(False)
    for layer in list(layers)[count - keep:]:
        layer.requires_grad_(True)


def sequential_metrics(phases: Sequence[dict[str, float]]) -> dict[str, float]:
    """The training metrics of a whole sequential run: each phase's under `phaseN_`, and the run's total time."""
    metrics = {f"phase{number}_{key}": value for number, phase in enumerate(phases, start=1) for key, value in phase.items()}
    metrics["train_runtime"] = sum(phase.get("train_runtime", 0.0) for phase in phases)
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    model_args, data_args, args = parse_args(argv)
    return train(model_args, data_args, args)


if __name__ == "__main__":
    main()
