"""README.md's Python and shell snippets run as pasted, against a tiny model saved where the README's model would be.
Snippets that install packages, reach the Hub or need files a user brings (their own CSV) are named and skipped."""

import re
import shlex

import pytest

from .conftest import REFERENCE_TASKS, REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", README, flags=re.S | re.M)
# What a snippet needs that a test cannot have: the network, an install, a user's own files. `train` is left out too:
# the demo run on the real weights is tests/test_training.py's.
NOT_RUN = ("pip install", "hf auth", "push_to_hub", "you/name", ".csv")


def runnable(code: str) -> bool:
    return not any(marker in code for marker in NOT_RUN)


def commands(code: str) -> list[list[str]]:
    """The runnable `sentence-multitask ...` commands of a shell snippet (backslash continuations joined)."""
    lines = code.replace("\\\n", " ").splitlines()
    found = [shlex.split(line, comments=True)[1:] for line in lines if line.strip().startswith("sentence-multitask ")]
    return [argv for argv in found if argv[0] != "train" and runnable(" ".join(argv))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_encoder):
    """A folder with the README's model name holding a tiny model, and the repository's src/ for the demo data."""
    from sentence_multitask import SentenceMultiTaskModel

    folder = tmp_path_factory.mktemp("readme")
    SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).save_pretrained(
        folder / "sentence-multitask-model")
    (folder / "src").symlink_to(REPO / "src")
    return folder


def test_the_readme_has_snippets_and_most_of_them_run():
    assert len(BLOCKS) >= 8
    assert sum(runnable(code) for kind, code in BLOCKS if kind == "python") + \
        sum(bool(commands(code)) for kind, code in BLOCKS if kind == "bash") >= 4


@pytest.mark.parametrize("index", [i for i, (kind, code) in enumerate(BLOCKS) if kind == "python"])
def test_python_snippet(index, workdir, monkeypatch, capsys):
    code = BLOCKS[index][1]
    if not runnable(code):
        pytest.skip("needs the Hub or an install")
    monkeypatch.chdir(workdir)
    exec(compile(code, f"README.md python snippet {index}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("index", [i for i, (kind, code) in enumerate(BLOCKS) if kind == "bash"])
def test_shell_snippet(index, workdir, monkeypatch, capsys):
    from sentence_multitask.cli import main

    code = BLOCKS[index][1]
    if not commands(code):
        pytest.skip("needs the Hub, an install, the user's own files or a real-weights training run")
    if "onnx" in code:
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(workdir)
    for argv in commands(code):
        assert main(argv) == 0, argv
    assert capsys.readouterr().out.strip()
