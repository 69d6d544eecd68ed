"""The warm-start study of the quality experiment (`run.py --only warm_start`): the headline multi-task recipe started
from the single-task sentiment model of the same seed (its encoder and sentiment head; a new topic head) instead of
from all-MiniLM-L6-v2, distilled from that model and the single-task topic model (supplementary training on an
intermediate task first, as STILTs does, Phang et al. 2018). Sentiment then gets the single-task model's two epochs
plus two joint ones, so the control is that single-task model trained two epochs more on its own. `WarmStartStudy` is
a mixin of run.py's `Experiment`, whose files, results and runs it uses.
"""

from __future__ import annotations

from common import SEEDS, seed_suffix, single_run

START_TASK = "sentiment"  # the task whose single-task model the multi-task model starts from


class WarmStartStudy:
    """The study's steps, for `Experiment` (run.py) to inherit."""

    def warm_started(self) -> None:
        """At each seed of SEEDS: the multi-task model started from the single-task START_TASK model of that seed
        (`warm_started` and the seed's suffix), and that single-task model continued alone for the same epochs with
        its own recipe (`single_<task>_continued`). A starting model whose folder is missing (models are not kept in
        the repository) is trained again first."""
        self.seeds()
        both = self.headline_options()
        for seed in SEEDS:
            start = self.out / "runs" / single_run(START_TASK, seed) / "model"
            if not (start / "config.json").is_file():
                self.results["runs"].pop(single_run(START_TASK, seed), None)
                self.train(single_run(START_TASK, seed), {**self.single_options(START_TASK), "seed": seed})
            teachers = [item for item in both["teachers"] if not item.startswith(f"{START_TASK}=")]
            suffix = seed_suffix(seed)
            self.train(f"warm_started{suffix}", {**both, "model": str(start), "seed": seed,
                                                 "teachers": [*teachers, f"{START_TASK}={start}"]})
            self.train(f"single_{START_TASK}_continued{suffix}",
                       {**self.single_options(START_TASK), "model": str(start), "seed": seed})
