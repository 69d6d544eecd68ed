"""Reliability under faults: two runs with the same seed give bit-identical weights, a training process killed
(SIGKILL) after a checkpoint resumes to the uninterrupted run's weights with every checkpoint left loadable, and
threads calling predict at once get the serial results.

The tiny random encoder of `tiny_encoder`, offline; the shared fixtures are in reliability_helpers.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

try:
    from . import reliability_helpers as shared
    from .reliability_helpers import ATOL, LONG, TASKS, same_prediction, train_args, write_train_file
except ImportError:  # tests/ collected as a plain directory
    import reliability_helpers as shared
    from reliability_helpers import ATOL, LONG, TASKS, same_prediction, train_args, write_train_file
from sentence_multitask import SentenceMultiTaskModel, training

# The shared fixtures of reliability_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
one_torch_thread = shared.one_torch_thread  # autouse: one torch thread for every test here
tiny_model = shared.tiny_model
train_file = shared.train_file


# ---------------------------------------------------------------------------------------------------- 1. faults


def test_two_runs_with_the_same_seed_give_bit_identical_weights(tiny_encoder, train_file, tmp_path, one_torch_thread):
    torch.set_num_threads(one_torch_thread)  # torch's own thread count here: multi-threaded kernels included
    try:
        for name in ("a", "b"):
            training.main(train_args(tiny_encoder, train_file, tmp_path / name, "--max_steps", "4"))
    finally:
        torch.set_num_threads(1)
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"same seed, different weights: {different[:5]}"
    initial = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).state_dict()
    assert not torch.equal(initial["encoder.embeddings.word_embeddings.weight"],
                           first["encoder.embeddings.word_embeddings.weight"])  # training did change the weights


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _complete(checkpoint: Path) -> bool:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        load_file(checkpoint / "model.safetensors")
    except Exception:
        return False
    required = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
    return state.get("global_step") == int(checkpoint.name.split("-")[1]) and all(
        (checkpoint / f).is_file() for f in required)


def _assert_every_checkpoint_loads(directory: Path, context: str) -> None:
    for checkpoint in _checkpoints(directory):
        try:
            load_file(checkpoint / "model.safetensors")
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"{context}: {checkpoint.name} does not load ({error!r}); it holds "
                        f"{sorted(p.name for p in checkpoint.iterdir())}")


@pytest.fixture(scope="module")
def long_train_file(tmp_path_factory) -> str:
    """128 rows of ~110 words: with batch 64 each step takes long enough to be killed in the middle of training."""
    return write_train_file(tmp_path_factory.mktemp("long-train-data"), seed=1, rows=128, words_per_text=(90, 126))


def test_sigkill_after_the_first_checkpoint_then_resume_gives_the_uninterrupted_weights(tiny_encoder, long_train_file,
                                                                                        tmp_path):
    import shutil

    options = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size",
               "64"]
    reference = tmp_path / "uninterrupted"
    training.main(train_args(tiny_encoder, long_train_file, reference, *options))

    # One thread in the killed process too, as in this one: the reference and the resumed run compute alike.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    rng = random.Random()
    for attempt in range(3):
        shutil.rmtree(out, ignore_errors=True)
        log = tmp_path / f"killed-{attempt}.log"  # a file, not a pipe: a full pipe would stall the run
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "sentence_multitask.cli", "train",
                 *train_args(tiny_encoder, long_train_file, out, *options)],
                env=env, stdout=handle, stderr=subprocess.STDOUT,
            )
        # A random moment after the first checkpoint: once a randomly chosen checkpoint (2 is the first) is
        # complete, plus a random part of a step.
        target = rng.choice([2, 2, 4, 6, 8, 10]) if attempt == 0 else 2
        deadline = time.monotonic() + 240
        while not (out / f"checkpoint-{target}" / "trainer_state.json").exists() and process.poll() is None:
            assert time.monotonic() < deadline, f"no checkpoint-{target} after 240 s"
            time.sleep(0.005)
        if process.poll() is not None:  # it finished (or failed) before the chosen checkpoint
            assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
            continue
        delay = rng.uniform(0.0, 0.3) if attempt == 0 else 0.0
        time.sleep(delay)
        alive = process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if alive:
            break
    else:
        pytest.fail("the training run always finished before it could be killed")
    assert process.returncode == -signal.SIGKILL
    context = (f"killed {delay:.2f} s after checkpoint-{target} (attempt {attempt + 1}), leaving "
               f"{sorted(p.name for p in out.iterdir())}")
    print(context)  # shown with -s
    _assert_every_checkpoint_loads(out, context)
    complete = [c for c in _checkpoints(out) if _complete(c)]
    assert complete, f"{context}: no complete checkpoint"

    training.main(train_args(tiny_encoder, long_train_file, out, *options, "--resume_from_checkpoint",
                             str(complete[-1])))
    expected, resumed = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    worst = max((expected[k].float() - resumed[k].float()).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"{context}, resumed from {complete[-1].name}: weights differ by up to {worst}"
    _assert_every_checkpoint_loads(out, f"{context}, after the resume")
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12


def test_concurrent_predict_calls_give_the_serial_results(tiny_model):
    rng = random.Random(3)
    words = ["football", "doctor", "laptop", "awful", "joy", "😀", "שלום", "market"]
    jobs = [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(1, 12))]
            for _ in range(16)]
    jobs[3].append(LONG)  # the truncation path too
    serial = [(tiny_model.predict(texts, return_all_scores=True), tiny_model.encode(texts)) for texts in jobs]

    barrier = threading.Barrier(8)

    def work(worker: int):
        barrier.wait()
        results = []
        for round_ in range(3):
            for index in range(worker % 4, len(jobs), 2):
                results.append((index, tiny_model.predict(jobs[index], return_all_scores=True),
                                tiny_model.encode(jobs[index], batch_size=1 + (worker + round_) % 4)))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = [result for results in pool.map(work, range(8)) for result in results]
    assert len(outcomes) > 100
    for index, predictions, embeddings in outcomes:
        expected_predictions, expected_embeddings = serial[index]
        assert len(predictions) == len(expected_predictions)
        assert all(same_prediction(a, b) for a, b in zip(predictions, expected_predictions)), index
        assert np.abs(embeddings - expected_embeddings).max() <= ATOL, index
