"""A saved model works with only transformers and torch: a fresh process that cannot import sentence_multitask.
The real all-MiniLM-L6-v2 weights, saved once; one fresh process runs the round trip, the pipeline and a second save,
and each test checks its part."""

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


FRESH_PROCESS = """
import json, os, traceback
import torch
from transformers import AutoConfig, AutoModel, pipeline

path, again, texts = PATH, AGAIN, TEXTS
results = {}


def part(name, run):  # each check's part runs on its own: one failing leaves the others' results
    try:
        results[name] = run()
    except Exception:
        results[name] = {"error": traceback.format_exc()}


def round_trip():
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return {"model_type": config.model_type, "tasks": config.tasks,
            "logits": {k: v.tolist() for k, v in out.logits.items()},
            "embeddings": model.encode(texts).tolist(), "predict": model.predict(texts, return_all_scores=True)}


def piped():
    classifier = pipeline(model=path, trust_remote_code=True)
    return {"many": classifier(texts, return_all_scores=True), "one": classifier("Why is the sky blue?"),
            "batched": classifier(texts, return_all_scores=True, batch_size=2)}


def saved_again():
    AutoModel.from_pretrained(path, trust_remote_code=True).save_pretrained(again)
    return sorted(os.listdir(again))


part("round_trip", round_trip)
part("pipeline", piped)
part("saved_again", saved_again)
print("RESULTS=" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def fresh_process(saved, tmp_path_factory):
    """What one fresh process that cannot import the package gets from the saved model, for the three tests below:
    the round trip (AutoConfig, AutoModel, forward, encode, predict), the pipeline, and a save_pretrained of the
    loaded model (into the returned folder)."""
    path, expected = saved
    again = tmp_path_factory.mktemp("saved-again") / "again"
    code = (FRESH_PROCESS.replace("PATH", repr(str(path))).replace("AGAIN", repr(str(again)))
            .replace("TEXTS", repr(expected["texts"])))
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULTS="))
    return json.loads(line.removeprefix("RESULTS=")), again


def fresh_result(fresh_process, name):
    result = fresh_process[0][name]
    assert not (isinstance(result, dict) and "error" in result), result.get("error") if isinstance(result, dict) else None
    return result


def test_round_trip_in_fresh_process_without_the_package(saved, fresh_process):
    _, expected = saved
    got = fresh_result(fresh_process, "round_trip")
    assert got["model_type"] == "sentence-multitask"
    for task, logits in expected["logits"].items():
        assert np.array_equal(np.array(got["logits"][task]), np.array(logits)), task
    assert np.array_equal(np.array(got["embeddings"]), np.array(expected["embeddings"]))
    assert got["predict"] == expected["predict"]


def test_pipeline_in_fresh_process_without_the_package(saved, fresh_process):
    _, expected = saved
    got = fresh_result(fresh_process, "pipeline")
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


def test_saving_again_from_remote_code_keeps_the_code_files(saved, fresh_process):
    path, _ = saved
    again = fresh_process[1]
    assert fresh_result(fresh_process, "saved_again") == sorted(p.name for p in again.iterdir())
    names = {p.name for p in again.iterdir()}
    assert {"configuration_sentence_multitask.py", "modeling_sentence_multitask.py", "model.safetensors",
            "tokenizer.json", "config.json"} <= names
    config = json.loads((again / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_sentence_multitask.SentenceMultiTaskModel"
    assert (again / "README.md").read_text() == (path / "README.md").read_text()  # the card, too


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
