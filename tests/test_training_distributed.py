"""A real two-process torchrun training job on CPU (gloo): both ranks train on their share of the data, rank 0 saves,
and the averaged gradients give the weights of one process training on all the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    from . import training_helpers as shared
    from .training_helpers import tiny_args, weights
except ImportError:  # tests/ collected as a plain directory
    import training_helpers as shared
    from training_helpers import tiny_args, weights
from sentence_multitask import SentenceMultiTaskModel, training

BIN = Path(sys.executable).parent

# The shared fixtures of training_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
data_dir = shared.data_dir


# ---------------------------------------------------------------------------------------------------- 1. two processes


@pytest.fixture(scope="module")
def tiny_encoder_without_dropout(tmp_path_factory, tiny_encoder) -> str:
    """The tiny encoder's architecture without dropout, so that runs with different batch splits can be compared."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_encoder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-encoder-no-dropout")
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(path)
    return str(path)


# One plain SGD step over all 48 rows: 24 rows on each of 2 processes, or 48 rows in one process. With synchronised
# (averaged) gradients both give the same weights; a rank that trained alone on its 24 rows would not.
ONE_STEP = ["--tasks", "topic", "sentiment", "--num_train_epochs", "1", "--optim", "sgd", "--learning_rate",
            "1.0", "--head_learning_rate", "0", "--warmup_ratio", "0", "--lr_scheduler_type", "constant",
            "--head_dropout", "0"]


@pytest.fixture(scope="module")
def one_process_step(tmp_path_factory, data_dir, tiny_encoder_without_dropout) -> dict[str, torch.Tensor]:
    """The weights after ONE_STEP in one process on all 48 rows."""
    single = tmp_path_factory.mktemp("single") / "model"
    training.main(tiny_args(tiny_encoder_without_dropout, single, "--train_files", str(data_dir / "both.jsonl"),
                            *ONE_STEP, "--per_device_train_batch_size", "48"))
    return weights(single)


def test_torchrun_two_process_training(tmp_path, data_dir, tiny_encoder_without_dropout, one_process_step):
    """A real two-process torchrun job on CPU, as a user starts it: without --use_cpu, which the arguments then turn
    on themselves (transformers would otherwise run each CPU process alone, gradients never averaged)."""
    encoder = tiny_encoder_without_dropout

    logs, out = tmp_path / "logs", tmp_path / "ddp"
    command = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--log-dir", str(logs), "--redirects", "3",
        "-m", "sentence_multitask.cli", "train",
        *tiny_args(encoder, out, "--train_files", str(data_dir / "both.jsonl"), *ONE_STEP,
                   "--per_device_train_batch_size", "24", "--validation_files", str(data_dir / "both_val.jsonl"),
                   "--save_strategy", "epoch", "--ddp_backend", "gloo"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    rank_logs = {path.parent.name: path.read_text(errors="replace") for path in logs.rglob("stderr.log")}
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(log[-3000:] for log in rank_logs.values())

    # Both ranks ran the job ...
    assert sorted(rank_logs) == ["0", "1"]
    for rank, log in rank_logs.items():
        assert "Tasks: {'topic'" in log, f"rank {rank} did not reach training:\n{log[-2000:]}"
    assert "Model saved to" in rank_logs["0"] and "Model saved to" not in rank_logs["1"]
    # ... and shared the data: 48 rows / (24 per device x 2 processes) = 1 optimisation step in the epoch.
    checkpoint = out / "checkpoint-1"
    assert checkpoint.is_dir(), sorted(os.listdir(out))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and state["epoch"] == 1.0
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "on 2 process(es)" in card and "| batch size | 48 |" in card

    # Rank 0 saved a model that loads (loading without the package is tests/test_remote_code.py's).
    assert sorted(SentenceMultiTaskModel.from_pretrained(out).predict(["the team won the match"])[0]) == \
        ["sentiment", "topic"]

    # The gradients were averaged across the two processes: the same weights as one process on all 48 rows.
    reference, distributed, initial = one_process_step, weights(out), weights(encoder)
    moved = max((reference[f"encoder.{k}"] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3  # the step did change the encoder
    worst = max((reference[k] - distributed[k]).abs().max().item() for k in reference)
    assert worst <= 1e-6, (
        f"rank 0's weights differ by up to {worst} from one process training on the same rows: the two processes "
        f"did not synchronise gradients (each trained alone on its half of the data)"
    )
