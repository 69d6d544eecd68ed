"""Texts to model inputs: truncation limits, token ids, and batches of similar length, prepared in a background thread
while the model runs, and sent to a GPU through pinned memory.

This file travels with every saved model, next to the modeling file, and is executed by ``trust_remote_code``. It
imports torch and the standard library only.
"""

from __future__ import annotations

import contextlib
import numbers
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

PROGRESS_BAR_MIN_TEXTS = 256
# On CPU a batch holds at most this many tokens (rows x padded width), so that the largest activation stays under
# glibc's mmap threshold: freed activations are then reused from the heap instead of being mapped and page-faulted
# afresh on every layer (docs/performance.md has the measurement).
CPU_BATCH_TOKENS = 2048
# Texts tokenised and sorted by length together. A call with more texts goes a window at a time, and a background
# thread tokenises the next window while the model runs this one (tokenisers release the GIL).
SORT_WINDOW = 8192
# Texts per forward pass when a call names none: on a GPU small batches leave the device waiting on the host (launch
# overhead per batch), on CPU a batch is also cut to CPU_BATCH_TOKENS tokens.
CPU_BATCH_SIZE, GPU_BATCH_SIZE = 32, 512
# With the default GPU batch, at most this many tokens (rows x padded width) per batch: 512 texts of 128 tokens, fewer
# of longer texts, so that the default fits a small GPU whatever the texts' length.
GPU_BATCH_TOKENS = 512 * 128


def max_tokens(max_length: int | None, default: int, *limits: int | None) -> int:
    """
    The number of tokens texts are truncated to: `max_length`, or the model's `default` when it is None, capped at
    each of `limits` that is a positive integer (the encoder's `max_position_embeddings`, the tokenizer's
    `model_max_length`): the encoder has no position embedding past them.
    """
    cap = min((limit for limit in limits if isinstance(limit, int) and limit > 0), default=None)
    if max_length is None:
        max_length = default
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 2:
        valid = f"from 2 to {cap}" if cap else "at least 2"
        raise ValueError(f"max_length must be an integer {valid} (a text needs [CLS] and [SEP]), got {max_length!r}; "
                         f"leave it None for the model's default ({default}).")
    return int(max_length) if cap is None else min(int(max_length), cap)


def token_ids(encode: Callable[[list[str], int], list[list[int]]], texts: list[str],
              max_length: int) -> tuple[list[list[int]], int]:
    """
    Token ids of every text, truncated to `max_length` tokens (see `max_tokens`), and how many texts were cut.
    `encode(texts, limit)` tokenises with special tokens, truncating to `limit` tokens.
    """
    # One token more than allowed tells which texts were cut, without a second full pass.
    ids = encode(texts, max_length + 1)
    cut = [i for i, row in enumerate(ids) if len(row) > max_length]
    for i, row in zip(cut, encode([texts[i] for i in cut], max_length) if cut else []):
        ids[i] = row
    return ids, len(cut)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; to a GPU through pinned memory without waiting, so that the host prepares the next batch
    while the device runs this one."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """The items of `items`, produced by a background thread up to `depth` ahead (an error there is raised here)."""
    handoff: queue.Queue = queue.Queue(depth)
    stop, end = threading.Event(), object()

    def hand_over(item, error=None) -> bool:
        while not stop.is_set():
            try:
                handoff.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce():
        try:
            for item in items:
                if not hand_over(item):
                    return
            hand_over(end)
        except BaseException as error:  # noqa: BLE001 - raised in the consumer
            hand_over(end, error)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def batch_limits(batch_size: int | None, token_cap: int | None, device: torch.device | str) -> tuple[int, int | None]:
    """`(batch_size, token_cap)` checked; a None batch size is the device's default (`GPU_BATCH_SIZE` texts of at
    most `GPU_BATCH_TOKENS` tokens in all on a GPU, `CPU_BATCH_SIZE` elsewhere)."""
    if batch_size is None:
        if torch.device(device).type != "cuda":
            return CPU_BATCH_SIZE, token_cap
        return GPU_BATCH_SIZE, GPU_BATCH_TOKENS if token_cap is None else token_cap
    if isinstance(batch_size, bool) or not hasattr(batch_size, "__index__") or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size), token_cap  # numpy integers too


def _window_batches(ids: list[list[int]], first: int, batch_size: int, pad_id: int, token_cap: int | None,
                    pin: bool) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """The batches (host tensors) of one window's token ids, longest first; positions count from `first`."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches, start = [], 0
    while start < len(order):
        width = len(ids[order[start]])  # longest first: the first text of a batch sets its width
        count = batch_size if token_cap is None else max(1, min(batch_size, token_cap // max(width, 1)))
        positions = order[start : start + count]
        start += len(positions)
        rows = [ids[i] + [pad_id] * (width - len(ids[i])) for i in positions]
        mask = [[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in positions]
        inputs = {"input_ids": torch.tensor(rows, dtype=torch.long),
                  "attention_mask": torch.tensor(mask, dtype=torch.long)}
        if pin:
            inputs = {name: tensor.pin_memory() for name, tensor in inputs.items()}
        batches.append(([first + i for i in positions], inputs))
    return batches


def length_sorted_batches(
    texts: list[str],
    tokenize: Callable[[list[str]], list[list[int]]],
    batch_size: int | None,
    *,
    pad_id: int,
    device: torch.device,
    token_cap: int | None,
    show_progress_bar: bool | None,
    progress_bar: Callable[..., Any],
    window: int | None = None,
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """
    Yield `(positions, inputs)` batches of similar length on `device`: at most `batch_size` texts (None:
    `GPU_BATCH_SIZE` and at most `GPU_BATCH_TOKENS` tokens on a GPU, else `CPU_BATCH_SIZE`) and, with
    `token_cap`, at most that many tokens per batch (but always one text). Texts go `window` (None: `SORT_WINDOW`)
    at a time: tokenised with `tokenize(texts)`, sorted longest first and padded per batch; with more than one
    window, a background thread prepares the next window while the caller runs the model on this one.
    `progress_bar` is a tqdm-like class, shown by default for `PROGRESS_BAR_MIN_TEXTS` texts or more.
    """
    device = torch.device(device)
    batch_size, token_cap = batch_limits(batch_size, token_cap, device)
    window = window or SORT_WINDOW
    windows = (_window_batches(tokenize(texts[first : first + window]), first, batch_size, pad_id, token_cap,
                               device.type == "cuda")
               for first in range(0, len(texts), window))
    if len(texts) > window:
        windows = prefetch(windows, depth=1)
    if show_progress_bar is None:
        show_progress_bar = len(texts) >= PROGRESS_BAR_MIN_TEXTS
    # Closed however this generator ends, so that the background thread stops and lets go of its windows.
    with contextlib.closing(windows), progress_bar(total=len(texts), desc="Texts",
                                                   disable=not show_progress_bar) as progress:
        for batches in windows:
            for positions, inputs in batches:
                progress.update(len(positions))
                yield positions, {name: to_device(tensor, device) for name, tensor in inputs.items()}
