"""The warm-start study of the quality experiment (`run.py --only warm_start`): the headline multi-task recipe started
from the single-task sentiment model (its encoder and sentiment head; a new topic head) instead of from
all-MiniLM-L6-v2, distilled from that model and the single-task topic model (supplementary training on an
intermediate task first, as STILTs does, Phang et al. 2018). Sentiment then gets the single-task model's two epochs
plus two joint ones, so the control is that single-task model trained two epochs more on its own. One seed, the one of
base.json: both runs fell well behind the headline and single-task models there. `WarmStartStudy` is a mixin of
run.py's `Experiment`, whose files, results and runs it uses.
"""

from __future__ import annotations

START_TASK = "sentiment"  # the task whose single-task model the multi-task model starts from


class WarmStartStudy:
    """The study's steps, for `Experiment` (run.py) to inherit."""

    def warm_started(self) -> None:
        """The multi-task model started from the single-task START_TASK model (`warm_started`), and that model
        continued alone for the same epochs with its own recipe (`single_<task>_continued`). A starting model whose
        folder is missing (models are not kept in the repository) is trained again first."""
        self.seeds()
        name = f"single_{START_TASK}"
        start = self.out / "runs" / name / "model"
        if not (start / "config.json").is_file():
            self.results["runs"].pop(name, None)
            self.train(name, self.single_options(START_TASK))
        both = self.headline_options()
        teachers = [item for item in both["teachers"] if not item.startswith(f"{START_TASK}=")]
        self.train("warm_started", {**both, "model": str(start), "teachers": [*teachers, f"{START_TASK}={start}"]})
        self.train(f"{name}_continued", {**self.single_options(START_TASK), "model": str(start)})
