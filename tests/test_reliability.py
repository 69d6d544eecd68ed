"""Reliability: bad inputs to inference, random Unicode (hypothesis), broken model directories, refused and
interrupted saves, bad data files, and faults (determinism, SIGKILL + resume, threads).

Everything runs offline on the tiny random encoder of `tiny_encoder` (heads re-initialised with a larger spread so
that mixed-up rows would show), except one Unicode test on the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from sentence_multitask import SentenceMultiTaskModel, checkpoints, training
from sentence_multitask.arguments import DataArguments
from sentence_multitask.data import DataError, load_source, parse_specs, prepare_data

TASKS = {"topic": ["sports", "health", "tech"], "sentiment": ["negative", "positive"]}
ATOL = 1e-5
MAX_TOKENS = 256  # config.max_length of the tiny model (its tokenizer allows 512)
LONG = "word " * 1000  # 1000 tokens + [CLS] [SEP]

# Texts that are not str, each with the position an error must name.
BAD_ITEMS = [
    (["fine", None], 1, "NoneType"),
    (["fine", "fine", b"bytes"], 2, "bytes"),
    (["fine", bytearray(b"x")], 1, "bytearray"),
    (["fine", "fine", 3], 2, "int"),
    (["fine", 2.5], 1, "float"),
    ([True, "fine"], 0, "bool"),
    ([["nested", "list"]], 0, "list"),
    (["fine", ("nested", "tuple")], 1, "tuple"),
    (["fine", {"text": "a dict"}], 1, "dict"),
]
# Whole arguments that are not a text or a list of texts.
BAD_ARGUMENTS = [None, b"bytes", 5, 3.5, {"text": "a"}, {"a", "b"}]

UNICODE_TEXTS = [
    "😀 👍🏽 👨‍👩‍👧‍👦 🇺🇳 great day",  # emoji, skin tone, ZWJ family, flag
    "שלום עולם, מה שלומך?",  # Hebrew (right-to-left)
    "مرحبا بالعالم، كيف حالك؟",  # Arabic (right-to-left)
    "abc \u202eevil\u202c def \u200f",  # bidi override marks
    "e\u0301\u0302\u0303 Z̴̡̛͓̈́a̷̰͝l̸͎̈g̶̣̈́o̵̱̾",  # stacked combining marks
    "\x00\x01\x07\x1b[31mred\x1b[0m\x7f",  # control characters, NUL, ANSI escape
    "\ufeffbyte order mark \u200b\u200c\u200d zero widths",
    "你好世界 こんにちは 안녕하세요 สวัสดี नमस्ते",  # CJK, Thai, Devanagari
    "𝕳𝖊𝖑𝖑𝖔 𝒘𝒐𝒓𝒍𝒅 \U0010ffff \uffff \ue000",  # math letters, noncharacters, private use
    "ﬁ ﬀ Å Å Ω Ω ½ ①",  # compatibility forms (NFKC-different)
    "a\u2028b\u2029c\x85d",  # Unicode line and paragraph separators
    ("żółć 😀 שלום e\u0301 " * 8000)[:100_000],  # a 100 kB string
]
WHITESPACE = ["", " ", "   ", "\t", "\n", "\r\n", " \t\n\r\x0b\x0c ", "\u00a0", "\u3000", "\u2003\u2009",
              "\u2028\u2029", "\x1c\x1d\x1e\x1f", "\x85", "\u1680\u202f\u205f"]


# ---------------------------------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_saved):
    from transformers import pipeline

    return pipeline(model=str(tiny_saved), trust_remote_code=True)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


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


@contextlib.contextmanager
def captured_warnings(*modules: str):
    """Every WARNING-or-higher record of the named loggers (and the root logger), each counted once."""
    records, seen = [], set()

    class Collect(logging.Handler):
        def emit(self, record):
            if id(record) not in seen:
                seen.add(id(record))
                records.append(record)

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(), logging.getLogger("transformers")] + [logging.getLogger(m) for m in modules]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def truncation_warnings(records) -> list[str]:
    return [r.getMessage() for r in records if "truncat" in r.getMessage().lower()]


def check_probabilities(proba: dict[str, torch.Tensor], n: int) -> None:
    assert set(proba) == set(TASKS)
    for task, values in proba.items():
        assert values.shape == (n, len(TASKS[task]))
        assert torch.isfinite(values).all()
        assert ((values >= 0) & (values <= 1)).all()
        assert torch.allclose(values.sum(-1), torch.ones(n), atol=ATOL)


def check_predictions(results, n: int) -> None:
    assert isinstance(results, list) and len(results) == n
    for result in results:
        assert set(result) == set(TASKS)
        for task, entry in result.items():
            assert entry["label"] in TASKS[task]
            assert math.isfinite(entry["score"]) and 1 / len(TASKS[task]) - ATOL <= entry["score"] <= 1 + ATOL
            if "scores" in entry:
                assert list(entry["scores"]) == TASKS[task]
                assert sum(entry["scores"].values()) == pytest.approx(1.0, abs=ATOL)


def same_prediction(a: dict, b: dict) -> bool:
    return all(a[t]["label"] == b[t]["label"] and abs(a[t]["score"] - b[t]["score"]) <= ATOL for t in TASKS)


@pytest.fixture
def cli(capsys, monkeypatch):
    """`sentence-multitask ARGS` in this process (see test_cli.run_main)."""
    from .test_cli import run_main

    return lambda *args, stdin="": run_main(args, stdin, capsys, monkeypatch)


# ---------------------------------------------------------------------------------------------------- 1. bad input


def test_empty_list_gives_empty_results_of_the_right_shape(tiny_model, tiny_pipeline):
    for empty in ([], ()):
        embeddings = tiny_model.encode(empty)
        assert isinstance(embeddings, np.ndarray) and embeddings.shape == (0, 32)
        assert tuple(tiny_model.encode(empty, convert_to="torch").shape) == (0, 32)
        assert tiny_model.predict(empty) == []
        assert tiny_model.predict(empty, return_all_scores=True) == []
        proba = tiny_model.predict_proba(empty)
        assert {task: tuple(values.shape) for task, values in proba.items()} == {"topic": (0, 3), "sentiment": (0, 2)}
    assert tiny_pipeline([]) == []  # the pipeline too: an empty batch is an empty result, not an IndexError


def test_batch_size_takes_numpy_integers_and_refuses_other_kinds(tiny_model):
    texts = ["one text", "another, longer text"]
    assert np.allclose(tiny_model.encode(texts, batch_size=np.int64(1)), tiny_model.encode(texts, batch_size=2), atol=1e-6)
    for bad in (0, -1, 1.5, True, "8", None):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            tiny_model.encode(texts, batch_size=bad)


def test_the_pipeline_refuses_options_it_does_not_know(tiny_saved, tiny_pipeline):
    from transformers import pipeline

    for typo in ({"top_k": 2}, {"return_all_score": True}):
        with pytest.raises(TypeError, match=f"Unknown option.*{next(iter(typo))}"):
            tiny_pipeline("hello", **typo)
    with pytest.raises(TypeError, match="Unknown option.*function_to_apply"):
        pipeline(model=str(tiny_saved), trust_remote_code=True, function_to_apply="sigmoid")
    assert tiny_pipeline(["a", "b"], batch_size=2, return_all_scores=True)[0]["topic"]["scores"]


def test_empty_and_whitespace_texts_get_the_result_of_the_empty_text(tiny_model, tiny_pipeline):
    reference_embedding = tiny_model.encode("")
    reference_prediction = tiny_model.predict("", return_all_scores=True)
    assert np.isfinite(reference_embedding).all() and np.linalg.norm(reference_embedding) == pytest.approx(1, abs=1e-5)
    check_predictions([reference_prediction], 1)
    for text in WHITESPACE:
        assert text == "" or text.isspace()
        assert np.abs(tiny_model.encode(text) - reference_embedding).max() <= ATOL, repr(text)
        assert same_prediction(tiny_model.predict(text), reference_prediction), repr(text)
    # ... also inside a batch next to real text, and through predict_proba and the pipeline.
    batch = WHITESPACE + ["a real sentence about football"]
    embeddings = tiny_model.encode(batch)
    assert np.abs(embeddings[:-1] - reference_embedding).max() <= ATOL
    proba = tiny_model.predict_proba(batch)
    check_probabilities(proba, len(batch))
    for task, values in proba.items():
        assert torch.allclose(values[:-1], values[0].expand(len(WHITESPACE), -1), atol=ATOL), task
    piped = tiny_pipeline(batch[:-1], return_all_scores=True)
    check_predictions(piped, len(WHITESPACE))
    assert all(same_prediction(result, reference_prediction) for result in piped)


@pytest.mark.parametrize("entry", ["encode", "predict", "predict_proba", "pipeline"])
def test_non_string_texts_raise_type_error_naming_the_position(entry, tiny_model, tiny_pipeline):
    call = {"encode": tiny_model.encode, "predict": tiny_model.predict, "predict_proba": tiny_model.predict_proba,
            "pipeline": tiny_pipeline}[entry]
    for texts, position, kind in BAD_ITEMS:
        with pytest.raises(TypeError) as error:
            call(texts)
        message = str(error.value)
        assert f"texts[{position}]" in message and kind in message, f"{texts!r}: {message}"
    for argument in BAD_ARGUMENTS:
        with pytest.raises(TypeError, match="texts"):
            call(argument)


def test_a_lone_surrogate_gives_an_error_naming_the_position(tiny_model):
    """`json.loads('"\\ud800"')` yields such a str: it cannot be encoded, so the error must say which text it is."""
    for texts, position in ((["fine", "\ud800"], 1), (["a\udcff b"], 0)):
        for call in (tiny_model.encode, tiny_model.predict):
            with pytest.raises((TypeError, ValueError)) as error:
                call(texts)
            assert f"texts[{position}]" in str(error.value), str(error.value)


def test_long_texts_are_truncated_with_one_warning_per_model_and_limit(tiny_model, tiny_pipeline):
    """Like transformers' own warnings, the truncation warning is shown once per model and limit, not at every call of
    a loop over batches."""
    model = copy.deepcopy(tiny_model)
    model.__dict__.pop("_truncation_warned", None)
    module = type(model).__module__
    texts = [LONG, "short", LONG + "tail", "é " * 3000, ("😀 שלום " * 20000)[:100_000]]
    cut = "word " * (MAX_TOKENS - 2)
    counts = []
    for call in (model.encode, model.predict, model.predict_proba, model.encode):
        with captured_warnings(module) as records:
            call(texts)
        counts.append(len(truncation_warnings(records)))
    assert counts == [1, 0, 0, 0]
    with captured_warnings(module) as records:  # another limit: once more
        model.encode(texts, max_length=16)
        model.encode(texts, max_length=16)
    assert len(truncation_warnings(records)) == 1
    with captured_warnings(module) as records:
        model.predict(["short", "also short"])
    assert truncation_warnings(records) == []
    # The texts were cut at the model's limit: a long text gives the embedding of its first 254 words.
    embeddings = tiny_model.encode([LONG, cut, LONG + "tail"])
    assert np.abs(embeddings[0] - embeddings[1]).max() <= ATOL and np.abs(embeddings[2] - embeddings[1]).max() <= ATOL
    assert np.abs(tiny_model.encode(LONG, max_length=16) - tiny_model.encode("word " * 14)).max() <= ATOL

    # The pipeline truncates as well, with the same warning once for its model.
    tiny_pipeline.model.__dict__.pop("_truncation_warned", None)
    for expected in (1, 0):
        with captured_warnings(type(tiny_pipeline.model).__module__) as records:
            piped = tiny_pipeline(texts)
        assert len(truncation_warnings(records)) == expected, [r.getMessage() for r in records]
    check_predictions(piped, len(texts))
    assert same_prediction(piped[0], tiny_model.predict(cut))


def test_any_unicode_text_works(tiny_model, tiny_pipeline):
    texts = UNICODE_TEXTS + WHITESPACE[:2]
    embeddings = tiny_model.encode(texts)
    assert embeddings.shape == (len(texts), 32) and np.isfinite(embeddings).all()
    check_probabilities(tiny_model.predict_proba(texts), len(texts))
    predictions = tiny_model.predict(texts, return_all_scores=True)
    check_predictions(predictions, len(texts))
    for text, embedding, prediction in zip(texts, embeddings, predictions):  # alone = in the batch
        assert np.abs(tiny_model.encode(text) - embedding).max() <= ATOL, repr(text[:30])
        assert same_prediction(tiny_model.predict(text), prediction)
    piped = tiny_pipeline(texts)
    check_predictions(piped, len(texts))
    assert all(same_prediction(a, b) for a, b in zip(piped, predictions))


def test_any_unicode_text_works_with_the_real_model(minilm_model):
    texts = UNICODE_TEXTS + WHITESPACE
    embeddings = minilm_model.encode(texts, batch_size=8)
    assert embeddings.shape == (len(texts), 384) and np.isfinite(embeddings).all()
    proba = minilm_model.predict_proba(texts, batch_size=8)
    for values in proba.values():
        assert torch.isfinite(values).all() and torch.allclose(values.sum(-1), torch.ones(len(texts)), atol=ATOL)
    empty = embeddings[len(UNICODE_TEXTS)]
    assert np.abs(embeddings[len(UNICODE_TEXTS):] - empty).max() <= ATOL  # every whitespace text = ""


def test_cli_predict_bad_input(cli, tiny_saved, tmp_path):
    # No texts on stdin: no output, success.
    empty = cli("predict", "--model", str(tiny_saved), stdin="")
    assert empty.returncode == 0, empty.stderr[-3000:]
    assert empty.stdout.strip() == ""

    # Empty, whitespace-only, long and Unicode texts in one call: one truncation warning, valid rows.
    texts = ["", "   ", LONG, LONG, "😀 שלום مرحبا e\u0301\u0302 \x07", ("ż😀 " * 40000)[:100_000]]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")  # one text per line
    with captured_warnings() as records:
        result = cli("predict", "--model", str(tiny_saved), "--return_all_scores", "--file", str(tmp_path / "texts.txt"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [row["text"] for row in rows] == texts
    check_predictions([{task: row[task] for task in TASKS} for row in rows], len(texts))
    assert {t: rows[0][t]["label"] for t in TASKS} == {t: rows[1][t]["label"] for t in TASKS}
    assert all(rows[0][t]["score"] == pytest.approx(rows[1][t]["score"], abs=ATOL) for t in TASKS)
    assert len(truncation_warnings(records)) == 1, [r.getMessage() for r in records]

    # A JSON Lines file whose 4th line (after a blank line) has a null text: the error names the file and line.
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": null}\n', encoding="utf-8")
    bad = cli("predict", "--model", str(tiny_saved), "--file", str(path))
    assert bad.returncode != 0 and bad.stdout.strip() == ""
    assert "texts.jsonl" in bad.stderr and "line 4" in bad.stderr, bad.stderr[-2000:]


@pytest.mark.parametrize("max_length", [0, 1, -3, 2.5, "64"])
def test_a_max_length_under_two_tokens_is_refused_by_every_path(max_length, tiny_model, tiny_pipeline):
    calls = {"encode": tiny_model.encode, "predict": tiny_model.predict, "predict_proba": tiny_model.predict_proba,
             "pipeline": tiny_pipeline}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"max_length must be an integer from 2 to 512 \(a text needs \[CLS\] and "
                                             r"\[SEP\]\), got .*; leave it None for the model's default \(256\)"):
            call(["A text.", LONG], max_length=max_length)
            pytest.fail(f"{name} accepted max_length={max_length!r}")


def test_max_length_is_capped_at_the_encoders_positions_on_every_path(tiny_model, tiny_pipeline, monkeypatch):
    capped = tiny_model.encode(LONG, max_length=512)
    assert np.abs(tiny_model.encode(LONG, max_length=600) - capped).max() <= ATOL
    assert np.abs(tiny_model.encode(LONG, max_length=2) - tiny_model.encode("")).max() <= ATOL  # [CLS] [SEP]
    assert same_prediction(tiny_pipeline(LONG, max_length=600), tiny_model.predict(LONG, max_length=512))
    # The encoder's 512 positions cap it also where the tokenizer names no limit of its own.
    monkeypatch.setattr(tiny_model.tokenizer, "model_max_length", int(1e30))
    assert np.abs(tiny_model.encode(LONG, max_length=600) - capped).max() <= ATOL


# ---------------------------------------------------------------------------------------------------- 2. hypothesis


unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)  # any valid Unicode scalar
long_text = unicode_text.map(lambda t: (t + " ") * 40)  # often past the 256-token limit
text_lists = st.lists(st.one_of(unicode_text, unicode_text, unicode_text, long_text), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=text_lists, data=st.data())
def test_random_unicode_lists_are_finite_and_independent_of_batching(tiny_model, texts, data):
    n = len(texts)
    embeddings = tiny_model.encode(texts, batch_size=n)
    assert embeddings.shape == (n, 32) and np.isfinite(embeddings).all()
    proba = tiny_model.predict_proba(texts, batch_size=n)
    check_probabilities(proba, n)
    predictions = tiny_model.predict(texts)
    check_predictions(predictions, n)
    for i, prediction in enumerate(predictions):  # predict reports the arg-max of predict_proba
        for task, entry in prediction.items():
            assert entry["score"] == pytest.approx(float(proba[task][i].max()), abs=ATOL)

    # Batch size does not matter.
    batch_size = data.draw(st.integers(1, max(1, n - 1)), label="batch_size")
    assert np.abs(tiny_model.encode(texts, batch_size=batch_size) - embeddings).max() <= ATOL
    for task, values in tiny_model.predict_proba(texts, batch_size=batch_size).items():
        assert torch.allclose(values, proba[task], atol=ATOL)

    # Neither does the order of the texts ...
    order = data.draw(st.permutations(range(n)), label="order")
    shuffled = [texts[i] for i in order]
    for task, values in tiny_model.predict_proba(shuffled).items():
        assert torch.allclose(values, proba[task][order], atol=ATOL)

    # ... nor the presence of the others: a text alone, and the texts next to unrelated ones, give the same result.
    i = data.draw(st.integers(0, n - 1), label="alone")
    assert np.abs(tiny_model.encode([texts[i]])[0] - embeddings[i]).max() <= ATOL
    for task, values in tiny_model.predict_proba([texts[i]]).items():
        assert torch.allclose(values[0], proba[task][i], atol=ATOL)
    extra = ["An unrelated sentence.", LONG, ""]
    mixed = tiny_model.encode(extra + shuffled)
    assert np.abs(mixed[len(extra):] - embeddings[order]).max() <= ATOL


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(unicode_text, min_size=1, max_size=5))
def test_random_unicode_lists_through_the_pipeline_match_predict(tiny_model, tiny_pipeline, texts):
    piped = tiny_pipeline(texts, return_all_scores=True)
    check_predictions(piped, len(texts))
    assert all(same_prediction(a, b) for a, b in zip(piped, tiny_model.predict(texts)))


# ---------------------------------------------------------------------------------------------------- 3. config


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
    "label added": (_edit_config(lambda c: c["tasks"]["topic"].append("finance")), r"model\.safetensors does not match .*config\.json"),
    "label removed": (_edit_config(lambda c: c["tasks"]["topic"].pop()), r"model\.safetensors does not match .*config\.json"),
    "task added": (_edit_config(lambda c: c["tasks"].update(spam=["no", "yes"])), r"config\.json.*missing weights.*heads\.spam"),
    "task removed": (_edit_config(lambda c: c["tasks"].pop("sentiment")), r"config\.json.*heads\.sentiment"),
    "no model.safetensors": (lambda p: (p / "model.safetensors").unlink(), r"model\.safetensors"),
    "model.safetensors cut in half": (_truncate(0.5), r"model\.safetensors is damaged or truncated"),
    "model.safetensors cut to 5 bytes": (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5]),
                                         r"model\.safetensors is damaged or truncated"),
    "model.safetensors empty": (_truncate(0), r"model\.safetensors is damaged or truncated"),
    "wrong model_type": (_edit_config(lambda c: c.update(model_type="bert")), r"config\.json has model_type 'bert'"),
    "no auto_map": (_edit_config(lambda c: c.pop("auto_map")), r"sentence-multitask"),
    "no config.json": (lambda p: (p / "config.json").unlink(), r"config\.json"),
    "config.json not JSON": (lambda p: (p / "config.json").write_text("{not json"), r"config\.json.* not (a )?valid JSON"),
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
    message = r"has no tokenizer vocabulary \(missing tokenizer\.json, tokenizer_config\.json\).*tokenizer\.save_pretrained"
    model = SentenceMultiTaskModel.from_pretrained(str(path))
    with pytest.raises(OSError, match=message):
        model.predict(text)
    result = cli("predict", "--model", str(path), text)
    assert result.returncode != 0 and result.stdout == "", result.stdout
    assert "missing tokenizer.json, tokenizer_config.json" in result.stderr, result.stderr[-3000:]

    model.tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    assert same_prediction(model.predict(text), tiny_model.predict(text))


# ---------------------------------------------------------------------------------------------------- 4. saving


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


# ---------------------------------------------------------------------------------------------------- 5. data files


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


# ---------------------------------------------------------------------------------------------------- 6. faults


def test_two_runs_with_the_same_seed_give_bit_identical_weights(tiny_encoder, train_file, tmp_path, one_torch_thread):
    torch.set_num_threads(one_torch_thread)  # torch's own thread count here: multi-threaded kernels included
    try:
        for name in ("a", "b"):
            training.main(train_args(tiny_encoder, train_file, tmp_path / name, "--max_steps", "4"))
    finally:
        torch.set_num_threads(1)
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"same seed, different weights: {different[:5]}"
    initial = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=TASKS).state_dict()
    assert not torch.equal(initial["encoder.embeddings.word_embeddings.weight"],
                           first["encoder.embeddings.word_embeddings.weight"])  # training did change the weights


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _complete(checkpoint: Path) -> bool:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        load_file(checkpoint / "model.safetensors")
    except Exception:
        return False
    required = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
    return state.get("global_step") == int(checkpoint.name.split("-")[1]) and all((checkpoint / f).is_file() for f in required)


def _assert_every_checkpoint_loads(directory: Path, context: str) -> None:
    for checkpoint in _checkpoints(directory):
        try:
            load_file(checkpoint / "model.safetensors")
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"{context}: {checkpoint.name} does not load ({error!r}); it holds "
                        f"{sorted(p.name for p in checkpoint.iterdir())}")


@pytest.fixture(scope="module")
def long_train_file(tmp_path_factory) -> str:
    """128 rows of ~110 words: with batch 64 each step takes long enough to be killed in the middle of training."""
    return write_train_file(tmp_path_factory.mktemp("long-train-data"), seed=1, rows=128, words_per_text=(90, 126))


def test_sigkill_after_the_first_checkpoint_then_resume_gives_the_uninterrupted_weights(tiny_encoder, long_train_file,
                                                                                        tmp_path):
    import shutil

    options = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size", "64"]
    reference = tmp_path / "uninterrupted"
    training.main(train_args(tiny_encoder, long_train_file, reference, *options))

    # One thread in the killed process too, as in this one: the reference and the resumed run compute alike.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    rng = random.Random()
    for attempt in range(3):
        shutil.rmtree(out, ignore_errors=True)
        log = tmp_path / f"killed-{attempt}.log"  # a file, not a pipe: a full pipe would stall the run
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "sentence_multitask.cli", "train",
                 *train_args(tiny_encoder, long_train_file, out, *options)],
                env=env, stdout=handle, stderr=subprocess.STDOUT,
            )
        # A random moment after the first checkpoint: once a randomly chosen checkpoint (2 is the first) is
        # complete, plus a random part of a step.
        target = rng.choice([2, 2, 4, 6, 8, 10]) if attempt == 0 else 2
        deadline = time.monotonic() + 240
        while not (out / f"checkpoint-{target}" / "trainer_state.json").exists() and process.poll() is None:
            assert time.monotonic() < deadline, f"no checkpoint-{target} after 240 s"
            time.sleep(0.005)
        if process.poll() is not None:  # it finished (or failed) before the chosen checkpoint
            assert process.returncode == 0, log.read_text(errors="replace")[-3000:]
            continue
        delay = rng.uniform(0.0, 0.3) if attempt == 0 else 0.0
        time.sleep(delay)
        alive = process.poll() is None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if alive:
            break
    else:
        pytest.fail("the training run always finished before it could be killed")
    assert process.returncode == -signal.SIGKILL
    context = (f"killed {delay:.2f} s after checkpoint-{target} (attempt {attempt + 1}), leaving "
               f"{sorted(p.name for p in out.iterdir())}")
    print(context)  # shown with -s
    _assert_every_checkpoint_loads(out, context)
    complete = [c for c in _checkpoints(out) if _complete(c)]
    assert complete, f"{context}: no complete checkpoint"

    training.main(train_args(tiny_encoder, long_train_file, out, *options, "--resume_from_checkpoint", str(complete[-1])))
    expected, resumed = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    worst = max((expected[k].float() - resumed[k].float()).abs().max().item() for k in expected)
    assert worst <= 1e-6, f"{context}, resumed from {complete[-1].name}: weights differ by up to {worst}"
    _assert_every_checkpoint_loads(out, f"{context}, after the resume")
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12


def test_concurrent_predict_calls_give_the_serial_results(tiny_model):
    rng = random.Random(3)
    words = ["football", "doctor", "laptop", "awful", "joy", "😀", "שלום", "market"]
    jobs = [[" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(rng.randint(1, 12))]
            for _ in range(16)]
    jobs[3].append(LONG)  # the truncation path too
    serial = [(tiny_model.predict(texts, return_all_scores=True), tiny_model.encode(texts)) for texts in jobs]

    barrier = threading.Barrier(8)

    def work(worker: int):
        barrier.wait()
        results = []
        for round_ in range(3):
            for index in range(worker % 4, len(jobs), 2):
                results.append((index, tiny_model.predict(jobs[index], return_all_scores=True),
                                tiny_model.encode(jobs[index], batch_size=1 + (worker + round_) % 4)))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = [result for results in pool.map(work, range(8)) for result in results]
    assert len(outcomes) > 100
    for index, predictions, embeddings in outcomes:
        expected_predictions, expected_embeddings = serial[index]
        assert len(predictions) == len(expected_predictions)
        assert all(same_prediction(a, b) for a, b in zip(predictions, expected_predictions)), index
        assert np.abs(embeddings - expected_embeddings).max() <= ATOL, index
