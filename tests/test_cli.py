"""`sentence-multitask embed` and `predict`: texts as arguments, from a file, or from stdin; JSON Lines out."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REFERENCE_TASKS, SENTENCES


def cli(*args, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sentence_multitask.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def rows(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.split("\n") if line.strip()]  # JSON may hold U+2028 raw


@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_model):
    path = tmp_path_factory.mktemp("cli-model")
    minilm_model.save_pretrained(path)
    return path


def test_predict_from_arguments_file_and_stdin(saved, tmp_path, minilm_model):
    expected = minilm_model.predict(SENTENCES)
    from_args = rows(cli("predict", "--model", str(saved), *SENTENCES))
    (tmp_path / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    from_file = rows(cli("predict", "--model", str(saved), "--file", str(tmp_path / "texts.txt")))
    from_stdin = rows(cli("predict", "--model", str(saved), stdin="\n".join(SENTENCES)))
    for output in (from_args, from_file, from_stdin):
        assert [row["text"] for row in output] == SENTENCES
        for row, reference in zip(output, expected):
            for task in REFERENCE_TASKS:
                assert row[task]["label"] == reference[task]["label"]
                assert row[task]["score"] == pytest.approx(reference[task]["score"], abs=1e-5)


def test_predict_all_scores_and_jsonl_input(saved, tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"body": text}) for text in SENTENCES))
    output = rows(cli("predict", "--model", str(saved), "--file", str(path), "--text_column", "body", "--all_scores"))
    assert len(output) == 3
    assert sum(output[0]["sentiment"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_embed_matches_the_python_api(saved, minilm_model):
    output = rows(cli("embed", "--model", str(saved), *SENTENCES))
    embeddings = np.array([row["embedding"] for row in output])
    assert embeddings.shape == (3, 384)
    assert np.abs(embeddings - minilm_model.encode(SENTENCES)).max() < 1e-6


def test_embed_without_model_uses_the_default_encoder():
    output = rows(cli("embed", *SENTENCES[:2]))
    first, second = (np.array(row["embedding"]) for row in output)
    assert float(first @ second) == pytest.approx(0.3761, abs=1e-4)


def test_clear_errors(saved, tmp_path):
    missing = cli("predict", "--model", str(saved), "--file", str(tmp_path / "nope.txt"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    both = cli("predict", "--model", str(saved), "--file", str(tmp_path / "nope.txt"), "text")
    assert both.returncode != 0 and "not both" in both.stderr
    no_model = cli("predict", "text")
    assert no_model.returncode != 0 and "--model" in no_model.stderr


def user_error(result, text):
    assert result.returncode != 0 and text in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_user_errors_are_one_line_not_a_traceback(saved, tmp_path):
    user_error(cli("predict", "--model", str(saved), "--batch_size", "0", "hi"), "batch_size must be a positive integer")
    for missing in ("/nonexistent", str(tmp_path / "missing"), "./missing", "a/b/c"):
        user_error(cli("predict", "--model", missing, "hi"), f"{missing}: no such directory; --model takes a directory")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": SENTENCES[0], "topic": "other"}) + "\n")
    user_error(cli("evaluate", "--model", str(saved), "--data", f"topc={data}"), "['topc']")
    user_error(cli("predict", "--model", str(saved), "--backend", "onnx", "--precision", "bf16", "hi"),
               "drop --precision or use --backend torch")
    user_error(cli("embed", "--backend", "onnx-int8", "hi"), "add --model")
    user_error(cli("predict", "--model", str(saved), "--device", "gpu", "hi"), "--device gpu: Expected one of cpu, cuda")
    user_error(cli("predict", "--model", str(saved), "--backend", "onnx", "--device", "cuda", "hi"),
               "an ONNX model runs on CPU")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error of a torch without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(saved):
    user_error(cli("embed", "--model", str(saved), "--device", "cuda", "hi"), "--device cuda: ")


def test_embed_without_model_honours_device_and_threads(monkeypatch, capsys):
    import torch

    from sentence_multitask import SentenceMultiTaskModel, cli as command_line

    devices, to = [], SentenceMultiTaskModel.to
    monkeypatch.setattr(SentenceMultiTaskModel, "to",
                        lambda self, *args, **kwargs: devices.append(args) or to(self, *args, **kwargs))
    threads = torch.get_num_threads()
    try:
        assert command_line.main(["embed", "--device", "cpu", "--threads", "3", "hi"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert ("cpu",) in devices
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == 384


def test_lines_split_only_at_newlines_and_output_reads_back(saved, tmp_path):
    # U+2028, U+0085, form feed, vertical tab and U+001E are characters of a text, not line ends.
    texts = ["line one\u2028still line one", "two\x85and\x0cthree\x0bfour\x1e", "last"]
    path = tmp_path / "texts.txt"
    path.write_text("\r\n".join(texts) + "\r\n", encoding="utf-8")
    output = rows(cli("predict", "--model", str(saved), "--file", str(path)))
    assert [row["text"] for row in output] == texts
    written = tmp_path / "predictions.jsonl"  # what predict wrote is valid input again (ensure_ascii=False keeps U+2028)
    written.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in output) + "\n", encoding="utf-8")
    assert [row["text"] for row in rows(cli("embed", "--model", str(saved), "--file", str(written)))] == texts
    assert [row["text"] for row in rows(cli("predict", "--model", str(saved), stdin="\n".join(texts)))] == texts


def test_train_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "label": "sports"}) + "\n{not json\n")
    user_error(cli("train", "--train_files", f"topic={bad}", "--output_dir", str(tmp_path / "out")),
               f"{bad}, line 2: malformed JSON")
    result = cli("embed", "--threads", "-1", "hi")
    assert result.returncode == 2 and "--threads: '-1' is not a positive integer" in result.stderr, result.stderr


def test_file_formats_jsonl_any_case_tables_and_text_column_refused(saved, tmp_path):
    upper = tmp_path / "TEXTS.JSONL"  # .jsonl in any case, a UTF-8 byte order mark and a blank line are fine
    upper.write_text("\ufeff" + "\n\n".join(json.dumps({"body": text}) for text in SENTENCES) + "\n", encoding="utf-8")
    output = rows(cli("predict", "--model", str(saved), "--file", str(upper), "--text_column", "body"))
    assert [row["text"] for row in output] == SENTENCES
    for name in ("texts.csv", "texts.TSV", "texts.json", "texts.parquet"):  # tables are refused, not read as lines
        (tmp_path / name).write_text("text,topic\nthe team won,sports\n")
        user_error(cli("predict", "--model", str(saved), "--file", str(tmp_path / name)),
                   f"{tmp_path / name}: --file takes plain text, one text per line, or JSON Lines (.jsonl)")
    user_error(cli("export-onnx", "--model", str(saved), "--output", str(tmp_path / "out"), "--quantize",
                   "--calibration_file", str(tmp_path / "texts.csv")), "--calibration_file takes plain text")
    # --text_column given for input read as plain text is refused by name, not ignored.
    plain = tmp_path / "texts.txt"
    plain.write_text(json.dumps({"text": "hi"}) + "\n")
    user_error(cli("predict", "--model", str(saved), "--file", str(plain), "--text_column", "text"),
               f"--text_column names the text field of a .jsonl --file; {plain} is read as plain text")
    for extra in (["--file", "-"], []):
        user_error(cli("embed", "--model", str(saved), *extra, "--text_column", "text", stdin=plain.read_text()),
                   "--text_column names the text field of a .jsonl --file; standard input is read as plain text")
    # Bad JSON Lines: named as such, with file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b",}\n')
    user_error(cli("predict", "--model", str(saved), "--file", str(bad)), f"{bad}, line 2: malformed JSON (")
    bad.write_text('{"text": "a"}\n\n["b"]\n')
    user_error(cli("predict", "--model", str(saved), "--file", str(bad)),
               f"{bad}, line 3: expected a JSON object per line, got list")


def test_input_that_is_not_utf8_names_file_and_line(saved, tmp_path):
    latin1 = "ok\r\ncaf\u00e9\r\n".encode("latin-1")
    for name in ("texts.txt", "texts.jsonl"):
        path = tmp_path / name
        path.write_bytes(latin1)
        user_error(cli("predict", "--model", str(saved), "--file", str(path)),
                   f"error: {path}, line 2: not UTF-8 (byte 0xe9 at column 4: invalid continuation byte); "
                   "re-encode the file as UTF-8")
    user_error(cli("export-onnx", "--model", str(saved), "--output", str(tmp_path / "out"), "--quantize",
                   "--calibration_file", str(tmp_path / "texts.txt")),
               f"error: {tmp_path / 'texts.txt'}, line 2: not UTF-8")
    with open(tmp_path / "texts.txt", "rb") as stdin:  # bytes on standard input, not a lone surrogate in a text
        result = subprocess.run([sys.executable, "-m", "sentence_multitask.cli", "predict", "--model", str(saved)],
                                stdin=stdin, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                timeout=300, check=False)
    user_error(result, "error: standard input, line 2: not UTF-8 (byte 0xe9 at column 4")
    assert "re-encode it as UTF-8" in result.stderr and "surrogate" not in result.stderr
