"""Where a CPU training step's time goes: full fine-tuning steps (forward, backward, fused AdamW) of MiniLM with both
heads on real batches of the shared training data, random and length-grouped, timed with the model's dropout as it is,
with attention dropout off, and with all dropout off (which no one should train with: it shows what dropout costs).

    python benchmarks/training_step.py [--rounds 5] [--steps 12]

Variants alternate within each round in one process; each figure is the median over rounds of ms per step. Writes
benchmarks/results/training_step.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel, local_default_encoder
from sentence_multitask.sampling import MultiTaskSampler

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SHARED_DATA", HERE.parent.parent / "shared" / "data"))
VARIANTS = ("as configured", "attention dropout off", "all off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="Training steps per variant and round.")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(local_default_encoder(), tasks=REFERENCE_TASKS).train()
    tokenizer = model.tokenizer
    rows = [json.loads(line) for name in ("topic", "sentiment")
            for line in open(DATA / f"{name}_train.jsonl", encoding="utf-8")]
    texts = [row["text"] for row in rows]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    sources = np.zeros(len(texts), dtype=np.int64)

    def batches(group: bool) -> list[dict]:
        order = list(MultiTaskSampler(sources, lengths, 32, "proportional", seed=0, group_by_length=group))
        out = []
        for start in range(0, args.steps * 32, 32):
            chosen = order[start : start + 32]
            batch = dict(tokenizer([texts[i] for i in chosen], truncation=True, max_length=128, padding=True,
                                   return_tensors="pt"))
            batch["labels"] = {task: torch.randint(0, len(labels), (32,)) for task, labels in REFERENCE_TASKS.items()}
            out.append(batch)
        return out

    data = {"random": batches(False), "length-grouped": batches(True)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    dropouts = {module: module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)}
    attention = [layer.attention.self for layer in model.encoder.encoder.layer]
    attention_p = [module.dropout.p for module in attention]

    def set_dropout(variant: str) -> None:
        for module, p in dropouts.items():
            module.p = 0.0 if variant == "all off" else p
        for module, p in zip(attention, attention_p):
            module.dropout.p = p if variant == "as configured" else 0.0

    def steps(batches: list[dict]) -> float:
        start = time.perf_counter()
        for batch in batches:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return (time.perf_counter() - start) / len(batches) * 1e3

    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for dropout in VARIANTS:
            set_dropout(dropout)
            for name, batches_ in data.items():
                ms = steps(batches_)
                if round_:
                    times.setdefault((name, dropout), []).append(ms)
    widths = {name: statistics.mean(batch["input_ids"].shape[1] for batch in b) for name, b in data.items()}
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps "
             "of batch 32 (max length 128); ms per step, median over rounds.", "",
             "| batches | mean width | dropout as configured | attention dropout off | all dropout off | "
             "attention dropout's share | all dropout's share |", "|---|---|---|---|---|---|---|"]
    for name in data:
        on, attention_off, off = (statistics.median(times[(name, d)]) for d in VARIANTS)
        lines.append(f"| {name} | {widths[name]:.1f} | {on:.0f} | {attention_off:.0f} | {off:.0f} | "
                     f"{1 - attention_off / on:.0%} | {1 - off / on:.0%} |")
    gain = [statistics.median(times[("random", d)]) / statistics.median(times[("length-grouped", d)]) for d in VARIANTS]
    lines += ["", "Length grouping's gain: " + ", ".join(f"{g:.2f}x ({d})" for g, d in zip(gain, VARIANTS)) + "."]
    report = "\n".join(lines)
    print(report)
    (HERE / "results" / "training_step.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
