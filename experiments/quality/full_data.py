"""More full-data levers of the quality experiment, each beside the headline multi-task recipe:

- `run.py --only warm_start`: the headline recipe started from the single-task sentiment model (its encoder and
  sentiment head; a new topic head) instead of from all-MiniLM-L6-v2, distilled from that model and the single-task
  topic model (supplementary training on an intermediate task first, as STILTs does, Phang et al. 2018). Sentiment
  then gets the single-task model's two epochs plus two joint ones, so the control is that single-task model trained
  two epochs more on its own. One seed, the one of base.json: both runs fell well behind there.
- `run.py --only constant_teacher`: the headline recipe with the teacher weight held constant (CONSTANT_TEACHER_WEIGHTS)
  instead of annealed from 1 to 0, at every seed: the students end below their teachers, and a constant weight keeps
  them learning from them to the end. Then the same with only sentiment's weight constant (SENTIMENT_TEACHER_WEIGHT)
  and topic's annealed: a constant weight helped sentiment and cost topic. Then that with the searched static task
  weights instead of learned ones: with sentiment's teacher term kept, its loss stays small, and uncertainty weighting
  raised sentiment's learned weight from 1.2 to 1.8; beside it, its control with both teachers annealed. Last, learned
  weights again with sentiment's prior scaled down by SENTIMENT_PRIOR_SCALE, which undoes that rise: at the optimum a
  learned weight is `0.5 / loss`, so the prior is what sets each task's share.
- `run.py --only more_seeds`: the single-task models, the headline model and that last run at two seeds more.
- `run.py --only all_rows`: the headline recipe with each teacher labelling every training row (`--teacher_rows
  all`), at all five seeds: each headline also trains the sentiment head on its teacher's soft labels, and each tweet
  the topic head, as multi-task self-training does (Ghiasi et al. 2021), so that learning one task on the shared
  encoder does not undo the other.
- `run.py --only cross_fit`: the headline recipe distilled from cross-fitted teachers (`--teacher_folds`), at seeds 42
  and 7: per task, CROSS_FIT_FOLDS single-task models, the K-th trained without fold K of the training rows
  (`--holdout_fold K/N`), each labelling only its held-out fold. A teacher's soft labels on the rows it trained on are
  close to their gold labels (it has fitted them, noise included); on rows it never saw they say what a model of
  this data believes of them. With two folds the teachers cost what the full-data ones do (each reads half the rows).
  Beside it, the control: each single-task model distilled from the same teachers.

`FullDataStudy` is a mixin of run.py's `Experiment`, whose files, results and runs it uses.
"""

from __future__ import annotations

from common import SEEDS, TASKS, seed_suffix

START_TASK = "sentiment"  # the task whose single-task model the multi-task model starts from
CONSTANT_TEACHER_WEIGHTS = (0.5, 0.75)  # the runs of the first have no suffix for it
SENTIMENT_TEACHER_WEIGHT = 0.75  # constant for sentiment only (topic annealed), the better sentiment weight above
SENTIMENT_PRIOR_SCALE = 1.21 / 1.85  # sentiment's final learned weight, annealed / constant (train.log)
PRIOR_RUN = "tuned_multitask_uncertainty_constant_sentiment_prior"
EXTRA_SEEDS = (1, 2)  # `more_seeds`: two seeds more for the headline comparison and PRIOR_RUN
ALL_ROWS_RUN = "tuned_multitask_uncertainty_all_rows"
CROSS_FIT_FOLDS = 2
CROSS_FIT_SEEDS = (42, 7)  # both a point behind the headline model on every figure: no more seeds were run
CROSS_FIT_RUN = "tuned_multitask_uncertainty_cross_fit"


class FullDataStudy:
    """The study's steps, for `Experiment` (run.py) to inherit."""

    def warm_started(self) -> None:
        """The multi-task model started from the single-task START_TASK model (`warm_started`), and that model
        continued alone for the same epochs with its own recipe (`single_<task>_continued`). A starting model whose
        folder is missing (models are not kept in the repository) is trained again first."""
        self.seeds()
        name = f"single_{START_TASK}"
        start = self.kept_model(name, self.single_options(START_TASK))
        both = self.headline_options()
        teachers = [item for item in both["teachers"] if not item.startswith(f"{START_TASK}=")]
        self.train("warm_started", {**both, "model": str(start), "teachers": [*teachers, f"{START_TASK}={start}"]})
        self.train(f"{name}_continued", {**self.single_options(START_TASK), "model": str(start)})

    def constant_teacher(self) -> None:
        """The headline recipe (`seeds`) with `--teacher_annealing constant` at each of CONSTANT_TEACHER_WEIGHTS, then
        with `--teacher_annealing linear sentiment=constant`, with learned and with static task weights, then with
        learned weights and sentiment's prior scaled down (PRIOR_RUN), at every seed of SEEDS (the same teachers)."""
        self.seeds()
        for weight in CONSTANT_TEACHER_WEIGHTS:
            both = {**self.headline_options(), "teacher_annealing": "constant", "distillation_weight": weight}
            name = "tuned_multitask_uncertainty_constant" + ("" if weight == CONSTANT_TEACHER_WEIGHTS[0] else
                                                             f"_w{weight}")
            for seed in SEEDS:
                self.train(f"{name}{seed_suffix(seed)}", {**both, "seed": seed})
        both = self.sentiment_constant_options()
        for seed in SEEDS:
            self.train(f"tuned_multitask_uncertainty_constant_sentiment{seed_suffix(seed)}", {**both, "seed": seed})
        for seed in SEEDS:
            self.train(f"tuned_multitask_constant_sentiment{seed_suffix(seed)}",
                       {**both, "loss_balancing": "static", "seed": seed})
            # its control: the searched recipe with static weights and both teachers annealed (seed 42: `tuned`)
            self.train(f"tuned_multitask{seed_suffix(seed)}",
                       {**self.headline_options(), "loss_balancing": "static", "seed": seed})
        for seed in SEEDS:
            self.train(f"{PRIOR_RUN}{seed_suffix(seed)}", {**self.prior_options(), "seed": seed})

    def sentiment_constant_options(self) -> dict:
        """The headline recipe with sentiment's teacher weight constant (SENTIMENT_TEACHER_WEIGHT), topic's annealed."""
        return {**self.headline_options(), "teacher_annealing": ["linear", "sentiment=constant"],
                "distillation_weight": SENTIMENT_TEACHER_WEIGHT}

    def prior_options(self) -> dict:
        """The headline recipe with sentiment's teacher weight constant and its learned-weight prior scaled down."""
        both = self.sentiment_constant_options()
        weights = dict(item.split("=") for item in both.get("task_weights", []))
        weights["sentiment"] = f"{float(weights.get('sentiment', 1.0)) * SENTIMENT_PRIOR_SCALE:.3f}"
        return {**both, "task_weights": [f"{task}={weight}" for task, weight in weights.items()]}

    def more_seeds(self) -> None:
        """The headline comparison (`seeds`) and PRIOR_RUN at EXTRA_SEEDS too, one seed after the other."""
        self.constant_teacher()
        for seed in EXTRA_SEEDS:
            self.seeds((seed,))
            self.train(f"{PRIOR_RUN}_seed{seed}", {**self.prior_options(), "seed": seed})

    def all_rows(self) -> None:
        """The headline recipe with `--teacher_rows all` (ALL_ROWS_RUN) at every seed of SEEDS and EXTRA_SEEDS, beside
        the headline comparison at those seeds (`more_seeds`)."""
        self.more_seeds()
        for seed in (*SEEDS, *EXTRA_SEEDS):
            self.train(f"{ALL_ROWS_RUN}{seed_suffix(seed)}", {**self.headline_options(), "teacher_rows": "all",
                                                               "seed": seed})

    def cross_fit(self) -> None:
        """The headline recipe distilled from cross-fitted teachers (CROSS_FIT_RUN) at each of CROSS_FIT_SEEDS, for the
        report to set beside the headline comparison of `more_seeds` (run that first: this step needs neither its
        models nor the full-data teachers); then the control, each single-task model distilled from the same
        teachers with the same distillation options. The fold teachers (seed 42) are trained again where their folders
        are missing."""
        teachers = {task: [f"{task}={self.fold_teacher(task, fold)}" for fold in range(CROSS_FIT_FOLDS)]
                    for task in TASKS}
        both = {**self.headline_options(), "teachers": [item for items in teachers.values() for item in items],
                "teacher_folds": CROSS_FIT_FOLDS}
        for seed in CROSS_FIT_SEEDS:
            self.train(f"{CROSS_FIT_RUN}{seed_suffix(seed)}", {**both, "seed": seed})
        distillation = {key: both[key] for key in ("distillation_temperature", "teacher_folds")}
        for task in TASKS:
            self.train(f"single_{task}_cross_fit", {**self.single_options(task), **distillation,
                                                    "teachers": teachers[task]})

    def fold_teacher(self, task: str, fold: int):
        """The single-task model of `task` trained without fold `fold` of CROSS_FIT_FOLDS (`--holdout_fold`)."""
        return self.kept_model(f"single_{task}_fold{fold}",
                               {**self.single_options(task), "holdout_fold": f"{fold}/{CROSS_FIT_FOLDS}"})
