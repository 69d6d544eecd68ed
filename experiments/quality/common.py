"""What run.py and the study modules beside it share: the tasks and their labels, and JSON Lines files."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = {"topic": ["sports", "health", "tech", "finance", "education", "other"],
         "sentiment": ["negative", "neutral", "positive"]}
SEEDS = (42, 7, 13)  # the seed of base.json, then the other seeds of the `seeds` step


def base_options() -> dict:
    """The train options every run starts from (base.json)."""
    return json.loads((HERE / "base.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def seed_suffix(seed: int) -> str:
    """What ends the name of a run with `seed`: nothing for the seed of base.json, else `_seed<seed>`."""
    return "" if seed == SEEDS[0] else f"_seed{seed}"


def single_run(task: str, seed: int) -> str:
    """The name of the single-task run of `task` with `seed`."""
    return f"single_{task}{seed_suffix(seed)}"
