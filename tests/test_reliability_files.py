"""Reliability of what lies on disk: broken model folders (edited config.json, damaged weights or tokenizer files,
missing files) fail at load time naming the file; saving never overwrites a model unasked and an interrupted save
never leaves a folder that loads as a broken model; bad data files are named with their line.

The tiny random encoder of `tiny_encoder`, offline; the shared fixtures are in reliability_helpers.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

try:
    from . import reliability_helpers as shared
    from .reliability_helpers import TASKS, same_prediction, train_args
except ImportError:  # tests/ collected as a plain directory
    import reliability_helpers as shared
    from reliability_helpers import TASKS, same_prediction, train_args
from sentence_multitask import SentenceMultiTaskModel, checkpoints, training
from sentence_multitask.arguments import DataArguments
from sentence_multitask.data import DataError, load_source, parse_specs, prepare_data

# The shared fixtures of reliability_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
one_torch_thread = shared.one_torch_thread  # autouse: one torch thread for every test here
tiny_model = shared.tiny_model
tiny_saved = shared.tiny_saved
train_file = shared.train_file
cli = shared.cli


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


# ---------------------------------------------------------------------------------------------------- 1. config


def _edit_config(change):
    def edit(path: Path):
        config = json.loads((path / "config.json").read_text())
        change(config)
        (path / "config.json").write_text(json.dumps(config))

    return edit


def _truncate(fraction):
    def edit(path: Path):
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: int(len(data) * fraction)])

    return edit


BROKEN_DIRS = {
    "label added": (_edit_config(lambda c: c["tasks"]["topic"].append("finance")),
                    r"model\.safetensors does not match .*config\.json"),
    "label removed": (_edit_config(lambda c: c["tasks"]["topic"].pop()),
                      r"model\.safetensors does not match .*config\.json"),
    "task added": (_edit_config(lambda c: c["tasks"].update(spam=["no", "yes"])),
                   r"config\.json.*missing weights.*heads\.spam"),
    "task removed": (_edit_config(lambda c: c["tasks"].pop("sentiment")), r"config\.json.*heads\.sentiment"),
    "no model.safetensors": (lambda p: (p / "model.safetensors").unlink(), r"model\.safetensors"),
    "model.safetensors cut in half": (_truncate(0.5), r"model\.safetensors is damaged or truncated"),
    "model.safetensors cut to 5 bytes": (
        lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5]),
        r"model\.safetensors is damaged or truncated"),
    "model.safetensors empty": (_truncate(0), r"model\.safetensors is damaged or truncated"),
    "wrong model_type": (_edit_config(lambda c: c.update(model_type="bert")), r"config\.json has model_type 'bert'"),
    "no auto_map": (_edit_config(lambda c: c.pop("auto_map")), r"sentence-multitask"),
    "no config.json": (lambda p: (p / "config.json").unlink(), r"config\.json"),
    "config.json not JSON": (lambda p: (p / "config.json").write_text("{not json"),
                             r"config\.json.* not (a )?valid JSON"),
}
# Damaged tokenizer files are found when the tokenizer loads (on first use): named, not a parser's bare position.
BROKEN_TOKENIZERS = {name: (lambda p, name=name: (p / name).write_text((p / name).read_text()[:28]),
                            rf"{name.replace('.', '[.]')} is not valid JSON .*damaged")
                     for name in ("tokenizer.json", "tokenizer_config.json")}


def test_a_hub_id_offline_names_offline_mode_not_a_broken_save(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"nobody/no-such-model: not a local folder, and the Hub could not be reached or "
                                      r"offline mode is on") as error:
        SentenceMultiTaskModel.from_pretrained("nobody/no-such-model")
    assert "save_pretrained wrote" in str(error.value) and "save it again" not in str(error.value)


def broken_copy(saved: Path, folder: Path, break_it) -> Path:
    """A copy of the saved model in `folder`, broken by `break_it`."""
    import shutil

    path = folder / "model"
    shutil.copytree(saved, path)
    break_it(path)
    return path


@pytest.mark.parametrize("case", list(BROKEN_TOKENIZERS))
def test_a_damaged_tokenizer_file_is_named(case, tiny_saved, tmp_path):
    break_it, message = BROKEN_TOKENIZERS[case]
    path = broken_copy(tiny_saved, tmp_path, break_it)
    with pytest.raises(OSError, match=message):
        SentenceMultiTaskModel.from_pretrained(str(path)).predict("a text")


@pytest.mark.parametrize("case", list(BROKEN_DIRS))
def test_a_broken_model_directory_fails_at_load_time(case, tiny_saved, tmp_path):
    from transformers import AutoModel

    break_it, message = BROKEN_DIRS[case]
    path = broken_copy(tiny_saved, tmp_path, break_it)
    loaders = {"AutoModel": lambda: AutoModel.from_pretrained(str(path), trust_remote_code=True),
               "SentenceMultiTaskModel": lambda: SentenceMultiTaskModel.from_pretrained(str(path))}
    if case == "no auto_map":
        del loaders["SentenceMultiTaskModel"]  # the package's own class needs no auto_map (and loads the model)
    for name, load in loaders.items():
        with pytest.raises((OSError, ValueError), match=message):
            model = load()
            pytest.fail(f"{name} returned a {type(model).__name__} from a directory with {case}")


def test_a_model_folder_without_tokenizer_files_is_refused_by_name(cli, tiny_model, tiny_saved, tiny_encoder, tmp_path):
    """Without its tokenizer files transformers builds a tokenizer of special tokens only: every word became [UNK]
    and predict answered wrongly without an error. A tokenizer given from elsewhere still works."""
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path / "model"
    shutil.copytree(tiny_saved, path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    text = "The striker scored twice in the final."
    message = (r"has no tokenizer vocabulary \(missing tokenizer\.json, tokenizer_config\.json\)"
               r".*tokenizer\.save_pretrained")
    model = SentenceMultiTaskModel.from_pretrained(str(path))
    with pytest.raises(OSError, match=message):
        model.predict(text)
    result = cli("predict", "--model", str(path), text)
    assert result.returncode != 0 and result.stdout == "", result.stdout
    assert "missing tokenizer.json, tokenizer_config.json" in result.stderr, result.stderr[-3000:]

    model.tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    assert same_prediction(model.predict(text), tiny_model.predict(text))


# ---------------------------------------------------------------------------------------------------- 2. saving


def snapshot(directory) -> dict[str, bytes]:
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_training_into_a_saved_model_is_refused_unless_overwrite_model(tiny_model, tiny_encoder, train_file, tmp_path):
    out = tmp_path / "out"
    tiny_model.save_pretrained(out)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match="--overwrite_model"):
        training.main(train_args(tiny_encoder, train_file, out, "--max_steps", "2"))
    assert snapshot(out) == before  # not a byte changed, nothing added

    training.main(train_args(tiny_encoder, train_file, out, "--max_steps", "2", "--overwrite_model"))
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert set(SentenceMultiTaskModel.from_pretrained(str(out)).config.tasks) == set(TASKS)


class _OsCrashingReplace:
    """Stands in for `os` inside sentence_multitask.checkpoints: os.replace fails after `allowed` moves."""

    def __init__(self, allowed: int):
        self.allowed, self.moved = allowed, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, source, destination):
        if self.moved >= self.allowed:
            raise OSError(f"simulated crash after moving {self.moved} file(s)")
        self.moved += 1
        os.replace(source, destination)


def _assert_not_a_broken_model(out: Path, old: dict[str, bytes] | None, scenario: str) -> None:
    """Either no config.json (nothing loads) or the old model, complete and byte-identical."""
    if (out / "config.json").exists():
        assert old is not None, f"{scenario}: a fresh directory got a config.json from an interrupted save"
        now = snapshot(out)
        changed = sorted(name for name in old if now.get(name) != old[name])
        assert not changed, f"{scenario}: config.json is there but {changed} are not the old model's"
        SentenceMultiTaskModel.from_pretrained(str(out))
    else:
        with pytest.raises((OSError, ValueError)):
            SentenceMultiTaskModel.from_pretrained(str(out))


def test_an_interrupted_save_never_leaves_a_directory_that_loads_as_a_broken_model(tiny_model, tiny_encoder,
                                                                                 tmp_path, monkeypatch):
    import shutil

    torch.manual_seed(5)
    new_model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS)
    tiny_model.save_pretrained(tmp_path / "count")
    files = len(os.listdir(tmp_path / "count"))  # the number of os.replace calls of a complete save
    assert files >= 5
    def target(name: str, has_old: bool) -> tuple[Path, dict[str, bytes] | None]:
        """A directory to save into, holding a complete saved model when `has_old`, and that model's snapshot."""
        out = tmp_path / name
        if not has_old:
            return out, None
        tiny_model.save_pretrained(out)
        return out, snapshot(out)

    scenarios = 0
    for has_old in (False, True):
        for allowed in range(files):
            out, old = target(f"out-{has_old}-{allowed}", has_old)
            with monkeypatch.context() as patch:
                patch.setattr(checkpoints, "os", _OsCrashingReplace(allowed))
                with pytest.raises(OSError, match="simulated crash"):
                    checkpoints.save_model_atomically(new_model, str(out))
            _assert_not_a_broken_model(out, old, f"old model {has_old}, crash after {allowed} moves")
            scenarios += 1
            shutil.rmtree(out)

    # save_pretrained itself stops part-way: while writing the weights, and while writing the card (last).
    import transformers.modeling_utils as modeling_utils

    from sentence_multitask import card_sentence_multitask

    real_save_file = modeling_utils.safe_save_file

    def torn_save_file(tensors, filename, *args, **kwargs):
        real_save_file(tensors, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 3])
        raise OSError("simulated crash while writing the weights")

    def broken_card(model):
        raise OSError("simulated crash while writing the card")

    for has_old in (False, True):
        for where, patch_args in (("weights", (modeling_utils, "safe_save_file", torn_save_file)),
                                  ("card", (card_sentence_multitask, "render_model_card", broken_card))):
            out, old = target(f"part-{has_old}-{where}", has_old)
            with monkeypatch.context() as patch:
                patch.setattr(*patch_args)
                with pytest.raises(OSError, match="simulated crash"):
                    checkpoints.save_model_atomically(new_model, str(out))
            _assert_not_a_broken_model(out, old, f"old model {has_old}, crash in {where}")
            if has_old:  # nothing was moved yet: every file of the old model is as it was
                now = snapshot(out)
                assert {name: now.get(name) for name in old} == old, f"crash in {where}: the old model was touched"
            scenarios += 1
    assert scenarios == 2 * files + 4


# ---------------------------------------------------------------------------------------------------- 3. data files


def _write(path: Path, lines: list[str] | bytes) -> str:
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD = ['{"text": "a", "topic": "sports"}', '{"text": "b", "topic": "tech"}', '{"text": "c", "topic": "sports"}']
BAD_FILES = {
    "malformed JSON": (GOOD[:2] + ['{"text": "c", "topic": "sports"'] + GOOD[2:], 3),
    "trailing comma": (GOOD + ['{"text": "d", "topic": "tech",}'], 4),
    "single quotes": (GOOD[:1] + ["{'text': 'b', 'topic': 'tech'}"], 2),
    "array instead of object": (GOOD[:1] + ['["b", "tech"]'], 2),
    "latin-1 bytes": ("\n".join(GOOD[:1] + ['{"text": "café", "topic": "tech"}']).encode("latin-1"), 2),
    "UTF-16 file": ("\n".join(GOOD).encode("utf-16"), 1),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_json_lines_file_is_named_with_its_line(case, tmp_path):
    lines, line = BAD_FILES[case]
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=rf"bad\.jsonl, line {line}\b"):
        load_source(parse_specs([path])[0], "train")


MIXED = {"int": "1", "bool": "true", "float": "1.5", "list": '["tech"]', "dict": '{"name": "tech"}'}


@pytest.mark.parametrize("labels_given", [False, True], ids=["labels-inferred", "labels-given"])
@pytest.mark.parametrize("kind", list(MIXED))
def test_a_label_column_of_mixed_types_is_named_with_file_and_line(kind, labels_given, tmp_path, tiny_tokenizer):
    """Strings in lines 1-3, then a number/bool/list/dict in line 4: a DataError names the file and line 4."""
    path = _write(tmp_path / "mixed.jsonl", GOOD + ['{"text": "d", "topic": %s}' % MIXED[kind]])
    arguments = DataArguments(train_files=[path], tasks=["topic"],
                              labels=["topic=sports,health,tech"] if labels_given else None)
    with pytest.raises(DataError, match=r"mixed\.jsonl.*line 4\b"):
        prepare_data(arguments, tiny_tokenizer)
