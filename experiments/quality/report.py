"""Tables (Markdown) and the limited-data plot (PNG) from results.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import TASKS, seed_suffix
from full_data import CROSS_FIT_FOLDS

MAIN_ROWS = [
    ("tfidf_logreg", "TF-IDF (1-2 grams) + logistic regression, per task"),
    ("frozen_minilm_logreg", "frozen all-MiniLM-L6-v2 + logistic regression, per task"),
    ("single_topic", "fine-tuned single-task model: topic"),
    ("single_sentiment", "fine-tuned single-task model: sentiment"),
    ("multitask", "multi-task model (one encoder, both heads, one forward pass)"),
    ("multitask_distilled", "multi-task model distilled from the two single-task models (teacher annealing)"),
    ("tuned_single_topic", "fine-tuned single-task model: topic, best of the recipe search"),
    ("tuned_single_sentiment", "fine-tuned single-task model: sentiment, best of the recipe search"),
    ("tuned_multitask", "multi-task model, best of the recipe search, distilled from the two single-task models"),
    ("tuned_multitask_uncertainty", "**the same with learned task weights (uncertainty weighting)**"),
    ("tuned_multitask_annealed", "the same recipe with annealed task sampling"),
    ("single_sentiment_weighted", "fine-tuned single-task model: sentiment, classes weighted by inverse frequency"),
    ("tuned_multitask_uncertainty_weighted", "multi-task model with learned task weights, sentiment's classes "
                                             "weighted, distilled from the weighted sentiment model"),
    ("topic_epochs4", "fine-tuned single-task model: topic, 4 epochs"),
    ("topic_label_smoothing", "fine-tuned single-task model: topic, 3 epochs, label smoothing 0.1"),
    ("topic_lr5e-5", "fine-tuned single-task model: topic, 3 epochs at learning rate 5e-5"),
    ("ensemble_topic", "mean probabilities of three single-task topic models (seeds 42, 7, 13; three encoders)"),
    ("warm_started", "multi-task model started from the single-task sentiment model, headline recipe (2 epochs more "
                     "for sentiment)"),
    ("single_sentiment_continued", "fine-tuned single-task model: sentiment, continued 2 epochs more on its own"),
    ("ensemble_sentiment", "mean probabilities of three single-task sentiment models (seeds 42, 7, 13; three "
                           "encoders)"),
    *((f"single_{task}_fold{fold}", f"fine-tuned single-task model: {task}, without fold {fold} of {CROSS_FIT_FOLDS} "
                                    "(a cross-fitted teacher)") for task in TASKS for fold in range(CROSS_FIT_FOLDS)),
    *((f"single_{task}_cross_fit", f"fine-tuned single-task model: {task}, distilled from its cross-fitted teachers")
      for task in TASKS),
]
SEED_SECTIONS = [  # (title, multi-task run): a report section per seeds_table beside the single-task models
    ("Seeds", "tuned_multitask_uncertainty"),
    ("Distilled from three-model ensembles", "tuned_multitask_uncertainty_ensemble"),
    ("GoEmotions as a third task", "tuned_multitask_uncertainty_emotions"),
    ("Constant teacher weight 0.5", "tuned_multitask_uncertainty_constant"),
    ("Constant teacher weight 0.75", "tuned_multitask_uncertainty_constant_w0.75"),
    ("Teacher weight 0.75 for sentiment only (topic annealed)", "tuned_multitask_uncertainty_constant_sentiment"),
    ("Teacher weight 0.75 for sentiment only, static task weights", "tuned_multitask_constant_sentiment"),
    ("Teacher weight 0.75 for sentiment only, its learned-weight prior scaled down",
     "tuned_multitask_uncertainty_constant_sentiment_prior"),
    ("The searched recipe with static task weights, both teachers annealed", "tuned_multitask"),
    ("Teachers on every training row", "tuned_multitask_uncertainty_all_rows"),
    ("Cross-fitted teachers", "tuned_multitask_uncertainty_cross_fit"),
]
FRACTIONS = ("0.01", "0.05", "0.2", "1.0")
METHODS = (("single", "single-task sentiment"), ("joint", "joint multi-task"),
           ("sequential", "sequential (topic, then frozen encoder)"),
           ("distilled", "joint, distilled from the single-task models"),
           ("upsampled", "joint, tasks in equal shares (sentiment up-sampled)"),
           ("sequential_top", "sequential, top 2 encoder layers trained at 2e-5"),
           ("self_trained", "joint, self-trained (+ pseudo-labelled unlabelled tweets)"),
           ("emotions", "joint, GoEmotions as a third task (+ 5,426 labelled Reddit comments)"))
COLORS = {"single": "C0", "joint": "C1", "sequential": "C2", "distilled": "C3", "upsampled": "C4",
          "sequential_top": "C5", "self_trained": "C6", "emotions": "C7"}


def _cell(run, task, metric):
    value = ((run or {}).get("metrics", {}).get(task) or {}).get(metric)
    return f"{value:.4f}" if value is not None else "-"


def main_table(results: dict) -> str:
    runs = results["runs"]
    lines = [
        "| model | topic acc | topic macro-F1 | sentiment macro-recall | sentiment macro-F1 | sentiment acc | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, name in MAIN_ROWS:
        run = runs.get(key)
        if run is None:
            continue
        lines.append(
            f"| {name} | {_cell(run, 'topic', 'accuracy')} | {_cell(run, 'topic', 'macro_f1')} | "
            f"{_cell(run, 'sentiment', 'macro_recall')} | {_cell(run, 'sentiment', 'macro_f1')} | "
            f"{_cell(run, 'sentiment', 'accuracy')} | {run.get('seconds', 0):.0f} s |"
        )
    return "\n".join(lines)


def seeds_table(results: dict, multitask: str = "tuned_multitask_uncertainty") -> str:
    """The single-task models and the multi-task run `multitask` (by default the one with learned weights), per seed
    and their mean."""
    runs = results["runs"]
    seeds = sorted({int(key.rpartition("_seed")[2]) for key in runs if "_seed" in key})
    columns = (("single_topic", "topic", "accuracy"), ("single_topic", "topic", "macro_f1"),
               ("single_sentiment", "sentiment", "macro_recall"), (multitask, "topic", "accuracy"),
               (multitask, "topic", "macro_f1"), (multitask, "sentiment", "macro_recall"))
    lines = ["| seed | single topic acc | single topic macro-F1 | single sentiment macro-recall | multi-task topic acc | "
             "multi-task topic macro-F1 | multi-task sentiment macro-recall |", "|---|---|---|---|---|---|---|"]
    values = []
    for seed in [42, *seeds]:
        suffix = seed_suffix(seed)
        row = [((runs.get(name + suffix) or {}).get("metrics", {}).get(task) or {}).get(metric)
               for name, task, metric in columns]
        if None not in row:
            values.append(row)
            lines.append(f"| {seed} | " + " | ".join(f"{value:.4f}" for value in row) + " |")
    if len(values) < 2:
        return ""
    lines.append("| mean | " + " | ".join(f"{value:.4f}" for value in np.mean(values, axis=0)) + " |")
    gaps = 100 * (np.asarray(values)[:, 3:] - np.asarray(values)[:, :3])  # multi-task minus single-task, same seed
    lines.append("| multi-task minus single-task, points (95 % interval over seeds) | | | | " +
                 " | ".join(difference_interval(gap) for gap in gaps.T) + " |")
    return "\n".join(lines)


def difference_interval(gaps: np.ndarray) -> str:
    """The mean of per-seed differences with its 95 % Student-t interval, e.g. `-0.23 (-0.71, +0.25)`: how far the
    seeds alone leave the true difference open (the validation files are the same for every seed)."""
    from scipy import stats

    mean = float(np.mean(gaps))
    half = float(stats.t.ppf(0.975, len(gaps) - 1) * np.std(gaps, ddof=1) / np.sqrt(len(gaps)))
    return f"{mean:+.2f} ({mean - half:+.2f}, {mean + half:+.2f})"


def per_class_table(results: dict) -> str:
    lines = ["| model | task | per-class F1 |", "|---|---|---|"]
    for key, name in MAIN_ROWS:
        run = results["runs"].get(key)
        for task, scores in (run or {}).get("metrics", {}).items():
            per_class = ", ".join(f"{label} {value:.3f}" for label, value in scores["per_class_f1"].items())
            lines.append(f"| {key} | {task} | {per_class} |")
    return "\n".join(lines)


def limited_table(results: dict) -> str:
    runs = results["runs"]
    lines = ["| sentiment data | method | sentiment macro-recall | topic accuracy |", "|---|---|---|---|"]
    topic_single = runs.get("single_topic")
    for fraction in FRACTIONS:
        for method, name in METHODS:
            run = runs.get(f"limited_{method}_{fraction}")
            if run is None:
                continue
            topic = _cell(run, "topic", "accuracy")
            if method == "sequential":
                topic = _cell(topic_single, "topic", "accuracy") + " (phase 1, unchanged)"
            lines.append(f"| {float(fraction):.0%} | {name} | {_cell(run, 'sentiment', 'macro_recall')} | {topic} |")
    return "\n".join(lines)


def limited_seeds_table(results: dict, methods: tuple = ("single_matched", "emotions", "self_trained",
                                                          "self_trained_emotions")) -> str:
    """Single-task sentiment and `methods` at each small fraction, per seed (the same subsample), with each method's
    difference to single-task in points, and the means."""
    runs, lines = results["runs"], []

    def recall(name):
        return ((runs.get(name) or {}).get("metrics", {}).get("sentiment") or {}).get("macro_recall")

    def cells(values):
        single, others = values[0], values[1:]
        return " | ".join([f"{single:.4f}"] + [f"{value:.4f} ({100 * (value - single):+.1f})" if value is not None
                                               else "-" for value in others])

    for fraction in FRACTIONS[:2]:
        rows = []
        for seed in (42, 7, 13):
            suffix = seed_suffix(seed)
            values = [recall(f"limited_{name}_{fraction}{suffix}") for name in ("single", *methods)]
            if values[0] is not None and any(value is not None for value in values[1:]):
                rows.append(values)
                lines.append(f"| {float(fraction):.0%} | {seed} | {cells(values)} |")
        if len(rows) > 1:
            means = [np.mean(column) if None not in column else None for column in zip(*rows)]
            lines.append(f"| {float(fraction):.0%} | mean | {cells(means)} |")
    if not lines:
        return ""
    names = {"single_matched": "single-task, the joint runs' passes", "emotions": "joint + GoEmotions",
             "self_trained": "joint, self-trained",
             "self_trained_emotions": "joint, self-trained + GoEmotions"}
    return "\n".join(["| sentiment data | seed | single-task sentiment macro-recall | "
                      + " | ".join(f"{names.get(method, method)} (difference, points)" for method in methods) + " |",
                      "|---|---|---|" + "---|" * len(methods), *lines])


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = results["runs"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for method, name in METHODS:
        xs, recall, topic = [], [], []
        for fraction in FRACTIONS:
            run = runs.get(f"limited_{method}_{fraction}")
            if run and "sentiment" in run["metrics"]:
                xs.append(float(fraction) * 100)
                recall.append(run["metrics"]["sentiment"]["macro_recall"])
                source = runs.get("single_topic") if method == "sequential" else run
                topic.append(((source or {}).get("metrics", {}).get("topic") or {}).get("accuracy"))
        if xs:
            color = COLORS[method]
            axes[0].plot(xs, recall, marker="o", label=name, color=color)
            if any(value is not None for value in topic):
                axes[1].plot([x for x, t in zip(xs, topic) if t is not None], [t for t in topic if t is not None],
                             marker="o", label=name, color=color)
    for axis, title in zip(axes, ("Sentiment macro-recall (validation)", "Topic accuracy (validation)")):
        axis.set_xscale("log")
        axis.set_xlabel("share of sentiment training data (%)")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.2, 1, 1))  # the legend below both plots, off the data
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(out: Path) -> None:
    results = json.loads((out / "results.json").read_text())
    has_plot = plot(results, out / "limited_data.png")
    text = [
        "# Quality on real data",
        "",
        f"Hardware: {results.get('hardware', '?')}. Validation files of ../shared/data (topic: 1,440 HuffPost "
        "headlines; sentiment: 2,000 TweetEval tweets).",
        "",
        "## Main table",
        "",
        main_table(results),
        "",
        *(line for title, run in SEED_SECTIONS if (table := seeds_table(results, run))
          for line in (f"## {title}", "", table, "")),
        "## Per-class F1",
        "",
        per_class_table(results),
        "",
        "## Limited sentiment data",
        "",
        limited_table(results),
        "",
        *(["### Seeds at the smallest fractions", "", seeds, ""] if (seeds := limited_seeds_table(results)) else []),
    ]
    if "reproduction" in results:
        reproduction = results["reproduction"]
        text += ["## Reproduction", "",
                 f"`{reproduction['evaluate_command']}` reproduces the multi-task row: largest difference "
                 f"{reproduction['max_abs_difference_to_reported']:.2g}. Loaded with `trust_remote_code` in a process that "
                 f"cannot import the package: `{reproduction['loaded_without_package']}`.", ""]
    if has_plot:
        text += ["![limited-data study](limited_data.png)", ""]
    (out / "results.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results")
