"""What the reliability test files share: the tiny model with large head weights (`tiny_model`, saved:
`tiny_saved`), one torch thread per test module (`one_torch_thread`, autouse), a training file and `training.main`
arguments, the in-process CLI (`cli`), and how two predictions are compared.

A test file uses a fixture of this module by binding it to the same name at module level (`tiny_model =
reliability_helpers.tiny_model`): pytest finds it there, and a module-scoped one is built once per test file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sentence_multitask import SentenceMultiTaskModel


TASKS = {"topic": ["sports", "health", "tech"], "sentiment": ["negative", "positive"]}
ATOL = 1e-5
MAX_TOKENS = 256  # config.max_length of the tiny model (its tokenizer allows 512)
LONG = "word " * 1000  # 1000 tokens + [CLS] [SEP]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a busy 2-core machine the tiny model runs ~20x faster than with two (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield previous
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger head weights than the 0.02 init: rows that get mixed up would differ visibly
        for parameter in model.heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("tiny-saved")
    tiny_model.save_pretrained(path)
    return path


def write_train_file(folder, seed: int, rows: int, words_per_text: tuple[int, int]) -> str:
    """Random texts from a small vocabulary, each labelled for both tasks."""
    rng = random.Random(seed)
    words = ["the", "team", "won", "doctor", "clinic", "app", "crash", "laptop", "joy", "awful", "match", "flu"]
    data = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(*words_per_text))),
             "topic": rng.choice(TASKS["topic"]), "sentiment": rng.choice(TASKS["sentiment"])} for _ in range(rows)]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> str:
    return write_train_file(tmp_path_factory.mktemp("train-data"), seed=0, rows=64, words_per_text=(3, 30))


def train_args(tiny_encoder: str, train_file: str, output_dir, *extra: str) -> list[str]:
    return ["--encoder", tiny_encoder, "--train_files", train_file, "--tasks", "topic", "sentiment",
            "--output_dir", str(output_dir), "--per_device_train_batch_size", "8", "--eval_strategy", "no",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", "--seed", "7", *extra]


def same_prediction(a: dict, b: dict) -> bool:
    return all(a[t]["label"] == b[t]["label"] and abs(a[t]["score"] - b[t]["score"]) <= ATOL for t in TASKS)


@pytest.fixture
def cli(capsys, monkeypatch):
    """`sentence-multitask ARGS` in this process (see test_cli.run_main)."""
    from .test_cli import run_main

    return lambda *args, stdin="": run_main(args, stdin, capsys, monkeypatch)
