"""What the training test files share: small labelled JSON Lines data, `training.main` arguments for short runs on
the tiny encoder, weight comparisons, and the module-scoped fixtures `data_dir`, `tiny_tokenizer` and `joint_run`.

A test file uses a fixture of this module by binding it to the same name at module level (`data_dir =
training_helpers.data_dir`): pytest finds it there, and a module-scoped one is built once per test file.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sentence_multitask import training

TOPIC_TEXT = {
    "sports": ["the team won the match", "the striker scored twice", "the marathon ended downtown"],
    "health": ["the doctor changed my medicine", "the clinic opened a new ward", "my flu is finally gone"],
    "tech": ["the laptop update broke wifi", "the new phone has a fast chip", "the app crashes on start"],
}
SENTIMENT_TEXT = {"negative": ["and it was awful", "sadly a disaster"],
                  "positive": ["and it was wonderful", "what a joy"]}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def make_rows(n: int, seed: int, with_topic: bool = True, with_sentiment: bool = True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, sentiment = rng.choice(sorted(TOPIC_TEXT)), rng.choice(sorted(SENTIMENT_TEXT))
        text = (f"{rng.choice(TOPIC_TEXT[topic])} {rng.choice(SENTIMENT_TEXT[sentiment])}"
                + " really" * rng.randint(0, 8))
        row = {"text": text}
        if with_topic:
            row["topic"] = topic
        if with_sentiment:
            row["sentiment"] = sentiment
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "both.jsonl", make_rows(48, seed=1))
    write_jsonl(folder / "both_val.jsonl", make_rows(24, seed=2))
    write_jsonl(folder / "topic.jsonl", make_rows(40, seed=3, with_sentiment=False))  # topic-only, 40 rows
    write_jsonl(folder / "sentiment.jsonl", make_rows(16, seed=4, with_topic=False))  # sentiment-only, 16 rows
    return folder


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


def tiny_args(tiny_encoder: str, output_dir, *extra: str) -> list[str]:
    """main() arguments for a short, quiet run on the tiny encoder."""
    return [
        "--encoder", tiny_encoder, "--output_dir", str(output_dir), "--per_device_train_batch_size", "8",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--dataloader_pin_memory", "false", *extra,
    ]


def joint_options(data_dir: Path) -> list[str]:
    return ["--train_files", str(data_dir / "both.jsonl"), "--validation_files", str(data_dir / "both_val.jsonl"),
            "--tasks", "topic", "sentiment", "--max_steps", "2"]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory, data_dir, tiny_encoder) -> Path:
    """The folder of a finished joint run on both tasks (2 steps, validated); tests read it, never write into it."""
    out = tmp_path_factory.mktemp("joint") / "model"
    training.main(tiny_args(tiny_encoder, out, *joint_options(data_dir)))
    return out


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "model.safetensors"))


def subset(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    chosen = {name: tensor for name, tensor in state.items() if name.startswith(prefix)}
    assert chosen, f"no weights start with {prefix!r}: {sorted(state)[:5]}..."
    return chosen


def bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ (in any bit) between a and b."""
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]
