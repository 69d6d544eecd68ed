"""The Trainer of a multi-task run: per-task loss with label smoothing, task mixing and length grouping, a separate
head learning rate; and the callbacks that make each checkpoint a complete, truthfully described model."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from huggingface_hub import HfApi
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy

from .card import write_checkpoint_card
from .sampling import MultiTaskSampler

# Files of a checkpoint that only resuming needs: not part of the model pushed to the repository's root.
TRAINING_STATE_FILES = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
                        "training_args.bin", "_*"]


class MultiTaskTrainer(Trainer):
    """Trainer with task mixing, length grouping, a separate head learning rate and per-task label smoothing."""

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


def checkpoint_folder(args, state) -> str:
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


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
    (private with --push_to_hub_private) and the --hub_revision branch. With `checkpoints` and --hub_strategy
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
