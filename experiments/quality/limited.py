"""The limited-data study of the quality experiment (`run.py --only limited`): sentiment trained on a fraction of its
rows, alone, jointly with topic, sequentially on the topic model, and, at the smallest fractions, with the other
strategies (distillation, up-sampling, top encoder layers, self-training). `LimitedDataStudy` is a mixin of run.py's
`Experiment`, whose files, results and runs (`train`, `command`, `validation`, `save`) it uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import TASKS, base_options, read_jsonl, write_jsonl

FRACTIONS = (0.01, 0.05, 0.2, 1.0)
NEW_STRATEGY_FRACTIONS = (0.01, 0.05)
PSEUDO_PER_CLASS = 2000  # self-training: the teacher's most confident texts per predicted label that join training


class LimitedDataStudy:
    """The study's steps, for `Experiment` (run.py) to inherit."""

    def limited_data(self) -> None:
        """Sentiment at 1/5/20/100 %: single-task, joint multi-task, sequential (topic model -> frozen encoder); at 1
        and 5 %, also the strategies of NEW_STRATEGY_FRACTIONS (distilled, up-sampled, sequential with top layers). The
        smoke run trains 1 % (all methods) and 100 % only."""
        files = self.files
        topic_model = self.out / "runs" / "single_topic" / "model"
        if "single_topic" not in self.results["runs"]:
            self.main_table()
        for fraction in (0.01, 1.0) if self.smoke else FRACTIONS:
            subset = files[f"sentiment_train_{fraction}"]
            key = f"sentiment_train_{fraction}"
            if fraction == 1.0:
                self.results["runs"].setdefault("limited_single_1.0", self.results["runs"]["single_sentiment"])
                self.results["runs"].setdefault("limited_joint_1.0", self.results["runs"]["multitask"])
            else:
                self.train(f"limited_single_{fraction}", self.limited_single_options(fraction))
                self.train(f"limited_joint_{fraction}", self.limited_joint_options(fraction))
            # Sequential: phase 1 is the single-task topic run; phase 2 adds the sentiment head on the frozen encoder.
            self.train(f"limited_sequential_{fraction}", {
                "model": str(topic_model), "freeze_encoder": True, "tasks": ["sentiment"],
                "labels": ["sentiment=negative,neutral,positive"], "train_files": [f"sentiment={subset}"],
                "validation_files": self.validation("sentiment"), "_rows": [key]})
            if fraction in self.small_fractions:
                self.limited_strategies(fraction)
        self.save()

    @property
    def small_fractions(self) -> tuple[float, ...]:
        """The fractions of the strategies beyond single-task, joint and sequential (the smoke run: the smallest)."""
        return NEW_STRATEGY_FRACTIONS[:1] if self.smoke else NEW_STRATEGY_FRACTIONS

    def limited_single_options(self, fraction: float) -> dict:
        """Train options of single-task sentiment on the `fraction` subsample (epochs raised to MIN_STEPS steps)."""
        return {"tasks": ["sentiment"], "train_files": [f"sentiment={self.files[f'sentiment_train_{fraction}']}"],
                "validation_files": self.validation("sentiment"), "_rows": [f"sentiment_train_{fraction}"]}

    def limited_teacher(self, fraction: float) -> Path:
        """The folder of the single-task sentiment model of the `fraction` subsample (seed of base.json), trained again
        if it is missing (models are not kept in the repository)."""
        return self.kept_model(f"limited_single_{fraction}", self.limited_single_options(fraction))

    def limited_matched_options(self, fraction: float) -> dict | None:
        """Train options of single-task sentiment on the `fraction` subsample for as many passes over it as the joint
        runs make (their task sampling's share of their epochs) instead of MIN_STEPS steps; None where that is the
        same number of epochs."""
        from sentence_multitask.sampling import source_shares

        base = base_options()
        sizes = [self.rows("topic_train"), self.rows(f"sentiment_train_{fraction}")]
        share = source_shares(sizes, base["task_sampling"], base["sampling_temperature"])[1]
        epochs = max(1, round(base["num_train_epochs"] * sum(sizes) * share / sizes[1]))
        options = self.limited_single_options(fraction)
        if epochs == self.train_epochs(options):
            return None
        return {**{key: value for key, value in options.items() if key != "_rows"}, "num_train_epochs": epochs}

    def limited_joint_options(self, fraction: float) -> dict:
        """Train options of joint training on all topic rows and the `fraction` sentiment subsample."""
        return {"train_files": [f"topic={self.files['topic_train']}",
                                f"sentiment={self.files[f'sentiment_train_{fraction}']}"],
                "validation_files": self.validation("topic", "sentiment")}

    def limited_strategies(self, fraction: float) -> None:
        """At one sentiment fraction: joint distilled from the single-task models of the same data (topic: the main
        table's, sentiment: the one trained on this subsample), joint with equal shares of both tasks per batch
        (round_robin: the small task up-sampled), sequential with the top two encoder layers trainable at a low
        learning rate (the topic model's other layers fixed; its topic accuracy measured after), and joint with
        self-training (`self_trained`)."""
        files, runs = self.files, self.out / "runs"
        subset, key = files[f"sentiment_train_{fraction}"], f"sentiment_train_{fraction}"
        joint = self.limited_joint_options(fraction)
        teacher = self.limited_teacher(fraction)
        self.train(f"limited_distilled_{fraction}", {
            **joint, "teachers": [f"topic={runs / 'single_topic' / 'model'}", f"sentiment={teacher}"]})
        self.train(f"limited_upsampled_{fraction}", {**joint, "task_sampling": "round_robin"})
        name = f"limited_sequential_top_{fraction}"
        self.train(name, {
            "model": str(runs / "single_topic" / "model"), "trainable_encoder_layers": 2, "learning_rate": 2e-5,
            "tasks": ["sentiment"], "labels": ["sentiment=negative,neutral,positive"],
            "train_files": [f"sentiment={subset}"], "validation_files": self.validation("sentiment"), "_rows": [key]})
        self.self_trained(fraction, teacher, joint)
        if "topic" not in self.results["runs"][name]["metrics"]:  # what the top layers' training cost the topic head
            report = runs / name / "evaluate_topic.json"
            self.command(["evaluate", "--model", str(runs / name / "model"), "--eval_files",
                          *self.validation("topic"), "--output", str(report)], runs / name / "evaluate_topic.log")
            topic = json.loads(report.read_text())["tasks"]["topic"]
            self.results["runs"][name]["metrics"]["topic"] = {
                metric: topic[metric] for metric in ("accuracy", "macro_f1", "macro_recall")}
            self.save()

    def self_trained(self, fraction: float, teacher: Path, joint: dict, suffix: str = "") -> None:
        """Self-training, which also uses the unlabelled rest of the sentiment training texts (their gold labels are
        not read): the joint model trains on the subsample and the teacher's pseudo-labels (`pseudo_labelled`). The
        pseudo-labels' agreement with the hidden gold labels is recorded, as a diagnosis only. `suffix` names another
        seed's run (`joint` then holds its seed) and its files."""
        name = f"limited_self_trained_{fraction}{suffix}"
        if name in self.results["runs"]:
            return
        combined, stats = self.pseudo_labelled(fraction, teacher, name, suffix)
        self.train(name, {**joint, "train_files": [joint["train_files"][0], f"sentiment={combined}"]})
        self.results["runs"][name]["pseudo_labels"] = stats
        self.save()

    def pseudo_labelled(self, fraction: float, teacher: Path, run: str, suffix: str = "") -> tuple[Path, dict]:
        """The subsample and the PSEUDO_PER_CLASS texts per predicted label of the rest of the sentiment training texts
        that `teacher` (the single-task model of this subsample) is most sure of, as one training file; and what
        those pseudo-labels are (rows, per label, agreement with the hidden gold labels). The predict log goes to the
        folder of `run`, the run that trains on the file."""
        gold = read_jsonl(self.files[f"sentiment_train_{fraction}"])
        known = {row["text"] for row in gold}
        rest = [row for row in read_jsonl(self.files["sentiment_train"]) if row["text"] not in known]
        data = self.out / "data"
        unlabelled, predicted = (data / f"sentiment_unlabelled_{fraction}{suffix}.jsonl",
                                 data / f"sentiment_predicted_{fraction}{suffix}.jsonl")
        write_jsonl([{"text": row["text"]} for row in rest], unlabelled)
        predicted.unlink(missing_ok=True)  # an earlier, interrupted run's (predict never overwrites)
        log = self.out / "runs" / run / "predict.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.command(["predict", "--model", str(teacher), "--input", str(unlabelled), "--output", str(predicted),
                      "--keep_columns", "text", "--batch_size", "64"], log)
        hidden = {row["text"]: row["label"] for row in rest}
        ranked = sorted(read_jsonl(predicted), key=lambda row: -row["sentiment_score"])
        pseudo = [{"text": row["text"], "label": label} for label in TASKS["sentiment"]
                  for row in [row for row in ranked if row["sentiment_label"] == label][:PSEUDO_PER_CLASS]]
        combined = data / f"sentiment_self_trained_{fraction}{suffix}.jsonl"
        write_jsonl(gold + pseudo, combined)
        return combined, {
            "rows": len(pseudo), "unlabelled_texts": len(rest),
            "per_label": {label: sum(row["label"] == label for row in pseudo) for label in TASKS["sentiment"]},
            "agreement_with_hidden_gold": round(sum(hidden[row["text"]] == row["label"] for row in pseudo)
                                                / max(1, len(pseudo)), 4)}
