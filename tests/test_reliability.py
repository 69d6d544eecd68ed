"""Reliability of inference: bad inputs to encode, predict, predict_proba, the pipeline and `predict` on the command
line (empty, whitespace-only, non-string, over-long and odd Unicode texts, bad options), and random Unicode lists
(Hypothesis) whose results must not depend on batching or on the other texts.

Everything runs offline on the tiny random encoder of `tiny_encoder` (heads re-initialised with a larger spread so
that mixed-up rows would show), except one Unicode test on the real all-MiniLM-L6-v2. Broken model folders, saves
and data files: test_reliability_files.py; faults: test_reliability_faults.py; what they share: reliability_helpers.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from . import reliability_helpers as shared
    from .reliability_helpers import ATOL, LONG, MAX_TOKENS, TASKS, same_prediction
except ImportError:  # tests/ collected as a plain directory
    import reliability_helpers as shared
    from reliability_helpers import ATOL, LONG, MAX_TOKENS, TASKS, same_prediction


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

# The shared fixtures of reliability_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
one_torch_thread = shared.one_torch_thread  # autouse: one torch thread for every test here
tiny_model = shared.tiny_model
tiny_saved = shared.tiny_saved
cli = shared.cli


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_saved):
    from transformers import pipeline

    return pipeline(model=str(tiny_saved), trust_remote_code=True)


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


def test_batch_size_takes_numpy_integers_and_none_and_refuses_other_kinds(tiny_model):
    texts = ["one text", "another, longer text"]
    assert np.allclose(tiny_model.encode(texts, batch_size=np.int64(1)), tiny_model.encode(texts, batch_size=2),
                       atol=1e-6)
    assert np.allclose(tiny_model.encode(texts, batch_size=None), tiny_model.encode(texts, batch_size=2), atol=1e-6)
    for bad in (0, -1, 1.5, True, "8"):
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
        result = cli("predict", "--model", str(tiny_saved), "--return_all_scores", "--file",
                     str(tmp_path / "texts.txt"))
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
