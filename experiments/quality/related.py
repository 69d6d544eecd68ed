"""The related-task study of the quality experiment (`run.py --only related`): GoEmotions' 28 emotions (5,426
human-labelled Reddit comments, a multi-label task) trained as a third task beside topic and sentiment: with the
headline multi-task recipe at each seed, and with joint training at the smallest sentiment fractions. Emotions and
sentiment are close tasks on similar text (informal comments and tweets), the case multi-task learning is for; the
runs read more labelled data than the two-task ones, and the tables say so. `RelatedTaskStudy` is a mixin of run.py's
`Experiment`, whose files, results and runs it uses.
"""

from __future__ import annotations

import json
import random
from functools import cached_property
from pathlib import Path

from common import SEEDS, base_options, read_jsonl, seed_suffix, write_jsonl

RELATED = {"emotions": "goemotions"}  # task name: file prefix in the shared data
RELATED_OPTIONS = {"class_weights": ["emotions=auto"]}  # each emotion's pos_weight from the data


class RelatedTaskStudy:
    """The study's steps, for `Experiment` (run.py) to inherit."""

    @cached_property
    def related_files(self) -> tuple[list[str], list[str], list[str]]:
        """`TASK=PATH` train and validation items of the related tasks, copied into OUT/data (a slice in smoke mode),
        and their `TASK=a,b,...` labels: every label of the whole training file, in sorted order."""
        train, validation, labels = [], [], []
        for task, prefix in RELATED.items():
            rows = {split: read_jsonl(self.data / f"{prefix}_{split}.jsonl") for split in ("train", "validation")}
            labels.append(f"{task}=" + ",".join(sorted({label for row in rows["train"] for label in row[task]})))
            for split, items in (("train", train), ("validation", validation)):
                path = self.out / "data" / f"{prefix}_{split}.jsonl"
                if not path.exists():
                    write_jsonl(random.Random(0).sample(rows[split], 60) if self.smoke else rows[split], path)
                items.append(f"{task}={path}")
        return train, validation, labels

    def with_related(self, name: str, options: dict) -> dict:
        """`train` with the related tasks' files added to `options`; their figures recorded beside the others."""
        train, validation, labels = self.related_files
        result = self.train(name, {**options, **RELATED_OPTIONS, "labels": [*base_options()["labels"], *labels],
                                   "train_files": [*options["train_files"], *train],
                                   "validation_files": [*options["validation_files"], *validation]})
        if "related" not in result:
            metrics = json.loads((self.out / "runs" / name / "model" / "eval_results.json").read_text())
            result["related"] = {task: {key: metrics[f"eval_{task}_{key}"] for key in ("macro_f1", "micro_f1")}
                                 for task in RELATED}
            self.save()
        return result

    def related(self) -> None:
        """The headline recipe (`seeds`) with the related tasks added, at every seed; then joint training with them at
        the smallest sentiment fractions of the limited-data study, beside its plain joint runs."""
        self.seeds()
        both = self.headline_options()
        self.with_related("tuned_multitask_uncertainty_emotions", both)
        for fraction in self.small_fractions:
            self.with_related(f"limited_emotions_{fraction}", self.limited_joint_options(fraction))
        for seed in SEEDS[1:]:
            self.with_related(f"tuned_multitask_uncertainty_emotions{seed_suffix(seed)}", {**both, "seed": seed})
        self.related_seeds()

    def related_seeds(self) -> None:
        """Single-task sentiment and joint training with the related tasks at the smallest fractions again with the
        other seeds (the same subsamples: only the seed of training changes), so the gap between them can be told
        from the variation between seeds; self-training too (its teacher: the single-task model of the same seed),
        alone and with the related tasks (that one with every seed); and single-task sentiment with the joint runs'
        passes over the subsample (`limited_matched_options`) at every seed."""
        for seed in SEEDS[1:]:
            suffix = seed_suffix(seed)
            for fraction in self.small_fractions:
                teacher = self.kept_model(f"limited_single_{fraction}{suffix}",
                                          {**self.limited_single_options(fraction), "seed": seed})
                joint = {**self.limited_joint_options(fraction), "seed": seed}
                self.with_related(f"limited_emotions_{fraction}{suffix}", joint)
                self.self_trained(fraction, teacher, joint, suffix=suffix)
                self.self_trained_related(fraction, teacher, joint, suffix=suffix)  # both at once
        for fraction in self.small_fractions:  # both at once with the seed of base.json
            if f"limited_self_trained_emotions_{fraction}" not in self.results["runs"]:
                teacher = self.limited_teacher(fraction)
                self.self_trained_related(fraction, teacher, self.limited_joint_options(fraction))
        for seed in SEEDS:  # the single-task control with as many passes over the subsample as the joint runs make
            for fraction in self.small_fractions:
                if options := self.limited_matched_options(fraction):
                    self.train(f"limited_single_matched_{fraction}{seed_suffix(seed)}", {**options, "seed": seed})

    def self_trained_related(self, fraction: float, teacher: Path, joint: dict, suffix: str = "") -> None:
        """Self-training (`self_trained`'s pseudo-labels and training file) and the related tasks together."""
        name = f"limited_self_trained_emotions_{fraction}{suffix}"
        combined = self.out / "data" / f"sentiment_self_trained_{fraction}{suffix}.jsonl"
        if name not in self.results["runs"] and not combined.exists():
            combined, _ = self.pseudo_labelled(fraction, teacher, name, suffix)
        self.with_related(name, {**joint, "train_files": [joint["train_files"][0], f"sentiment={combined}"]})
