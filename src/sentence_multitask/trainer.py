"""The Trainer of a multi-task run: per-task loss with label smoothing, distillation from teachers and learned loss
balancing, task mixing and length grouping, a separate head learning rate; and the callbacks that make each checkpoint
a complete, truthfully described model that resumes exactly."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from huggingface_hub import HfApi
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy

from .arguments import teacher_annealing_of
from .card import write_checkpoint_card
from .checkpoints import last_checkpoint, save_checkpoint_model
from .distillation import distillation_loss, teacher_weight
from .inference_sentence_multitask import labelled
from .sampling import MultiTaskSampler

LOSS_BALANCING_FILE = "loss_balancing.pt"  # the learned loss weights, saved with each checkpoint
# Files of a checkpoint that only resuming needs: not part of the model pushed to the repository's root.
TRAINING_STATE_FILES = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
                        "training_args.bin", LOSS_BALANCING_FILE, "_*"]


class UncertaintyWeighting(nn.Module):
    """Learned task weights (Kendall et al. 2018), classification form: one log-variance `s_t` per task and
    `loss = sum_t exp(-s_t) * L_t + 0.5 * w_t * s_t` over the tasks labelled in the batch, where `L_t` is the task's
    loss weighted by its static weight `w_t` (so that `w_t` still scales the task at the optimum `exp(-s_t) =
    0.5 / (L_t / w_t)`). Part of the training run, not of the model: its parameters join the optimizer, and it is
    saved with each checkpoint."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses: Mapping[str, torch.Tensor], present: Mapping[str, bool],
                weights: Mapping[str, float]) -> torch.Tensor:
        total = 0.0
        for index, task in enumerate(self.tasks):
            if task in losses and present.get(task, False):
                s = self.log_variances[index]
                total = total + torch.exp(-s) * losses[task] + 0.5 * weights[task] * s
            elif task in losses:
                total = total + losses[task]  # an exact zero that keeps the head in the graph
        return total

    def task_weights(self) -> dict[str, float]:
        """exp(-s_t) per task: the learned weight of each task's loss."""
        return {task: math.exp(-value) for task, value in zip(self.tasks, self.log_variances.tolist())}


class MultiTaskTrainer(Trainer):
    """Trainer with task mixing, length grouping, a separate head learning rate, per-task label smoothing, teacher
    logits from the batch (`teacher_logits`, see distillation.py) and `--loss_balancing uncertainty`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_balancer: UncertaintyWeighting | None = None
        self.resume_folder: str | None = None
        self.add_callback(LossBalancingState(self))

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """`Trainer.train`; with --loss_balancing uncertainty, a fresh `UncertaintyWeighting` joins the optimizer
        (restored from the checkpoint when resuming). It is made in `create_optimizer`, after a search trial has set
        the options, so that --hp_search can choose the balancing."""
        self.loss_balancer = None
        if resume_from_checkpoint is True:  # the last complete one, not a part-written one (as the Trainer would)
            resume_from_checkpoint = last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint-N folder in {self.args.output_dir} to resume from.")
        self.resume_folder = resume_from_checkpoint or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; a checkpoint's model, with the learned loss weights (`loss_balancing.pt`), is saved
        through `save_checkpoint_model`: a checkpoint-N folder appears with both complete, or not at all, and before
        the Trainer writes the rest of the checkpoint (trainer_state.json last)."""
        folder = output_dir or self.args.output_dir
        checkpoint = os.path.basename(folder).startswith(PREFIX_CHECKPOINT_DIR)
        if not (_internal_call and self.args.should_save and checkpoint):
            return super().save_model(output_dir, _internal_call)

        def save(path: str) -> None:
            super(MultiTaskTrainer, self).save_model(path, _internal_call)
            if self.loss_balancer is not None:
                torch.save(self.loss_balancer.state_dict(), os.path.join(path, LOSS_BALANCING_FILE))

        save_checkpoint_model(save, folder)

    def make_loss_balancer(self) -> None:
        if getattr(self.args, "loss_balancing", "static") != "uncertainty" or self.loss_balancer is not None:
            return
        self.loss_balancer = UncertaintyWeighting(list(self.model.config.tasks)).to(self.args.device)
        path = os.path.join(self.resume_folder, LOSS_BALANCING_FILE) if self.resume_folder else None
        if path and os.path.isfile(path):
            self.loss_balancer.load_state_dict(torch.load(path, map_location=self.args.device, weights_only=True))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teachers = inputs.pop("teacher_logits", None)
        epsilon = self.args.label_smoothing_factor
        training = model.training
        # The Trainer's LabelSmoother expects one logits tensor; this model has one per task (a dict).
        custom = epsilon or (training and (teachers or self.loss_balancer is not None))
        if not custom or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**{name: value for name, value in inputs.items() if name != "labels"})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        unwrapped = self.accelerator.unwrap_model(model)
        if training and (teachers or self.loss_balancer is not None):
            loss = self.training_loss(unwrapped, logits, labels, teachers or {})
        else:
            loss = unwrapped.compute_loss(logits, labels, label_smoothing=epsilon)
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def training_loss(self, model, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                      teachers: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Each task's supervised loss (the model's), blended with its teacher's (`distillation_loss`), then summed
        or balanced by `UncertaintyWeighting`."""
        args = self.args
        losses, present = {}, {}
        for task, task_labels in labels.items():
            loss = model.compute_loss({task: logits[task]}, {task: task_labels},
                                      label_smoothing=args.label_smoothing_factor)
            if task in teachers:
                weight = teacher_weight(self.state.global_step, self.state.max_steps,
                                        teacher_annealing_of(args.teacher_annealing, task), args.distillation_weight)
                loss = distillation_loss(loss, logits[task], teachers[task], weight, args.distillation_temperature,
                                         model.config.task_weight(task))
            losses[task] = loss
            present[task] = bool(labelled(task_labels).any() or (task in teachers and labelled(teachers[task]).any()))
        # Heads of tasks outside this phase stay in the graph (DDP expects a gradient for every trained parameter).
        total = sum(task_logits.sum() * 0.0 for task_logits in logits.values())
        if self.loss_balancer is None:
            return total + sum(losses.values())
        weights = {task: model.config.task_weight(task) for task in losses}
        return total + self.loss_balancer(losses, present, weights)

    def _get_train_sampler(self, train_dataset=None):
        # The one private Trainer method overridden here: the Trainer has no public way to choose the training
        # sampler, and overriding get_train_dataloader instead would copy its DataLoader set-up (workers, seeding,
        # accelerate). tests/test_training.py checks that it still exists with this signature.
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
            epochs=self.training_epochs(len(dataset)),
        )

    def training_epochs(self, rows: int) -> int:
        """The epochs this run starts (the last may be partial): --num_train_epochs, or as many as --max_steps
        reaches."""
        args = self.args
        if args.max_steps <= 0:
            return max(1, math.ceil(args.num_train_epochs))
        batches = math.ceil(rows / (args.per_device_train_batch_size * max(1, args.world_size)))
        steps_per_epoch = max(1, batches // args.gradient_accumulation_steps)
        return max(1, math.ceil(args.max_steps / steps_per_epoch))

    def create_optimizer(self, model=None):
        self.make_loss_balancer()
        optimizer = super().create_optimizer(model)
        if self.loss_balancer is not None and not any(
                p is self.loss_balancer.log_variances for group in optimizer.param_groups for p in group["params"]):
            # At the heads' learning rate, without weight decay (which would pull every weight towards 1).
            lr = self.args.head_learning_rate if (self.args.head_learning_rate or 0) > 0 else self.args.learning_rate
            optimizer.add_param_group({**optimizer.param_groups[-1], "params": list(self.loss_balancer.parameters()),
                                       "lr": lr, "weight_decay": 0.0})
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


def checkpoint_folder(args, state) -> str:
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class LossBalancingState(TrainerCallback):
    """The learned loss weights' share of the Trainer's work on the model's parameters, which the Trainer does not
    see: their gradients averaged over processes (as DDP averages the model's) before each optimizer step and zeroed
    after it. (`MultiTaskTrainer.save_model` writes them into each checkpoint, `loss_balancing.pt`, which
    `make_loss_balancer` reads back on --resume_from_checkpoint: a resumed run continues with the weights it had.)"""

    def __init__(self, trainer: MultiTaskTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        balancer = self.trainer.loss_balancer
        if balancer is not None and args.world_size > 1:
            for parameter in balancer.parameters():
                if parameter.grad is None:  # no task labelled in this process's batches: every process must join
                    parameter.grad = torch.zeros_like(parameter)
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= args.world_size

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.loss_balancer is not None:
            self.trainer.loss_balancer.zero_grad(set_to_none=True)


class CheckpointCard(TrainerCallback):
    """Rewrites each checkpoint's README.md to say what it is: an intermediate checkpoint of this run (the card saved
    with it would say "not fine-tuned yet", or repeat the card, metrics included, of the model training continued
    from: the run's summary is only complete when training ends)."""

    def __init__(self, summary: dict):
        self.summary = summary

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = checkpoint_folder(args, state)
        if args.should_save and model is not None and os.path.isdir(folder):
            write_checkpoint_card(model, folder, self.summary, state.global_step, state.epoch or 0.0)


class HubPush(TrainerCallback):
    """--push_to_hub while training, for a Trainer whose own push is off. When training starts: creates the repository
    (private with --hub_private_repo) and the --hub_revision branch. With `checkpoints` and --hub_strategy
    every_save, checkpoint or all_checkpoints: uploads each checkpoint folder, so that the repository holds a complete
    model (weights, config, code files, tokenizer and card) at every step, and with checkpoint / all_checkpoints also
    the resumable checkpoint into last-checkpoint/ or checkpoint-N/. (The Trainer's own push copies weights and config
    into --output_dir and uploads that: a repository without the code files, and an --output_dir that looks like a
    saved model while training runs.) `train` pushes the final model."""

    def __init__(self, checkpoints: bool = True):
        self.checkpoints = checkpoints
        self.repo_id: str | None = None
        self.jobs: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.repo_id is not None:
            return
        api = HfApi()
        name = args.hub_model_id or Path(args.output_dir).absolute().name
        self.repo_id = api.create_repo(name, token=args.hub_token, private=args.hub_private_repo, exist_ok=True).repo_id
        if args.hub_revision and not args.hub_revision.startswith("refs/pr"):  # upload_folder does not create it
            api.create_branch(repo_id=self.repo_id, branch=args.hub_revision, token=args.hub_token, exist_ok=True)

    def on_save(self, args, state, control, **kwargs):
        if not (self.checkpoints and state.is_world_process_zero) or args.hub_strategy == HubStrategy.END:
            return
        self.jobs = [job for job in self.jobs if not job.done()]
        if self.jobs and not args.hub_always_push:
            return  # the previous checkpoint is still uploading
        folder = checkpoint_folder(args, state)
        if args.save_strategy == "steps":
            message = f"Training in progress, step {state.global_step}"
        else:
            message = f"Training in progress, epoch {int(state.epoch or 0)}"
        upload = partial(HfApi().upload_folder, repo_id=self.repo_id, folder_path=folder, token=args.hub_token,
                         revision=args.hub_revision, run_as_future=True)
        self.jobs.append(upload(commit_message=message, ignore_patterns=list(TRAINING_STATE_FILES)))
        if args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            path_in_repo = "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else Path(folder).name
            self.jobs.append(upload(commit_message=message + ", checkpoint", path_in_repo=path_in_repo))

    def on_train_end(self, args, state, control, **kwargs):
        for job in self.jobs:
            job.result()
        self.jobs = []
