"""`--push_to_hub` during and after training, against the Hub API faked offline (`fake_hub`): what is uploaded
(code, weights, tokenizer, card; never the token), to which repository and revision, and when (--hub_strategy).
The tiny random encoder, `training.main` in-process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

try:
    from . import training_helpers as shared
    from .training_helpers import tiny_args
except ImportError:  # tests/ collected as a plain directory
    import training_helpers as shared
    from training_helpers import tiny_args
from sentence_multitask import training
from sentence_multitask.trainer import MultiTaskTrainer

# The shared fixtures of training_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
data_dir = shared.data_dir


# ---------------------------------------------------------------------------------------------------- 1. push


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub API faked offline: every commit (create_commit, and upload_folder as the Trainer calls it) is recorded
    with its files, token, revision and message; create_repo and create_branch calls are recorded too."""
    import fnmatch
    from concurrent.futures import Future

    import huggingface_hub.repocard
    from huggingface_hub import HfApi, RepoUrl
    from huggingface_hub.errors import EntryNotFoundError

    hub = {"commits": [], "repos": [], "branches": []}

    def create_repo(self, repo_id, *args, **kwargs):
        hub["repos"].append((repo_id, kwargs.get("token"), kwargs.get("private")))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *args, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            if isinstance(source, (str, os.PathLike)):
                files[operation.path_in_repo] = Path(source).read_bytes()
            elif isinstance(source, bytes):
                files[operation.path_in_repo] = source
            else:
                files[operation.path_in_repo] = source.read()
        hub["commits"].append({"repo_id": repo_id, "files": files, "token": kwargs.get("token", self.token),
                               "revision": kwargs.get("revision"), "message": kwargs.get("commit_message")})

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False,
                      **kwargs):
        files = {}
        for path in sorted(Path(folder_path).rglob("*")):
            relative = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(relative, p) for p in ignore_patterns or []):
                files[f"{path_in_repo}/{relative}" if path_in_repo else relative] = path.read_bytes()
        hub["commits"].append({"repo_id": repo_id, "files": files, "token": kwargs.get("token"),
                               "revision": kwargs.get("revision"), "message": kwargs.get("commit_message")})
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future

    def create_branch(self, repo_id, *args, branch=None, **kwargs):
        hub["branches"].append((repo_id, branch))

    def no_remote_card(*args, **kwargs):  # a new repository: nothing to download yet
        raise EntryNotFoundError("README.md not found in the (fake) new repository")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", no_remote_card)
    return hub


def test_push_to_hub_uploads_code_weights_tokenizer_and_card_without_the_token(tmp_path, data_dir, tiny_encoder,
                                                                                fake_hub):
    token = "hf_TestTokenThatMustNotLeak0123456789"
    repo_id = "someone/sentence-multitask-test"
    commits, repos = fake_hub["commits"], fake_hub["repos"]

    out = tmp_path / "pushed"
    metrics = training.main(tiny_args(
        tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
        "--validation_files", str(data_dir / "both_val.jsonl"), "--max_steps", "2",
        "--push_to_hub", "--push_to_hub_private", "true", "--hub_model_id", repo_id, "--hub_token", token,
    ))
    assert repos and all(name == repo_id for name, _, _ in repos)
    # create_repo(exist_ok=True) never changes an existing repo's visibility: the first call must already be private.
    assert all(private is True for _, _, private in repos), repos
    assert len(commits) == 1, f"expected one commit with everything, got {len(commits)}"
    commit = commits[0]
    files = commit["files"]
    assert commit["repo_id"] == repo_id and commit["token"] == token
    assert commit["revision"] is None and not fake_hub["branches"]  # the default branch

    expected = {"config.json", "configuration_sentence_multitask.py", "modeling_sentence_multitask.py",
                "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"}
    assert expected <= files.keys(), f"missing {expected - files.keys()}"

    config = json.loads(files["config.json"])
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sentence_multitask.SentenceMultiTaskConfig",
        "AutoModel": "modeling_sentence_multitask.SentenceMultiTaskModel",
    }
    assert "class SentenceMultiTaskModel" in files["modeling_sentence_multitask.py"].decode()
    assert "class SentenceMultiTaskConfig" in files["configuration_sentence_multitask.py"].decode()
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()

    for name, content in files.items():
        assert token.encode() not in content, f"the hub token leaked into {name}"

    # The uploaded README.md is this package's card with the run's metrics, not a generic placeholder card.
    card = files["README.md"].decode("utf-8")
    assert "sentence-multitask" in card and repo_id in card, card[:1500]
    assert f"| topic | {metrics['eval_topic_accuracy']:.4f} |" in card, card[:1500]
    assert card == (out / "README.md").read_text(encoding="utf-8")


CODE_FILES = {"configuration_sentence_multitask.py", "modeling_sentence_multitask.py",
              "inference_sentence_multitask.py", "batching_sentence_multitask.py"}
MODEL_FILES = CODE_FILES | {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"}


class ConfigJsonAtEachSave:
    """A callback that records, after each checkpoint (and its push), whether --output_dir holds a config.json."""

    def __init__(self, output_dir):
        from transformers import TrainerCallback

        seen = self.seen = []

        class Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                seen.append((state.global_step, (Path(output_dir) / "config.json").exists()))

        self.callback = Callback()


@pytest.mark.parametrize("strategy", [None, "every_save", "checkpoint"])
def test_push_during_training_uploads_complete_models_and_keeps_output_dir_clean(strategy, tmp_path, data_dir,
                                                                                 tiny_encoder, fake_hub, monkeypatch):
    """Default (end): one commit, the final model. every_save / checkpoint: each checkpoint's push is a model that
    loads (code files, tokenizer, card), never copied into --output_dir while training runs."""
    out = tmp_path / "pushed"
    recorder = ConfigJsonAtEachSave(out)

    class RecordingTrainer(MultiTaskTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(recorder.callback)

    monkeypatch.setattr(training, "MultiTaskTrainer", RecordingTrainer)
    training.main(tiny_args(
        tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment",
        "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2", "--push_to_hub",
        "--hub_model_id", "someone/pushed", *(["--hub_strategy", strategy] if strategy else []),
        *(["--hub_revision", "dev"] if strategy == "checkpoint" else []),
    ))
    commits = fake_hub["commits"]
    if strategy == "checkpoint":  # every commit goes to --hub_revision, a branch created first
        assert {commit["revision"] for commit in commits} == {"dev"}
        assert set(fake_hub["branches"]) == {("someone/pushed", "dev")}
    assert recorder.seen == [(1, False), (2, False)]  # no config.json in --output_dir before the final save
    assert MODEL_FILES <= commits[-1]["files"].keys()
    assert commits[-1]["files"]["README.md"] == (out / "README.md").read_bytes()
    if strategy is None:
        assert len(commits) == 1, [sorted(commit["files"]) for commit in commits]
        return
    during = commits[:-1]
    assert [commit["message"] for commit in during if "checkpoint" not in commit["message"]] == [
        "Training in progress, step 1", "Training in progress, step 2"]
    for commit in during:
        root = {name for name in commit["files"] if "/" not in name}
        if "/" in next(iter(commit["files"])):  # --hub_strategy checkpoint: the resumable checkpoint in a subfolder
            assert {"last-checkpoint/optimizer.pt", "last-checkpoint/trainer_state.json"} <= commit["files"].keys()
            continue
        assert MODEL_FILES <= root, f"{commit['message']}: missing {MODEL_FILES - root}"
        assert not root & {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin"}, sorted(root)
        assert "Intermediate checkpoint" in commit["files"]["README.md"].decode()
    if strategy == "checkpoint":
        assert sum("last-checkpoint/model.safetensors" in commit["files"] for commit in during) == 2


def test_hub_revision_is_where_the_final_model_is_pushed(tmp_path, data_dir, tiny_encoder, fake_hub):
    training.main(tiny_args(
        tiny_encoder, tmp_path / "pushed", "--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic",
        "sentiment", "--max_steps", "1", "--push_to_hub", "--hub_model_id", "someone/pushed", "--hub_revision", "dev",
    ))
    assert [commit["revision"] for commit in fake_hub["commits"]] == ["dev"]
    assert set(fake_hub["branches"]) == {("someone/pushed", "dev")}
