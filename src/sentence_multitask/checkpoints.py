"""The output folder and its checkpoints: what a run may overwrite, which checkpoint each phase resumes from, and
the final save (atomic: a folder never holds a half-written model)."""

from __future__ import annotations

import json
import os
import re
import shutil

from transformers.trainer import TRAINER_STATE_NAME  # written last into a checkpoint
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .inference_sentence_multitask import files_a_save_would_replace

PHASE_FOLDERS = ("phase1", "phase2")  # where the two phases of sequential training keep their checkpoints


def check_output_dir(args) -> list[str]:
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
    for sub in ("", *PHASE_FOLDERS):
        folder = os.path.join(output_dir, sub)
        if os.path.isdir(folder):
            found += sorted(os.path.join(sub, name) for name in os.listdir(folder)
                            if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
                            and os.path.isdir(os.path.join(folder, name)))
    return found


def last_checkpoint(folder: str) -> str | None:
    """The highest checkpoint-N in `folder` that the Trainer finished writing: it writes trainer_state.json after the
    model, optimizer, scheduler and RNG state, so a checkpoint that a stopped run left part-written is passed over."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    steps = [int(name.rpartition("-")[2]) for name in names if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name)
             and os.path.isfile(os.path.join(folder, name, TRAINER_STATE_NAME))]
    return os.path.join(folder, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None


def resume_plan(args) -> list[str | None]:
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
        if resume != "True":
            return [resume]
        last = last_checkpoint(args.output_dir)
        if not last:
            raise FileNotFoundError(
                f"--resume_from_checkpoint True: {args.output_dir} holds no complete checkpoint-N folder to resume "
                "from. Start again without --resume_from_checkpoint, or give the checkpoint folder."
            )
        return [last]
    # Sequential: each phase has its own folder and optimiser (phase 2 trains the other heads only), so a checkpoint
    # resumes the phase that wrote it; a phase with a checkpoint in its folder continues from its last one.
    phase_dirs = [os.path.join(args.output_dir, folder) for folder in PHASE_FOLDERS]
    last = [last_checkpoint(d) for d in phase_dirs]
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


def check_steps_left(resume: str | None, args) -> None:
    """A checkpoint that already reached --max_steps has nothing left to train: the Trainer would run one step past
    it (and save it as checkpoint-N+1), so say so instead."""
    if not resume or args.max_steps <= 0:
        return
    try:
        with open(os.path.join(resume, TRAINER_STATE_NAME), encoding="utf-8") as handle:
            done = int(json.load(handle)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the Trainer reports a broken checkpoint in its own words
    if done >= args.max_steps:
        raise ValueError(f"--resume_from_checkpoint {resume} already trained {done} steps, --max_steps is "
                         f"{args.max_steps}: nothing is left to train. Raise --max_steps to train further (its model "
                         "is in the checkpoint folder).")


def save_model_atomically(model, output_dir: str) -> None:
    """Write the model to a temporary folder, then move it in with config.json last: a save that stops part-way
    leaves no config.json, so never a directory that loads as a broken model."""
    os.makedirs(output_dir, exist_ok=True)
    staging = os.path.join(output_dir, f".saving-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        old_config = os.path.join(output_dir, "config.json")
        if os.path.exists(old_config):
            os.remove(old_config)
        move_files(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_files(staging: str, output_dir: str) -> None:
    """Move what `staging` holds into `output_dir`, config.json last (the file that makes a folder load)."""
    for name in sorted(os.listdir(staging), key=lambda name: name == "config.json"):
        destination = os.path.join(output_dir, name)
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staging, name), destination)


def save_checkpoint_model(save, folder: str) -> None:
    """`save(path)` writes a checkpoint's model; it goes to a staging folder that one rename makes checkpoint-N, so
    that a run stopped while saving never leaves a checkpoint-N whose model does not load. (Where the folder exists
    already, e.g. another process wrote its RNG state into it first, the files move in one by one, config last.)"""
    staging = os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving this step
    save(staging)
    try:
        os.rename(staging, folder)
    except OSError:
        if not os.path.isdir(folder):
            raise
        move_files(staging, folder)
        shutil.rmtree(staging, ignore_errors=True)
