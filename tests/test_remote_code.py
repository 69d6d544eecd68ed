"""A saved model works with only transformers and torch: a fresh process that cannot import sentence_multitask."""

import json

import numpy as np
import pytest
import torch

from .conftest import SENTENCES, run_python


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_model):
    path = tmp_path_factory.mktemp("saved-model")
    minilm_model.save_pretrained(path)
    texts = SENTENCES + ["A much longer sentence about the football final and the markets " * 5]
    inputs = minilm_model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = minilm_model(**inputs)
    expected = {
        "texts": texts,
        "logits": {task: values.tolist() for task, values in output.logits.items()},
        "embeddings": minilm_model.encode(texts).tolist(),
        "predict": minilm_model.predict(texts, return_all_scores=True),
    }
    return path, expected


def test_blocked_process_cannot_import_the_package():
    result = run_python("import sentence_multitask")
    assert result.returncode != 0 and "blocked" in result.stderr


def test_round_trip_in_fresh_process_without_the_package(saved):
    path, expected = saved
    code = f"""
import json, torch
from transformers import AutoConfig, AutoModel
texts = {expected['texts']!r}
config = AutoConfig.from_pretrained({str(path)!r}, trust_remote_code=True)
model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = model.tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    out = model(**inputs)
print(json.dumps({{"model_type": config.model_type, "tasks": config.tasks,
    "logits": {{k: v.tolist() for k, v in out.logits.items()}},
    "embeddings": model.encode(texts).tolist(), "predict": model.predict(texts, return_all_scores=True)}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["model_type"] == "sentence-multitask"
    for task, logits in expected["logits"].items():
        assert np.array_equal(np.array(got["logits"][task]), np.array(logits)), task
    assert np.array_equal(np.array(got["embeddings"]), np.array(expected["embeddings"]))
    assert got["predict"] == expected["predict"]


def test_pipeline_in_fresh_process_without_the_package(saved):
    path, expected = saved
    code = f"""
import json
from transformers import pipeline
classifier = pipeline(model={str(path)!r}, trust_remote_code=True)
texts = {expected['texts']!r}
print(json.dumps({{"many": classifier(texts, return_all_scores=True), "one": classifier("Why is the sky blue?"),
                  "batched": classifier(texts, return_all_scores=True, batch_size=2)}}))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(got["many"]) == len(expected["texts"])
    for piped, predicted in zip(got["many"], expected["predict"]):
        assert set(piped) == set(predicted)
        for task in predicted:
            assert piped[task]["label"] == predicted[task]["label"]
            assert piped[task]["score"] == pytest.approx(predicted[task]["score"], abs=1e-5)
            assert sum(piped[task]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(got["one"]) == set(expected["predict"][0])
    # Batches of texts of different lengths (padded) give what one text at a time gives.
    assert len(got["batched"]) == len(got["many"])
    for batched, single in zip(got["batched"], got["many"]):
        for task, entry in single.items():
            assert batched[task]["label"] == entry["label"]
            assert batched[task]["scores"] == pytest.approx(entry["scores"], abs=1e-5)


def test_saving_again_from_remote_code_keeps_the_code_files(saved, tmp_path):
    path, _ = saved
    code = f"""
import os
from transformers import AutoModel
model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
model.save_pretrained({str(tmp_path / 'again')!r})
print(sorted(os.listdir({str(tmp_path / 'again')!r})))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    files = set((tmp_path / "again").iterdir())
    names = {p.name for p in files}
    assert {"configuration_sentence_multitask.py", "modeling_sentence_multitask.py", "model.safetensors",
            "tokenizer.json", "config.json"} <= names
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_sentence_multitask.SentenceMultiTaskModel"
    assert (tmp_path / "again" / "README.md").read_text() == (path / "README.md").read_text()  # the card, too


def test_too_old_transformers_gets_a_message_naming_the_version(saved):
    """SubConfigSpec first shipped in transformers 5.20; an older one (faked by deleting it) must get a clear error."""
    path, _ = saved
    code = f"""
import transformers.configuration_utils
del transformers.configuration_utils.SubConfigSpec
from transformers import AutoConfig
AutoConfig.from_pretrained({str(path)!r}, trust_remote_code=True)
"""
    result = run_python(code)
    assert result.returncode != 0
    assert "need transformers>=5.20" in result.stderr and "pip install -U 'transformers>=5.20,<6'" in result.stderr
