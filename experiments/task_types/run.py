"""GoEmotions (28 labels, multi-label) trained jointly with topic and sentiment on all-MiniLM-L6-v2, against
TF-IDF + one-vs-rest logistic regression on the same training file, and against the same joint run without the
multi-label task (what adding it costs the reference tasks).

    python experiments/task_types/run.py [--epochs 1] [--rows 3000] [--learning_rate 5e-5] [--head_learning_rate 1e-3]
                                         [--emotion_weights] [--runs both|with_emotions|without_emotions]

Writes results/results.json (or --results). Thresholds are reported three ways: 0.5 for every label; tuned
per label by 2-fold cross-fitting on the validation file (tuned on one half, scored on the other, both ways: the
honest figure); tuned on the whole validation file (what training stores in the model; optimistic).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SHARED_DATA", HERE.parents[2] / "shared" / "data"))
SEED = 20240611


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def emotion_matrix(rows: list[dict], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(rows), len(labels)), dtype=int)
    for r, row in enumerate(rows):
        for label in row["emotions"]:
            matrix[r, index[label]] = 1
    return matrix


def threshold_report(probabilities: np.ndarray, references: np.ndarray) -> dict:
    """Macro/micro-F1 at 0.5, cross-fitted tuned thresholds and thresholds tuned on all rows."""
    from sentence_multitask.metrics.task_scores import multi_label_scores, tune_thresholds

    at_half = multi_label_scores(probabilities >= 0.5, references)
    order = np.random.default_rng(SEED).permutation(len(references))
    halves = np.array_split(order, 2)
    predicted = np.zeros_like(references)
    for tune, score in ((halves[0], halves[1]), (halves[1], halves[0])):
        thresholds = np.asarray(tune_thresholds(probabilities[tune], references[tune])["thresholds"])
        predicted[score] = probabilities[score] >= thresholds
    crossfit = multi_label_scores(predicted, references)
    tuned_all = tune_thresholds(probabilities, references)
    optimistic = multi_label_scores(probabilities >= np.asarray(tuned_all["thresholds"]), references)
    pick = ("macro_f1", "micro_f1", "subset_accuracy")
    return {"at_0.5": {k: at_half[k] for k in pick}, "tuned_crossfit": {k: crossfit[k] for k in pick},
            "tuned_on_all_validation": {k: optimistic[k] for k in pick},
            "per_label_f1_crossfit": crossfit["per_class_f1"]}


def tfidf_baseline(train: list[dict], validation: list[dict], labels: list[str]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([row["text"] for row in train])
    x_validation = vectorizer.transform([row["text"] for row in validation])
    classifier = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced"))
    classifier.fit(x_train, emotion_matrix(train, labels))
    return threshold_report(classifier.predict_proba(x_validation), emotion_matrix(validation, labels))


def sample_file(name: str, rows: int, work: Path) -> Path:
    """A seeded sample of `rows` rows of a shared training file, written to `work`."""
    lines = [line for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = sorted(np.random.default_rng(SEED).choice(len(lines), min(rows, len(lines)), replace=False))
    path = work / f"{rows}_{name}"
    path.write_text("".join(lines[i] + "\n" for i in chosen), encoding="utf-8")
    return path


POLARITY = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}


def with_polarity(path: Path, work: Path) -> Path:
    """A copy of a sentiment file whose rows also hold `polarity`, a regression target derived from the human label
    (negative -1, neutral 0, positive 1): the shared data holds no real-valued target."""
    rows = read(path)
    target = work / f"polarity_{path.name}"
    target.write_text("".join(json.dumps({**row, "polarity": POLARITY[row["label"]]}) + "\n" for row in rows),
                      encoding="utf-8")
    return target


def reference_files(work: Path, rows: int | None = None) -> list[str]:
    """topic and sentiment (+ its derived polarity) files: a training sample of `rows` rows, or the validation files."""
    if rows is None:
        topic, sentiment = DATA / "topic_validation.jsonl", DATA / "sentiment_validation.jsonl"
    else:
        topic, sentiment = sample_file("topic_train.jsonl", rows, work), sample_file("sentiment_train.jsonl", rows, work)
    return [f"topic={topic}", f"sentiment,polarity={with_polarity(sentiment, work)}"]


def train_run(out: Path, with_emotions: bool, epochs: float, rows: int, recipe: list[str]) -> float:
    from sentence_multitask import training

    files, validation = reference_files(out.parent, rows), reference_files(out.parent)
    if not with_emotions:  # its class weights too
        recipe = [option for option in recipe if option not in ("--class_weights", "emotions=auto")]
    if with_emotions:
        files.append(f"emotions={DATA / 'goemotions_train.jsonl'}")
        validation.append(f"emotions={DATA / 'goemotions_validation.jsonl'}")
    started = time.time()
    training.main([
        "--train_files", *files, "--validation_files", *validation, "--max_length", "64",
        "--num_train_epochs", str(epochs),
        "--output_dir", str(out), "--overwrite_model", "true", "--eval_strategy", "no", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", str(SEED), "--logging_steps", "50",
        "--task_types", "polarity=regression", *recipe,
    ])
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=3000, help="Training rows per topic / sentiment file (GoEmotions: "
                        "all 5,426 unless fewer).")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="The encoder's learning rate.")
    parser.add_argument("--head_learning_rate", type=float, default=1e-3)
    parser.add_argument("--emotion_weights", action="store_true",
                        help="--class_weights emotions=auto: each label's pos_weight from the data.")
    parser.add_argument("--runs", choices=("both", "with_emotions", "without_emotions"), default="both",
                        help="Train with GoEmotions, without it (its cost to the reference tasks), or both.")
    parser.add_argument("--work", default="/tmp/task_types_runs")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "results.json",
                        help="Where the figures go (JSON).")
    args = parser.parse_args()
    recipe = ["--learning_rate", str(args.learning_rate), "--head_learning_rate", str(args.head_learning_rate)]
    if args.emotion_weights:
        recipe += ["--class_weights", "emotions=auto"]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    train, validation = read(DATA / "goemotions_train.jsonl"), read(DATA / "goemotions_validation.jsonl")
    labels = sorted({label for row in train for label in row["emotions"]})
    results = {"settings": {"epochs": args.epochs, "rows_per_reference_file": args.rows, "max_length": 64,
                            "encoder": "all-MiniLM-L6-v2", "seed": SEED, "train_options": recipe}}
    results["tfidf_ovr_logreg"] = tfidf_baseline(train, validation, labels)
    print("TF-IDF:", json.dumps(results["tfidf_ovr_logreg"]["tuned_crossfit"]), flush=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")

    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    Path(args.work).mkdir(parents=True, exist_ok=True)
    reference_data = reference_files(Path(args.work))
    runs = [(f"joint_{arm}", arm == "with_emotions") for arm in ("with_emotions", "without_emotions")
            if args.runs in ("both", arm)]
    for name, with_emotions in runs:
        out = Path(args.work) / name
        out.parent.mkdir(parents=True, exist_ok=True)
        seconds = train_run(out, with_emotions, args.epochs, args.rows, recipe)
        model = SentenceMultiTaskModel.from_pretrained(out)
        report = evaluate_model(model, reference_data)
        run = {"training_seconds": round(seconds),
               **{f"{task}_{metric}": report["tasks"][task][metric] for task in ("topic", "sentiment")
                  for metric in ("accuracy", "macro_f1", "macro_recall")},
               "polarity": {metric: report["tasks"]["polarity"][metric]
                            for metric in ("mse", "mae", "pearson", "spearman")}}
        if with_emotions:
            probabilities = model.predict_proba([row["text"] for row in validation], batch_size=64)["emotions"].numpy()
            order = model.config.tasks["emotions"]
            run["emotions"] = threshold_report(probabilities, emotion_matrix(validation, order))
            run["emotions"]["labels"] = order
        results[name] = run
        print(name, json.dumps({k: v for k, v in run.items() if k != "emotions"}), flush=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
