"""Security: weights load only from safetensors (no pickle is ever unpickled), the code run by trust_remote_code
touches no network, files, processes or environment, and a Hub token never reaches output, logs or files."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentence_multitask import SentenceMultiTaskModel

try:
    from .conftest import run_python
except ImportError:  # tests/ collected as a plain directory
    from conftest import run_python

TASKS = {"topic": ["sports", "health", "tech"], "sentiment": ["negative", "positive"]}
CODE_FILES = ("configuration_sentence_multitask.py", "modeling_sentence_multitask.py", "inference_sentence_multitask.py",
              "batching_sentence_multitask.py", "pipeline_sentence_multitask.py", "card_sentence_multitask.py")
TOKEN = "hf_FAKE_TOKEN_abc123"


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory, tiny_encoder) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-saved")
    SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------- pickles


class PlantMarker:
    """Unpickling this object calls open(marker, "w"): the marker file appears iff a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path, how: str) -> None:
    payload = {"heads.topic.dense.weight": PlantMarker(str(marker)), "encoder.embeddings.word_embeddings.weight":
               PlantMarker(str(marker))}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_the_planted_pickle_is_live(tmp_path, how):
    """Control: loading the planted file the unsafe way does create the marker (so its absence below means
    something)."""
    marker = tmp_path / "marker"
    plant_pickle(tmp_path / "pytorch_model.bin", marker, how)
    if how == "torch.save":
        torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    else:
        with open(tmp_path / "pytorch_model.bin", "rb") as handle:
            pickle.load(handle)
    assert marker.exists()


def _loaders(path: Path):
    from transformers import AutoModel, pipeline

    return {
        "SentenceMultiTaskModel": lambda **kw: SentenceMultiTaskModel.from_pretrained(str(path), **kw),
        "AutoModel remote code": lambda **kw: AutoModel.from_pretrained(str(path), trust_remote_code=True, **kw),
        "pipeline": lambda **kw: pipeline(model=str(path), trust_remote_code=True, model_kwargs=kw),
    }


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_beside_model_safetensors_is_never_unpickled(tiny_saved, tmp_path, how):
    path, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(tiny_saved, path)
    plant_pickle(path / "pytorch_model.bin", marker, how)
    for name, load in _loaders(path).items():
        loaded = load()
        assert loaded is not None, name
        assert not marker.exists(), f"{name} unpickled pytorch_model.bin"
        if name != "pipeline":
            with pytest.raises(ValueError, match="safetensors"):
                load(use_safetensors=False)  # asking for the pickle is refused, not obeyed
            assert not marker.exists(), f"{name}(use_safetensors=False) unpickled pytorch_model.bin"


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_instead_of_model_safetensors_is_refused(tiny_saved, tmp_path, how):
    path, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(tiny_saved, path)
    (path / "model.safetensors").unlink()
    plant_pickle(path / "pytorch_model.bin", marker, how)
    for name, load in _loaders(path).items():
        for kwargs in ({}, {"use_safetensors": None}):
            with pytest.raises((OSError, ValueError), match="model.safetensors") as error:
                model = load(**kwargs)
                pytest.fail(f"{name} loaded {type(model).__name__} from a directory holding only a pickle")
            assert not marker.exists(), f"{name} unpickled pytorch_model.bin ({error.value})"


def test_a_pickle_named_model_safetensors_is_refused(tiny_saved, tmp_path):
    path, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(tiny_saved, path)
    plant_pickle(path / "model.safetensors", marker, "torch.save")
    for name, load in _loaders(path).items():
        with pytest.raises((OSError, ValueError), match="model.safetensors"):
            load()
        assert not marker.exists(), name


# ---------------------------------------------------------------------------------------------------- remote code

FORBIDDEN_MODULES = {"socket", "subprocess", "urllib", "urllib3", "requests", "http", "httpx", "aiohttp", "ftplib",
                     "smtplib", "telnetlib", "multiprocessing", "pty", "ctypes", "webbrowser"}
FORBIDDEN_OS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv", "system", "popen", "fork",
                "forkpty", "kill", "remove", "unlink", "rename", "rmdir", "removedirs"} | {
    f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")} | {
    f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")} | {"posix_spawn", "posix_spawnp"}
FORBIDDEN_CALLS = {"eval", "exec", "__import__", "compile", "breakpoint"}


def static_problems(source: str) -> list[str]:
    """What a trust_remote_code file may not reference: network and process modules, the environment, dynamic code."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            problems += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"from {node.module} import ...")
            if node.module == "os":
                problems += [f"from os import {a.name}" for a in node.names if a.name in FORBIDDEN_OS]
            if node.module == "importlib" or node.module.startswith("importlib."):
                problems.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in FORBIDDEN_OS:
                problems.append(f"os.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS | {"environ", "getenv", "importlib"}:
            problems.append(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(word in node.value for word in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "http://", "https://")):
                problems.append(f"string {node.value[:40]!r}")
    return problems


def test_the_static_check_catches_what_it_looks_for():
    bad = ("import socket\nimport urllib.request\nfrom subprocess import run\nfrom os import environ\n"
           "import os\nx = os.environ['HF_TOKEN']\ny = os.getenv('A')\nos.system('ls')\neval('1')\n")
    found = static_problems(bad)
    for expected in ("import socket", "import urllib.request", "from subprocess import ...", "from os import environ",
                     "os.environ", "os.getenv", "os.system", "eval"):
        assert expected in found, (expected, found)
    assert static_problems("import os\nimport torch\npath = os.path.join('a', 'b')\n") == []


def test_the_remote_code_files_reference_no_network_process_or_environment(tiny_saved):
    assert sorted(p.name for p in tiny_saved.glob("*.py")) == sorted(CODE_FILES)  # nothing else is executed
    for name in CODE_FILES:
        assert static_problems((tiny_saved / name).read_text(encoding="utf-8")) == [], name


AUDIT = r"""
import json, os, sys, tempfile
from transformers import AutoModel, pipeline
path = PATH
model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
pipe = pipeline(model=path, trust_remote_code=True)
assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PREFIXES = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.kill",
            "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.link", "os.symlink",
            "shutil.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "pty.", "tempfile.")
events, active = [], [False]

def hook(event, args):
    if not active[0]:
        return
    if event == "open":
        file, mode, flags = (list(args) + [None, None])[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if writes:
            events.append(f"open({file!r}, {mode!r}, {flags!r})")
    elif event.startswith(PREFIXES):
        events.append(f"{event}{tuple(repr(a)[:80] for a in args)}")

sys.addaudithook(hook)
texts = ["The team won the final.", "", "   ", "😀 שלום", "word " * 1000]
active[0] = True
model.encode(texts)
model.encode(texts[0])
model.predict(texts, return_all_scores=True)
model.predict_proba(texts)
pipe(texts, return_all_scores=True)
pipe(texts[0])
active[0] = False
print("EVENTS=" + json.dumps(events))

# Control: the hook does see a write and a socket.
active[0] = True
with open(os.path.join(tempfile.gettempdir(), "audit-control-%d" % os.getpid()), "w") as handle:
    handle.write("x")
import socket
socket.socket().close()
active[0] = False
os.remove(os.path.join(tempfile.gettempdir(), "audit-control-%d" % os.getpid()))
print("CONTROL=" + json.dumps(events))
"""


def test_remote_code_inference_makes_no_network_file_or_process_calls(tiny_saved, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # speed on a busy machine; irrelevant to what is checked
    result = run_python(AUDIT.replace("PATH", repr(str(tiny_saved))))
    assert result.returncode == 0, result.stderr[-4000:]
    lines = {line.split("=", 1)[0]: json.loads(line.split("=", 1)[1]) for line in result.stdout.splitlines()
             if line.startswith(("EVENTS=", "CONTROL="))}
    assert lines["EVENTS"] == [], f"forbidden events during inference: {lines['EVENTS']}"
    control = lines["CONTROL"]
    assert any(event.startswith("open(") for event in control) and any(e.startswith("socket.") for e in control), control


# ---------------------------------------------------------------------------------------------------- hub token


def test_the_hub_token_is_never_printed_logged_or_written(tiny_encoder, tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"text": f"the team won match {i}", "topic": "sports" if i % 2 else "tech", "sentiment": "positive"
             if i % 3 else "negative"} for i in range(24)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sentence_multitask.cli", "train", "--encoder", tiny_encoder,
               "--train_files", str(data), "--tasks", "topic", "sentiment", "--output_dir", str(out),
               "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
               "--eval_strategy", "no", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
               "--dataloader_pin_memory", "false", "--log_level", "info", "--hub_token", TOKEN]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "README.md", "model.safetensors", "training_args.bin"} <= names, sorted(names)
    leaks = sorted(str(p.relative_to(out)) for p in files if TOKEN.encode() in p.read_bytes())
    assert not leaks, f"the Hub token is written into {leaks}"
