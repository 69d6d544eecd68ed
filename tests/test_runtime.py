"""The transformers-free runtime (sentence_multitask.runtime) gives what SentenceMultiTaskModel gives, on real
validation texts; the CLI uses it for predict and embed without importing transformers, and falls back to the full
model for anything it does not serve; the package imports without transformers and still installs its hooks."""

import json
import shutil

import numpy as np
import pytest
import torch

from sentence_multitask.runtime import SentenceMultiTaskRuntime, UnsupportedModelError

from .conftest import REFERENCE_TASKS, SENTENCES, SHARED_DATA, run_python

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "topic_validation.jsonl").exists(), reason="needs ../shared/data")

TOLERANCE = 1e-5


def validation_texts() -> list[str]:
    texts = []
    for task in ("topic", "sentiment"):
        with open(SHARED_DATA / f"{task}_validation.jsonl", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle if line.strip()]
    return texts


def long_texts(texts: list[str], count: int = 24) -> list[str]:
    """Real sentences joined into texts of several hundred tokens: longer than max_length, so they are truncated."""
    return [" ".join(texts[i * 25 : (i + 1) * 25]) for i in range(count)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_model):
    path = tmp_path_factory.mktemp("runtime-model")
    minilm_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runtime(saved):
    return SentenceMultiTaskRuntime.from_pretrained(saved)


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory, tiny_encoder):
    """A 2-layer random BERT with reference heads: quick to copy and edit for the refusal tests."""
    from sentence_multitask import SentenceMultiTaskModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("runtime-tiny")
    SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).save_pretrained(path)
    return path


def assert_same_predictions(got, expected):
    assert len(got) == len(expected)
    for row, reference in zip(got, expected):
        assert list(row) == list(reference)
        for task, entry in reference.items():
            assert row[task]["label"] == entry["label"], task
            assert row[task]["score"] == pytest.approx(entry["score"], abs=TOLERANCE)
            for label, score in entry.get("scores", {}).items():
                assert row[task]["scores"][label] == pytest.approx(score, abs=TOLERANCE)


# ---------------------------------------------------------------------------------------------------- parity


def parity_texts() -> list[str]:
    texts = validation_texts()
    return texts[::10] + long_texts(texts) + ["", "   ", "😀 שלום naïve café [MASK]"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_embeddings_and_predictions_as_the_model(minilm_model, runtime, precision, caplog):
    if precision == "bf16" and not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    texts = parity_texts()
    assert len(texts) > 300
    for batch_size in (32, 5):
        outputs, warnings = [], []
        for model in (runtime, minilm_model):
            with caplog.at_level("WARNING"):
                caplog.clear()
                outputs.append(model.encode(texts, batch_size=batch_size, precision=precision))
                warnings.append([r.getMessage() for r in caplog.records if "were truncated" in r.getMessage()])
        assert len(warnings[0]) == 1 and warnings[0] == warnings[1]  # one warning per call, the model's words
        got, expected = outputs
        assert got.shape == expected.shape == (len(texts), 384)
        assert np.abs(got - expected).max() <= TOLERANCE
    raw = [model.encode(texts[:40], normalize=False, convert_to="torch", precision=precision)
           for model in (runtime, minilm_model)]
    assert torch.allclose(*raw, atol=TOLERANCE, rtol=0)
    assert_same_predictions(runtime.predict(texts, return_all_scores=True, precision=precision),
                            minilm_model.predict(texts, return_all_scores=True, precision=precision))
    probabilities = runtime.predict_proba(texts[:50], precision=precision)
    for task, expected in minilm_model.predict_proba(texts[:50], precision=precision).items():
        assert torch.allclose(probabilities[task], expected, atol=TOLERANCE, rtol=0)


def test_the_api_shape_is_the_models(minilm_model, runtime):
    one = runtime.encode(SENTENCES[0])
    assert one.shape == (384,) and np.abs(one - minilm_model.encode(SENTENCES[0])).max() <= TOLERANCE
    single = runtime.predict(SENTENCES[0])
    assert set(single) == set(REFERENCE_TASKS)
    assert single["topic"]["label"] == minilm_model.predict(SENTENCES[0])["topic"]["label"]
    assert runtime.predict([]) == [] and runtime.encode([]).shape == (0, 384)
    short = [model.encode(SENTENCES, max_length=4) for model in (runtime, minilm_model)]
    assert np.abs(short[0] - short[1]).max() <= TOLERANCE
    for bad, error in ((None, TypeError), ([SENTENCES[0], 3], TypeError), (["\ud800"], ValueError)):
        with pytest.raises(error):
            runtime.predict(bad)
    with pytest.raises(ValueError, match="batch_size"):
        runtime.encode(SENTENCES, batch_size=0)
    with pytest.raises(ValueError, match="fp16"):
        runtime.predict(SENTENCES, precision="fp16")
    with pytest.raises(ValueError, match="convert_to"):
        runtime.encode(SENTENCES, convert_to="list")
    with pytest.raises(TypeError, match="CPU"):
        runtime.to(torch.float16)


@pytest.mark.parametrize("pooling", ["cls", "max"])
def test_other_pooling_modes_and_head_sizes(tmp_path, tiny_encoder, pooling):
    from sentence_multitask import SentenceMultiTaskModel

    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"a": ["x", "y"], "b": ["p", "q", "r"]},
                                                pooling=pooling, head_hidden_size=7, max_length=16).eval()
    model.save_pretrained(tmp_path)
    runtime = SentenceMultiTaskRuntime.from_pretrained(tmp_path)
    texts = validation_texts()[:60] + long_texts(validation_texts(), 4)
    assert np.abs(runtime.encode(texts) - model.encode(texts)).max() <= TOLERANCE
    assert_same_predictions(runtime.predict(texts, return_all_scores=True),
                            model.predict(texts, return_all_scores=True))


def test_cpu_batches_stay_under_the_token_cap(runtime):
    texts = parity_texts()
    batches = list(runtime._batches(texts, 32, 256, False))
    assert sorted(i for positions, _ in batches for i in positions) == list(range(len(texts)))
    assert all(inputs["input_ids"].numel() <= runtime.cpu_batch_tokens for _, inputs in batches)


# ---------------------------------------------------------------------------------------------------- tokenizer


def test_token_ids_equal_the_transformers_tokenizer_on_every_validation_text(saved, minilm_model, runtime):
    from transformers import AutoTokenizer

    texts = validation_texts() + long_texts(validation_texts())
    assert len(texts) > 3000
    for max_length in (None, 16, 512, 100_000):  # config.max_length, heavy truncation, none, capped at 512
        assert runtime._tokenize(texts, max_length) == [list(row) for row in minilm_model._tokenize(texts, max_length)]
    # The tokenizer the full model loads from the saved folder (as SentenceMultiTaskModel.tokenizer does), called.
    tokenizer = AutoTokenizer.from_pretrained(saved, config=minilm_model.config.encoder)
    assert runtime.tokenizer.encode(texts, 512) == tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    assert runtime.tokenizer.pad_token_id == tokenizer.pad_token_id
    assert runtime.tokenizer.model_max_length == tokenizer.model_max_length == 512


# ---------------------------------------------------------------------------------------------------- imports, CLI

WRAPPED_CLI = """
import json, sys
from sentence_multitask.cli import main
status = main({argv!r})
loaded = sorted(m for m in sys.modules if m == "transformers" or m.startswith("transformers."))
print("LOADED=" + json.dumps(loaded), file=sys.stderr)
sys.exit(status)
"""


def run_cli(*argv: str):
    """The CLI in a fresh process; returns (JSON rows printed, transformers modules imported by the end)."""
    result = run_python(WRAPPED_CLI.format(argv=list(argv)), block_package=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(next(line for line in result.stderr.splitlines() if line.startswith("LOADED="))[7:])
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()], loaded


def test_the_cli_and_the_package_import_without_transformers():
    result = run_python(
        "import sys, sentence_multitask.cli, sentence_multitask.runtime\n"
        "from sentence_multitask import REFERENCE_TASKS, local_default_encoder\n"
        "assert local_default_encoder() and REFERENCE_TASKS\n"
        "assert not any(m.startswith('transformers') for m in sys.modules), "
        "[m for m in sys.modules if m.startswith('transformers')]\n",
        block_package=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_cli_predict_and_embed_use_the_runtime(saved, minilm_model):
    texts = SENTENCES + [long_texts(validation_texts(), 1)[0], "😀 שלום"]
    rows, loaded = run_cli("predict", "--model", str(saved), "--all_scores", *texts)
    assert loaded == []  # neither transformers.modeling_utils nor anything else of transformers
    results = minilm_model.predict(texts, return_all_scores=True)
    expected = [{"text": text, **result} for text, result in zip(texts, results)]
    assert [row["text"] for row in rows] == texts
    assert_same_predictions([{k: v for k, v in row.items() if k != "text"} for row in rows],
                            [{k: v for k, v in row.items() if k != "text"} for row in expected])
    rows, loaded = run_cli("embed", "--model", str(saved), *texts)
    assert loaded == []
    embeddings = np.array([row["embedding"] for row in rows])
    assert np.abs(embeddings - minilm_model.encode(texts)).max() < 1e-6


def test_cli_falls_back_to_the_full_model_for_other_encoders(tmp_path, minilm_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from sentence_multitask import SentenceMultiTaskModel

    # A tiny DistilBERT with random weights (speed): not BERT-shaped, so the runtime refuses it.
    torch.manual_seed(0)
    encoder = tmp_path / "distilbert"
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(encoder)
    model = SentenceMultiTaskModel.from_encoder(str(encoder), tasks=REFERENCE_TASKS).eval()
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(UnsupportedModelError, match="distilbert"):
        SentenceMultiTaskRuntime.from_pretrained(tmp_path / "model")
    rows, loaded = run_cli("predict", "--model", str(tmp_path / "model"), *SENTENCES)
    assert "transformers.modeling_utils" in loaded
    assert_same_predictions([{k: v for k, v in row.items() if k != "text"} for row in rows], model.predict(SENTENCES))


def test_load_model_chooses_the_runtime_only_where_it_serves(saved):
    import argparse

    from sentence_multitask.cli import load_model
    from sentence_multitask.modeling_sentence_multitask import SentenceMultiTaskModel

    args = argparse.Namespace(device=None, threads=None, precision="bf16", backend="torch")
    fast = load_model(str(saved), args, runtime=True)
    assert isinstance(fast, SentenceMultiTaskRuntime) and fast.inference_precision == "bf16"
    assert isinstance(load_model(str(saved), args), SentenceMultiTaskModel)  # evaluate, export-onnx
    args.device = "cuda"  # the runtime runs on CPU only: the full model does what it does with --device cuda
    if torch.cuda.is_available():
        assert isinstance(load_model(str(saved), args, runtime=True), SentenceMultiTaskModel)
    else:
        with pytest.raises(SystemExit, match="--device cuda: .*CUDA"):  # checked before any model is loaded
            load_model(str(saved), args, runtime=True)


# ---------------------------------------------------------------------------------------------------- refusals


def edited_copy(source, target, config=None, tokenizer_config=None, drop=()):
    shutil.copytree(source, target)
    for name, edit in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if edit is not None:
            data = json.loads((target / name).read_text())
            edit(data)
            (target / name).write_text(json.dumps(data))
    for name in drop:
        (target / name).unlink()
    return target


# case: (edit of config.json, edit of tokenizer_config.json, files removed, what the refusal names)
REFUSALS = {
    "unknown config field": (lambda c: c.update(rope_scaling={"type": "linear"}), None, (), "rope_scaling"),
    "unknown encoder field": (lambda c: c["encoder"].update(output_hidden_states=True), None, (), "output_hidden"),
    "other activation": (lambda c: c["encoder"].update(hidden_act="gelu_new"), None, (), "hidden_act"),
    "relative positions": (lambda c: c["encoder"].update(position_embedding_type="relative_key"), None, (),
                           "position_embedding_type"),
    "decoder": (lambda c: c["encoder"].update(is_decoder=True), None, (), "is_decoder"),
    "bf16 weights declared": (lambda c: c.update(dtype="bfloat16"), None, (), "dtype"),
    "duplicate labels": (lambda c: c["tasks"].update(topic=["a", "a"]), None, (), "tasks"),
    "bad pooling": (lambda c: c.update(pooling="sum"), None, (), "pooling"),
    "label list edited": (lambda c: c["tasks"]["sentiment"].append("mixed"), None, (), "sentiment.out_proj"),
    "no tokenizer.json": (None, None, ("tokenizer.json",), "tokenizer.json"),
    "no weights": (None, None, ("model.safetensors",), "model.safetensors"),
    "cased tokenizer config": (None, lambda t: t.update(do_lower_case=False), (), "normalizer"),
    "left truncation": (None, lambda t: t.update(truncation_side="left"), (), "truncation_side"),
    "unknown tokenizer field": (None, lambda t: t.update(add_prefix_space=True), (), "add_prefix_space"),
    "other tokenizer class": (None, lambda t: t.update(tokenizer_class="RobertaTokenizer"), (), "tokenizer_class"),
}


def test_the_runtime_refuses_a_hub_id():
    with pytest.raises(UnsupportedModelError, match="not a local directory"):
        SentenceMultiTaskRuntime.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_runtime_refuses_what_it_does_not_handle(tiny_saved, tmp_path, case):
    config, tokenizer_config, drop, reason = REFUSALS[case]
    SentenceMultiTaskRuntime.from_pretrained(tiny_saved)  # control: the unedited model is served
    path = edited_copy(tiny_saved, tmp_path / "model", config, tokenizer_config, drop)
    with pytest.raises(UnsupportedModelError, match=reason):
        SentenceMultiTaskRuntime.from_pretrained(path)


def test_a_damaged_weights_file_is_left_to_the_full_model(tiny_saved, tmp_path):
    path = edited_copy(tiny_saved, tmp_path / "model")
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(UnsupportedModelError):
        SentenceMultiTaskRuntime.from_pretrained(path)


def test_the_runtime_refuses_every_invalid_config_the_config_class_refuses(tiny_saved, tmp_path):
    from sentence_multitask import SentenceMultiTaskConfig

    invalid = {"dotted task": lambda c: c["tasks"].update({"a.b": ["x", "y"]}),
               "one label": lambda c: c["tasks"].update(topic=["only"]),
               "empty label": lambda c: c["tasks"].update(topic=["x", " "]),
               "max_length 1": lambda c: c.update(max_length=1),
               "head_dropout 1": lambda c: c.update(head_dropout=1.0),
               "unknown task weight": lambda c: c.update(task_weights={"nope": 1.0}),
               "negative task weight": lambda c: c.update(task_weights={"topic": -1.0})}
    for number, (case, edit) in enumerate(invalid.items()):
        path = edited_copy(tiny_saved, tmp_path / str(number), config=edit)
        with pytest.raises((ValueError, TypeError)):
            SentenceMultiTaskConfig.from_pretrained(path)
        with pytest.raises(UnsupportedModelError):
            SentenceMultiTaskRuntime.from_pretrained(path)


def test_pooling_modes_are_the_configs():
    from sentence_multitask import runtime
    from sentence_multitask.configuration_sentence_multitask import POOLING_MODES

    assert runtime.POOLING_MODES == POOLING_MODES


# ---------------------------------------------------------------------------------------------------- code, hooks


def test_saved_models_ship_the_inference_file_and_it_passes_the_security_scan(saved):
    from .test_security import static_problems

    code_files = sorted(path.name for path in saved.glob("*.py"))
    assert code_files == ["configuration_sentence_multitask.py", "inference_sentence_multitask.py",
                          "modeling_sentence_multitask.py"]
    for name in code_files:
        assert static_problems((saved / name).read_text(encoding="utf-8")) == [], name


def test_hooks_are_installed_when_the_modeling_module_is_imported_directly(tiny_encoder, tmp_path):
    code = f"""
import os
from sentence_multitask.modeling_sentence_multitask import SentenceMultiTaskModel
import sentence_multitask
assert SentenceMultiTaskModel.default_encoder == sentence_multitask.local_default_encoder()
model = SentenceMultiTaskModel.from_encoder({tiny_encoder!r}, tasks={{"t": ["a", "b"]}})
model.save_pretrained({str(tmp_path / "m")!r})
# Loaded as remote code from the model folder, the class is another one and gets no hooks.
from transformers import AutoModel
remote = type(AutoModel.from_pretrained({str(tmp_path / "m")!r}, trust_remote_code=True))
assert remote is not SentenceMultiTaskModel and remote.card_renderer is None, remote
"""
    result = run_python(code, block_package=False)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "m" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "trust_remote_code=True" in card
