"""Folds of the training rows for cross-fitted teachers: `--holdout_fold K/N` trains a teacher without fold K, and
`--teacher_folds N` has that teacher label only fold K. A row's fold is a hash of its text (`text_fold`)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import datasets
import numpy as np

from .arguments import parse_holdout_fold

logger = logging.getLogger(__name__)

FOLD_COLUMN = "fold"  # a training row's fold of --teacher_folds (`text_fold`)


def text_fold(text: Any, folds: int) -> int:
    """The fold, of `folds`, that a text belongs to: a hash of the text, so the same text is in the same fold in every
    file, run and process (--holdout_fold and --teacher_folds agree)."""
    digest = hashlib.blake2b(str(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % folds


def without_fold(name: str, dataset: datasets.Dataset, text_column: str, holdout_fold: str) -> datasets.Dataset:
    """`dataset` (the file or data set `name`) without the rows of --holdout_fold K/N (`text_fold`); an error where
    no row is left."""
    fold, folds = parse_holdout_fold(holdout_fold)
    kept = dataset.select(np.flatnonzero([text_fold(text, folds) != fold for text in dataset[text_column]]))
    if len(kept) == 0:
        raise ValueError(f"{name}: --holdout_fold {holdout_fold} leaves no row of its {len(dataset)}; give more "
                        "rows or fewer folds.")
    logger.info("%s: --holdout_fold %s keeps %d of %d rows", name, holdout_fold, len(kept), len(dataset))
    return kept
