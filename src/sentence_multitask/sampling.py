"""The order of training rows: each data source gets its share of the stream, in length-grouped batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

SAMPLING_MODES = ("proportional", "temperature", "round_robin")


def source_shares(sizes: Sequence[int], mode: str, temperature: float = 2.0) -> np.ndarray:
    """Share of the training stream each source gets; a source without rows (e.g. in a sequential phase that trains
    none of its tasks) gets none."""
    sizes = np.asarray(sizes, dtype=float)
    if mode == "proportional":
        weights = sizes
    elif mode == "temperature":
        weights = sizes ** (1.0 / temperature)
    elif mode == "round_robin":
        weights = np.ones_like(sizes)
    else:
        raise ValueError(f"Unknown task sampling mode {mode!r}; use one of {', '.join(SAMPLING_MODES)}.")
    weights = np.where(sizes > 0, weights, 0.0)
    if weights.sum() <= 0:
        raise ValueError("No training rows: every data source is empty.")
    return weights / weights.sum()


class MultiTaskSampler(torch.utils.data.Sampler):
    """
    Index stream over several sources: each source gets its share (proportional, temperature or round-robin; small
    sources are re-shuffled and repeated when exhausted), and, with length grouping, windows of 50 batches are sorted
    by length so that each batch pads little. Deterministic for a seed and epoch, so every process sees the same.
    """

    def __init__(self, sources: Sequence[int], lengths: Sequence[int] | None, batch_size: int, mode: str,
                 temperature: float = 2.0, seed: int = 0, group_by_length: bool = True):
        self.sources = np.asarray(sources)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.group_by_length = group_by_length and self.lengths is not None
        self.pools = [np.flatnonzero(self.sources == s) for s in range(int(self.sources.max()) + 1)]
        self.shares = source_shares([len(pool) for pool in self.pools], mode, temperature)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sources)

    def stream(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        total = len(self.sources)
        if self.mode == "proportional":
            return rng.permutation(total)
        if self.mode == "round_robin":
            present = np.flatnonzero(self.shares > 0)  # only the sources that have rows
            choice = present[np.arange(total) % len(present)]
        else:
            choice = rng.choice(len(self.pools), size=total, p=self.shares)
        picked = np.empty(total, dtype=np.int64)
        for source, pool in enumerate(self.pools):
            slots = np.flatnonzero(choice == source)
            repeats = math.ceil(len(slots) / len(pool)) if len(pool) else 0
            draws = np.concatenate([rng.permutation(pool) for _ in range(repeats)]) if repeats else pool
            picked[slots] = draws[: len(slots)]
        return picked

    def __iter__(self) -> Iterator[int]:
        order = self.stream()
        if self.group_by_length:
            rng = np.random.default_rng(self.seed + self.epoch + 1)
            window = self.batch_size * 50
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            # Shuffle the full batches only; short ones (a window's tail) go last, or every batch after one would
            # straddle two length groups once the DataLoader cuts the stream into batch_size pieces.
            full = [batch for batch in batches if len(batch) == self.batch_size]
            short = [batch for batch in batches if len(batch) < self.batch_size]
            if batches:
                order = np.concatenate([full[i] for i in rng.permutation(len(full))] + short)
        return iter(order.tolist())
