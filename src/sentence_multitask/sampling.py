"""The order of training rows: each data source gets its share of the stream, in length-grouped batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

SAMPLING_MODES = ("proportional", "temperature", "round_robin", "annealed")


def annealed_alpha(epoch: int, epochs: int) -> float:
    """Exponent of annealed sampling (Stickland & Murray 2019) in the 0-based `epoch` of `epochs`: 1 in the first
    epoch, falling linearly to 0.2 in the last (1 - 0.8 * (e - 1) / (E - 1) for the 1-based epoch e)."""
    return 1.0 - 0.8 * min(epoch, epochs - 1) / (epochs - 1) if epochs > 1 else 1.0


def source_shares(sizes: Sequence[int], mode: str, temperature: float = 2.0, epoch: int = 0,
                  epochs: int = 1) -> np.ndarray:
    """Share of the training stream each source gets; a source without rows (e.g. in a sequential phase that trains
    none of its tasks) gets none. `epoch` (0-based) of `epochs` sets the exponent of annealed sampling."""
    sizes = np.asarray(sizes, dtype=float)
    if mode == "proportional":
        weights = sizes
    elif mode == "temperature":
        weights = sizes ** (1.0 / temperature)
    elif mode == "annealed":
        weights = sizes ** annealed_alpha(epoch, epochs)
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
    Index stream over several sources: each source gets its share (proportional, temperature, round-robin, or
    annealed over the `epochs` of training; small sources are re-shuffled and repeated when exhausted), and, with
    length grouping, windows of 50 batches are sorted by length so that each batch pads little. Deterministic for a
    seed and epoch, so every process sees the same.
    """

    def __init__(self, sources: Sequence[int], lengths: Sequence[int] | None, batch_size: int, mode: str,
                 temperature: float = 2.0, seed: int = 0, group_by_length: bool = True, epochs: int = 1):
        self.sources = np.asarray(sources)
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.group_by_length = group_by_length and self.lengths is not None
        self.pools = [np.flatnonzero(self.sources == s) for s in range(int(self.sources.max()) + 1)]
        self.temperature = temperature
        self.epochs = epochs
        self.epoch = 0

    @property
    def shares(self) -> np.ndarray:
        """Each source's share of this epoch's stream."""
        return source_shares([len(pool) for pool in self.pools], self.mode, self.temperature, self.epoch, self.epochs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sources)

    def stream(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + self.epoch)
        total = len(self.sources)
        if self.mode == "proportional":
            return rng.permutation(total)
        shares = self.shares
        if self.mode == "round_robin":
            present = np.flatnonzero(shares > 0)  # only the sources that have rows
            choice = present[np.arange(total) % len(present)]
        else:
            choice = rng.choice(len(self.pools), size=total, p=shares)
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
