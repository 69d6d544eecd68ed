"""Quality on real data and the limited-data study, driven by `sentence-multitask train` and option files.

    python experiments/quality/run.py                      # everything, writes experiments/quality/results/
    python experiments/quality/run.py --only main          # the main table only
    python experiments/quality/run.py --only distilled     # the multi-task run distilled from the single-task runs
    python experiments/quality/run.py --only search        # the same recipe search for the three models, then each
                                                           # trained with its best recipe (the tuned rows)
    python experiments/quality/run.py --only balancing     # the searched multi-task recipe with uncertainty
                                                           # weighting, and with annealed sampling
    python experiments/quality/run.py --only seeds         # the single-task models and that multi-task model again,
                                                           # with other seeds
    python experiments/quality/run.py --only weighted      # single-task sentiment and that multi-task model with
                                                           # sentiment's classes weighted by inverse frequency
    python experiments/quality/run.py --only ceiling       # single-task topic recipes (more epochs, label
                                                           # smoothing, a lower learning rate) and three-seed ensembles
    python experiments/quality/run.py --only ensemble_teachers  # the multi-task model distilled from those ensembles
    python experiments/quality/run.py --only related       # GoEmotions as a third task: the headline recipe and the
                                                           # smallest sentiment fractions; those fractions' single-
                                                           # task and self-trained runs with the other seeds
    python experiments/quality/run.py --only warm_start    # the multi-task model started from the single-task
                                                           # sentiment model, and that model trained on alone
    python experiments/quality/run.py --only constant_teacher  # the headline recipe with a constant teacher weight,
                                                               # for every task or for sentiment only
    python experiments/quality/run.py --only more_seeds    # the headline comparison at two seeds more
    python experiments/quality/run.py --only all_rows      # the headline recipe with teachers on every row, 5 seeds
    python experiments/quality/run.py --only cross_fit     # the headline recipe with cross-fitted teachers, 2 seeds
    python experiments/quality/run.py --smoke --out /tmp/q  # tiny slice, for the test that keeps this from rotting

Every fine-tuning run is `sentence-multitask train OPTIONS.json` in its own process (`--in_process`: in this one),
with the options of base.json plus the run's own; each run's options, log and metrics are kept under OUT/runs/NAME/.
`--encoder PATH` starts every run and the frozen baseline from another encoder (the test: a tiny random one).
Baselines: TF-IDF (word 1-2 grams) + logistic regression, and frozen all-MiniLM-L6-v2 embeddings + logistic
regression, fitted on the same training files and scored on the same validation files with the same metric code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by a test rather than run as a script: for the modules beside this one
    sys.path.insert(0, str(HERE))
from common import SEEDS, TASKS, base_options, read_jsonl, seed_suffix, single_run, write_jsonl  # noqa: E402
from full_data import FullDataStudy  # noqa: E402
from limited import FRACTIONS, LimitedDataStudy  # noqa: E402
from related import RelatedTaskStudy  # noqa: E402

DATA = Path(os.environ.get("SHARED_DATA", HERE.parents[1].parent / "shared" / "data"))
SUBSAMPLE_SEED = 20240611
STEPS = {"main": ("main_table", "reproduce"), "distilled": ("distilled",), "search": ("tuned",),  # in this order
         "balancing": ("balancing",), "seeds": ("seeds",), "weighted": ("class_weighted",), "ceiling": ("ceiling",),
         "ensemble_teachers": ("ensemble_teachers",), "limited": ("limited_data",), "related": ("related",),
         "warm_start": ("warm_started",), "constant_teacher": ("constant_teacher",), "more_seeds": ("more_seeds",),
         "all_rows": ("all_rows",), "cross_fit": ("cross_fit",)}
MIN_STEPS = 150  # small training sets get enough epochs for this many optimizer steps
SEARCH_TRIALS = 6  # Optuna trials per model, each on SEARCH_ROWS rows per training file, scored on the validation files
SEARCH_ROWS = 2500
SEARCH_MAX_EPOCHS = 3
ENSEMBLE_SEEDS = (42, 7, 13)  # the single-task models of the `ceiling` step's ensembles
TOPIC_RECIPES = {"topic_epochs4": {"num_train_epochs": 4},
                 "topic_label_smoothing": {"num_train_epochs": 3, "label_smoothing_factor": 0.1},
                 "topic_lr5e-5": {"num_train_epochs": 3, "learning_rate": 5e-5}}


def scores(predicted, references, labels) -> dict:
    from sentence_multitask.metrics.multitask_classification import classification_scores

    result = classification_scores(np.asarray(predicted), np.asarray(references), len(labels))
    result["per_class_f1"] = dict(zip(labels, result["per_class_f1"]))
    result.pop("confusion_matrix")
    return result


class Experiment(LimitedDataStudy, RelatedTaskStudy, FullDataStudy):
    def __init__(self, out: Path, smoke: bool, encoder: str | None = None, in_process: bool = False):
        self.out = Path(out).resolve()
        self.smoke = smoke
        self.encoder = encoder  # None: the package's default encoder
        self.in_process = in_process
        self.results = self._load(out / "results.json")
        self.files = self._prepare_files()

    @property
    def data(self) -> Path:
        return DATA

    @staticmethod
    def _load(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {"runs": {}, "seconds": {}}

    def save(self) -> None:
        self.results["hardware"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))

    def _prepare_files(self) -> dict[str, Path]:
        """Train/validation files (a slice in smoke mode) and the sentiment subsamples (same seed for all)."""
        files = {}
        limit = 60 if self.smoke else None
        for task in TASKS:
            for split in ("train", "validation"):
                rows = read_jsonl(DATA / f"{task}_{split}.jsonl")
                if limit:
                    rows = random.Random(0).sample(rows, limit)
                files[f"{task}_{split}"] = path = self.out / "data" / f"{task}_{split}.jsonl"
                write_jsonl(rows, path)
        sentiment = read_jsonl(files["sentiment_train"])
        for fraction in FRACTIONS:
            if fraction < 1.0:
                # Same subsample for every method: a seeded shuffle, then the first n rows (nested: 1% within 5% ...).
                order = list(range(len(sentiment)))
                random.Random(SUBSAMPLE_SEED).shuffle(order)
                n = max(12, round(fraction * len(sentiment)))
                files[f"sentiment_train_{fraction}"] = path = self.out / "data" / f"sentiment_train_{fraction}.jsonl"
                write_jsonl([sentiment[i] for i in sorted(order[:n])], path)
            else:
                files[f"sentiment_train_{fraction}"] = files["sentiment_train"]
        return files

    def rows(self, key: str) -> int:
        with open(self.files[key], encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())

    # ---------------------------------------------------------------- fine-tuning runs (the package's command)

    def train(self, name: str, options: dict) -> dict:
        if name in self.results["runs"]:
            return self.results["runs"][name]
        run_dir = self.out / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        merged = {**base_options(), **options, "output_dir": str(run_dir / "model"),
                  "overwrite_model": True}
        if self.encoder and "model" not in options:
            merged["encoder"] = self.encoder
        if self.smoke:
            merged.update(num_train_epochs=1, max_steps=2, per_device_train_batch_size=8)
        if not self.smoke:
            merged["num_train_epochs"] = self.train_epochs(merged)
        merged.pop("_rows", None)
        options_path = run_dir / "options.json"
        # Paths relative to the output folder, which the run starts in: the file says the same on any machine.
        options_path.write_text(json.dumps(self.relative(merged), indent=2))
        started = time.time()
        self.command(["train", str(options_path.relative_to(self.out))], run_dir / "train.log")
        seconds = time.time() - started
        metrics = json.loads((run_dir / "model" / "eval_results.json").read_text())
        result = {"metrics": self._task_metrics(metrics), "seconds": round(seconds, 1),
                  "epochs": merged["num_train_epochs"],
                  "command": f"sentence-multitask train {options_path.relative_to(self.out)}"}
        self.results["runs"][name] = result
        self.save()
        print(f"{name}: {json.dumps(result['metrics'])} ({seconds:.0f} s)", flush=True)
        return result

    def train_epochs(self, options: dict) -> int:
        """The epochs of a run with `options` (over base.json's): raised so that its `_rows` (keys of the files it
        trains on) make MIN_STEPS optimizer steps."""
        merged = {**base_options(), **options}
        train_rows = sum(self.rows(key) for key in merged.get("_rows", []))
        if not train_rows:
            return merged["num_train_epochs"]
        steps_per_epoch = math.ceil(train_rows / merged["per_device_train_batch_size"])
        return max(merged["num_train_epochs"], math.ceil(MIN_STEPS / steps_per_epoch))

    def kept_model(self, name: str, options: dict) -> Path:
        """The model folder of run `name`, trained (again) with `options` if it is missing: models are not kept in the
        repository, and a run trained again replaces its figures."""
        model = self.out / "runs" / name / "model"
        if not (model / "config.json").is_file():
            self.results["runs"].pop(name, None)
            self.train(name, options)
        return model

    def relative(self, value):
        """`value` (an option value, a list of them or a dict) with paths inside the output folder made relative to
        it ("TASK=PATH" items too)."""
        if isinstance(value, dict):
            return {key: self.relative(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.relative(item) for item in value]
        if isinstance(value, str):
            prefix, sep, path = value.rpartition("=") if "=" in value and os.sep in value else ("", "", value)
            if os.path.isabs(path) and Path(path).resolve().is_relative_to(self.out.resolve()):
                return prefix + sep + str(Path(path).resolve().relative_to(self.out.resolve()))
        return value

    def command(self, argv: list[str], log: Path) -> None:
        """`sentence-multitask ARGV` in the output folder, its output to `log`: in a process of its own, or in this one
        (--in_process)."""
        with open(log, "w") as handle:
            if not self.in_process:
                subprocess.run([sys.executable, "-m", "sentence_multitask.cli", *argv], stdout=handle,
                               stderr=subprocess.STDOUT, check=True, cwd=self.out)
                return
            from sentence_multitask.cli import main as cli

            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle), contextlib.chdir(self.out):
                status = cli(argv)
            if status:
                raise SystemExit(f"sentence-multitask {' '.join(argv)} exited with status {status}; see {log}")

    @staticmethod
    def _task_metrics(flat: dict) -> dict:
        out = {}
        for task, labels in TASKS.items():
            if f"eval_{task}_accuracy" not in flat:
                continue
            out[task] = {name: flat[f"eval_{task}_{name}"] for name in ("accuracy", "macro_f1", "macro_recall")}
            out[task]["per_class_f1"] = {label: flat[f"eval_{task}_f1_{label}"] for label in labels}
        return out

    def validation(self, *tasks) -> list[str]:
        return [f"{task}={self.files[f'{task}_validation']}" for task in tasks]

    # ---------------------------------------------------------------- baselines

    def tfidf(self) -> None:
        if "tfidf_logreg" in self.results["runs"]:
            return
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        started, metrics = time.time(), {}
        for task, labels in TASKS.items():
            train, valid = read_jsonl(self.files[f"{task}_train"]), read_jsonl(self.files[f"{task}_validation"])
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
            x_train = vectorizer.fit_transform([row["text"] for row in train])
            model = LogisticRegression(max_iter=2000, C=4.0)
            model.fit(x_train, [labels.index(row["label"]) for row in train])
            predicted = model.predict(vectorizer.transform([row["text"] for row in valid]))
            metrics[task] = scores(predicted, [labels.index(row["label"]) for row in valid], labels)
        self.results["runs"]["tfidf_logreg"] = {"metrics": metrics, "seconds": round(time.time() - started, 1)}
        self.save()
        print("tfidf_logreg:", json.dumps(metrics), flush=True)

    def frozen(self) -> None:
        if "frozen_minilm_logreg" in self.results["runs"]:
            return
        from sklearn.linear_model import LogisticRegression

        from sentence_multitask import SentenceMultiTaskModel

        started, metrics = time.time(), {}
        model = SentenceMultiTaskModel.from_encoder(self.encoder, tasks=TASKS)
        for task, labels in TASKS.items():
            train, valid = read_jsonl(self.files[f"{task}_train"]), read_jsonl(self.files[f"{task}_validation"])
            x_train = model.encode([row["text"] for row in train], batch_size=64, max_length=64)
            x_valid = model.encode([row["text"] for row in valid], batch_size=64, max_length=64)
            classifier = LogisticRegression(max_iter=3000, C=4.0)
            classifier.fit(x_train, [labels.index(row["label"]) for row in train])
            metrics[task] = scores(classifier.predict(x_valid), [labels.index(row["label"]) for row in valid], labels)
        self.results["runs"]["frozen_minilm_logreg"] = {"metrics": metrics, "seconds": round(time.time() - started, 1)}
        self.save()
        print("frozen_minilm_logreg:", json.dumps(metrics), flush=True)

    # ---------------------------------------------------------------- plans

    def main_table(self) -> None:
        self.tfidf()
        self.frozen()
        files = self.files
        self.train("multitask", {"train_files": [f"topic={files['topic_train']}",
                                                 f"sentiment={files['sentiment_train']}"],
                                 "validation_files": self.validation("topic", "sentiment")})
        self.train("single_topic", {"tasks": ["topic"], "train_files": [f"topic={files['topic_train']}"],
                                    "validation_files": self.validation("topic")})
        self.train("single_sentiment", {"tasks": ["sentiment"],
                                        "train_files": [f"sentiment={files['sentiment_train']}"],
                                        "validation_files": self.validation("sentiment")})

    def distilled(self) -> None:
        """The multi-task run distilled from the two single-task runs of the main table (BAM!: teacher logits computed
        once, teacher weight annealed from 1 to 0). Their models are not kept in the repository: a single-task run
        whose model folder is missing is trained again first (and its figures replaced by the new run's)."""
        runs, files = self.out / "runs", self.files
        for name in ("single_topic", "single_sentiment"):
            if not (runs / name / "model" / "config.json").is_file():
                self.results["runs"].pop(name, None)
        self.main_table()
        self.train("multitask_distilled", {
            "train_files": [f"topic={files['topic_train']}", f"sentiment={files['sentiment_train']}"],
            "validation_files": self.validation("topic", "sentiment"),
            "teachers": [f"topic={runs / 'single_topic' / 'model'}",
                         f"sentiment={runs / 'single_sentiment' / 'model'}"]})

    def search(self, name: str, options: dict) -> dict:
        """`train --hp_search` on SEARCH_ROWS rows per file: the best trial's options as train options (the search
        run's own final model, trained on the slice, is not used)."""
        searched = {**options, "hp_search": 2 if self.smoke else SEARCH_TRIALS, "num_train_epochs": SEARCH_MAX_EPOCHS,
                    "max_train_samples": 40 if self.smoke else SEARCH_ROWS}
        self.train(name, searched)
        if "search" not in self.results["runs"][name]:
            trials = json.loads((self.out / "runs" / name / "model" / "hp_search.json").read_text())
            self.results["runs"][name]["search"] = trials
            self.save()
        trials = self.results["runs"][name]["search"]
        best, weights = dict(trials["best"]["params"]), []
        for key in [key for key in best if key.startswith("task_weight_")]:
            weights.append(f"{key.removeprefix('task_weight_')}={best.pop(key):.4g}")
        return {**best, **({"task_weights": weights} if weights else {})}

    def tuned(self) -> None:
        """The main table's three fine-tuned models, each trained with the best of the same search budget: single-task
        topic, single-task sentiment, and the multi-task model, searched and trained with the best single-task models
        on validation as its teachers (the main table's, which beat the tuned ones)."""
        self.distilled()  # the untuned teachers the multi-task search distils from
        single = {task: self.single_options(task) for task in TASKS}
        for task in TASKS:
            best = self.search(f"search_single_{task}", single[task])
            self.train(f"tuned_single_{task}", {**single[task], **best})
        distilled = self.distilled_options()
        best = self.search("search_multitask", distilled)
        self.train("tuned_multitask", {**distilled, **best})

    def distilled_options(self) -> dict:
        """Train options of the multi-task runs distilled from the main table's single-task models."""
        runs, files = self.out / "runs", self.files
        return {"train_files": [f"topic={files['topic_train']}", f"sentiment={files['sentiment_train']}"],
                "validation_files": self.validation("topic", "sentiment"),
                "teachers": [f"{task}={runs / f'single_{task}' / 'model'}" for task in TASKS]}

    def headline_options(self) -> dict:
        """Train options of the headline multi-task model: the searched recipe, distilled, with learned task weights."""
        both = self.distilled_options()
        return {**both, **self.search("search_multitask", both), "loss_balancing": "uncertainty"}

    def balancing(self) -> None:
        """The searched multi-task recipe with each loss-balancing option it did not try: learned task weights
        (uncertainty weighting, the searched weights as their prior) and annealed task sampling."""
        self.tuned()
        both = self.distilled_options()
        best = self.search("search_multitask", both)  # the search's record, already made by `tuned`
        self.train("tuned_multitask_uncertainty", {**both, **best, "loss_balancing": "uncertainty"})
        self.train("tuned_multitask_annealed", {**both, **best, "task_sampling": "annealed"})

    def seeds(self, seeds: tuple = SEEDS[1:]) -> None:
        """The headline comparison again with each of `seeds` (by default the other seeds of SEEDS): the two
        single-task models and the multi-task model with learned weights (the same recipe and teachers), so the gap
        between them can be told from the variation between seeds."""
        self.balancing()
        both = self.headline_options()
        single = {task: self.single_options(task) for task in TASKS}
        for seed in seeds:
            for task in TASKS:
                self.train(single_run(task, seed), {**single[task], "seed": seed})
            self.train(f"tuned_multitask_uncertainty_seed{seed}", {**both, "seed": seed})

    def class_weighted(self) -> None:
        """The headline comparison with sentiment's classes weighted by inverse frequency (`--class_weights
        sentiment=auto`), the loss that matches its metric, macro-recall (the mean of the per-class recalls): the
        single-task sentiment model, then the multi-task model of `balancing` distilled from it (and the topic
        model)."""
        self.balancing()
        runs, weighted = self.out / "runs", {"class_weights": ["sentiment=auto"]}
        self.train("single_sentiment_weighted", {**self.single_options("sentiment"), **weighted})
        both = {**self.headline_options(), **weighted}
        both["teachers"] = [f"topic={runs / 'single_topic' / 'model'}",
                            f"sentiment={runs / 'single_sentiment_weighted' / 'model'}"]
        self.train("tuned_multitask_uncertainty_weighted", both)

    def single_options(self, task: str) -> dict:
        return {"tasks": [task], "train_files": [f"{task}={self.files[f'{task}_train']}"],
                "validation_files": self.validation(task)}

    def ceiling(self) -> None:
        """How far single-task fine-tuning goes on these files: the topic model with other recipes (TOPIC_RECIPES),
        and per task the mean probabilities of the single-task models of ENSEMBLE_SEEDS: an ensemble of three models,
        a reference for what one distilled model could learn from them, not a model the package ships. A member
        whose model folder is missing (models are not kept in the repository) is trained again first."""
        for name, options in TOPIC_RECIPES.items():
            self.train(name, {**self.single_options("topic"), **options})
        for task in TASKS:
            names = [single_run(task, seed) for seed in ENSEMBLE_SEEDS]
            for name, seed in zip(names, ENSEMBLE_SEEDS):
                self.kept_model(name, {**self.single_options(task), "seed": seed})
            self.ensemble(task, names)

    def ensemble_teachers(self) -> None:
        """The headline multi-task recipe distilled from the ensemble of the three single-task models per task of
        `ceiling` (ENSEMBLE_SEEDS; `--teachers` names each task three times), trained with each seed of SEEDS: one
        student, three teachers per task."""
        self.ceiling()
        runs = self.out / "runs"
        both = self.headline_options()
        both["teachers"] = [f"{task}={runs / single_run(task, seed) / 'model'}"
                            for task in TASKS for seed in ENSEMBLE_SEEDS]
        for seed in SEEDS:
            self.train(f"tuned_multitask_uncertainty_ensemble{seed_suffix(seed)}", {**both, "seed": seed})

    def ensemble(self, task: str, names: list[str]) -> None:
        key = f"ensemble_{task}"
        if key in self.results["runs"]:
            return
        from sentence_multitask import SentenceMultiTaskModel

        started, labels = time.time(), TASKS[task]
        valid = read_jsonl(self.files[f"{task}_validation"])
        texts = [row["text"] for row in valid]
        probabilities = []
        for name in names:
            model = SentenceMultiTaskModel.from_pretrained(self.out / "runs" / name / "model").eval()
            order = [list(model.config.tasks[task]).index(label) for label in labels]
            probabilities.append(model.predict_proba(texts, batch_size=64)[task].numpy()[:, order])
        predicted = np.mean(probabilities, axis=0).argmax(axis=1)
        metrics = scores(predicted, [labels.index(row["label"]) for row in valid], labels)
        self.results["runs"][key] = {"metrics": {task: metrics}, "seconds": round(time.time() - started, 1),
                                     "members": names}
        self.save()
        print(f"{key}: {json.dumps(metrics)}", flush=True)

    def reproduce(self) -> None:
        """The main model loads without the package, and `sentence-multitask evaluate` gives the reported figures."""
        model_dir = self.out / "runs" / "multitask" / "model"
        report_path = self.out / "evaluate_multitask.json"
        self.command(["evaluate", "--model", str(model_dir), "--eval_files", *self.validation("topic", "sentiment"),
                      "--output", str(report_path)], self.out / "evaluate_multitask.log")
        report = json.loads(report_path.read_text())
        reported = self.results["runs"]["multitask"]["metrics"]
        differences = [abs(report["tasks"][task][name] - reported[task][name])
                       for task in reported for name in ("accuracy", "macro_f1", "macro_recall")]
        blocked = (
            "import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'sentence_multitask': raise ImportError(name)\n"
            "sys.meta_path.insert(0, B())\n"
            "from transformers import AutoModel\n"
            f"model = AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True)\n"
            "print(type(model).__module__, model.predict('The striker scored twice in the final.'))\n"
        )
        loaded = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, check=True)
        self.results["reproduction"] = {
            "evaluate_command": f"sentence-multitask evaluate --model {model_dir.relative_to(self.out)} --eval_files "
                                "topic=topic_validation.jsonl sentiment=sentiment_validation.jsonl",
            "max_abs_difference_to_reported": max(differences),
            "loaded_without_package": loaded.stdout.strip().splitlines()[-1],
        }
        self.save()
        print("reproduction:", json.dumps(self.results["reproduction"]), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--only", choices=(*STEPS, "all"), default="all")
    parser.add_argument("--smoke", action="store_true", help="Tiny slice of the data, 2 steps per run.")
    parser.add_argument("--encoder", help="Encoder for every run and the frozen baseline (default: the package's, "
                                          "all-MiniLM-L6-v2).")
    parser.add_argument("--in_process", action="store_true",
                        help="Run each `sentence-multitask` command in this process instead of its own (faster for "
                             "--smoke; the runs then share global state such as logging).")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(args.out, args.smoke, args.encoder, args.in_process)
    started = time.time()
    for step, methods in STEPS.items():
        if args.only in (step, "all"):
            for method in methods:
                getattr(experiment, method)()
    experiment.results["seconds"]["last_invocation"] = round(time.time() - started, 1)
    experiment.save()
    from report import write_report

    write_report(args.out)


if __name__ == "__main__":
    main()
