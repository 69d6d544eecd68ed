"""`sentence-multitask embed` and `predict`: texts as arguments, from a file, or from stdin; JSON Lines out.

Commands run in this process through `cli.main` on a saved tiny random model; a fresh process only where the process
boundary is the point: the console script's exit status and usage line, what importing the CLI costs, and one
`predict` as a user runs it.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REFERENCE_TASKS, SENTENCES


def run_main(args, stdin: str | bytes, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """`sentence-multitask ARGS` in this process, with `stdin` as standard input. A SystemExit's message goes to stderr
    with status 1, as the interpreter prints it; any other exception (a traceback for the user) propagates."""
    from sentence_multitask.cli import main

    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    capsys.readouterr()
    message = ""
    try:
        status = main([str(arg) for arg in args])
    except SystemExit as exit:
        status = exit.code
        if status is None:
            status = 0
        elif not isinstance(status, int):
            status, message = 1, f"{exit.code}\n"
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err + message)


@pytest.fixture
def cli(capsys, monkeypatch):
    return lambda *args, stdin="": run_main(args, stdin, capsys, monkeypatch)


def console_script() -> list[str]:
    script = Path(sys.executable).with_name("sentence-multitask")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sentence_multitask.cli"]


def rows(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.split("\n") if line.strip()]  # JSON may hold U+2028 raw


def user_error(result, text):
    assert result.returncode != 0 and text in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    import torch

    from sentence_multitask import SentenceMultiTaskModel

    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger head weights than the 0.02 init: labels are clear, not near-ties
        for parameter in model.heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("cli-model")
    tiny_model.save_pretrained(path)
    return path


def test_predict_from_arguments_file_and_stdin(cli, saved, tmp_path, tiny_model):
    expected = tiny_model.predict(SENTENCES)
    from_args = rows(cli("predict", "--model", saved, *SENTENCES))
    (tmp_path / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    from_file = rows(cli("predict", "--model", saved, "--file", tmp_path / "texts.txt"))
    from_stdin = rows(cli("predict", "--model", saved, stdin="\n".join(SENTENCES)))
    for output in (from_args, from_file, from_stdin):
        assert [row["text"] for row in output] == SENTENCES
        for row, reference in zip(output, expected):
            for task in REFERENCE_TASKS:
                assert row[task]["label"] == reference[task]["label"]
                assert row[task]["score"] == pytest.approx(reference[task]["score"], abs=1e-5)


def test_predict_all_scores_and_jsonl_input(cli, saved, tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"body": text}) for text in SENTENCES))
    output = rows(cli("predict", "--model", saved, "--file", path, "--text_column", "body", "--return_all_scores"))
    assert len(output) == 3
    assert sum(output[0]["sentiment"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_embed_matches_the_python_api(cli, saved, tiny_model):
    output = rows(cli("embed", "--model", saved, *SENTENCES))
    embeddings = np.array([row["embedding"] for row in output])
    assert embeddings.shape == (3, 32)
    assert np.abs(embeddings - tiny_model.encode(SENTENCES)).max() < 1e-6


def test_embed_without_model_uses_the_default_encoder(cli):
    output = rows(cli("embed", *SENTENCES[:2]))
    first, second = (np.array(row["embedding"]) for row in output)
    assert float(first @ second) == pytest.approx(0.3761, abs=1e-4)  # all-MiniLM-L6-v2's cosine


def test_clear_errors(cli, saved, tmp_path):
    missing = cli("predict", "--model", saved, "--file", tmp_path / "nope.txt")
    assert missing.returncode != 0 and "no such file" in missing.stderr
    both = cli("predict", "--model", saved, "--file", tmp_path / "nope.txt", "text")
    assert both.returncode != 0 and "not both" in both.stderr
    no_model = cli("predict", "text")
    assert no_model.returncode != 0 and "--model" in no_model.stderr


def test_user_errors_are_one_line_not_a_traceback(cli, saved, tmp_path):
    user_error(cli("predict", "--model", saved, "--batch_size", "0", "hi"), "'0' is not a positive integer")
    for missing in ("/nonexistent", str(tmp_path / "missing"), "./missing", "a/b/c"):
        user_error(cli("predict", "--model", missing, "hi"), f"{missing}: no such directory; --model takes a directory")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": SENTENCES[0], "topic": "other"}) + "\n")
    user_error(cli("evaluate", "--model", saved, "--eval_files", f"topc={data}"), "['topc']")
    user_error(cli("predict", "--model", saved, "--backend", "onnx", "--precision", "bf16", "hi"),
               "drop --precision or use --backend torch")
    user_error(cli("embed", "--backend", "onnx-int8", "hi"), "add --model")
    user_error(cli("predict", "--model", saved, "--device", "gpu", "hi"), "--device gpu: Expected one of cpu, cuda")
    user_error(cli("predict", "--model", saved, "--backend", "onnx", "--device", "cuda", "hi"),
               "an ONNX model runs on CPU")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error of a torch without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(cli, saved):
    user_error(cli("embed", "--model", saved, "--device", "cuda", "hi"), "--device cuda: ")


def test_embed_without_model_honours_device_and_threads(cli, monkeypatch):
    import torch

    from sentence_multitask import SentenceMultiTaskModel

    devices, to = [], SentenceMultiTaskModel.to
    monkeypatch.setattr(SentenceMultiTaskModel, "to",
                        lambda self, *args, **kwargs: devices.append(args) or to(self, *args, **kwargs))
    threads = torch.get_num_threads()
    try:
        result = cli("embed", "--device", "cpu", "--threads", "3", "hi")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert ("cpu",) in devices
    assert len(rows(result)[0]["embedding"]) == 384


def test_lines_split_only_at_newlines_and_output_reads_back(cli, saved, tmp_path):
    # U+2028, U+0085, form feed, vertical tab and U+001E are characters of a text, not line ends.
    texts = ["line one\u2028still line one", "two\x85and\x0cthree\x0bfour\x1e", "last"]
    path = tmp_path / "texts.txt"
    path.write_text("\r\n".join(texts) + "\r\n", encoding="utf-8")
    output = rows(cli("predict", "--model", saved, "--file", path))
    assert [row["text"] for row in output] == texts
    # What predict wrote is valid input again (ensure_ascii=False keeps U+2028).
    written = tmp_path / "predictions.jsonl"
    written.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in output) + "\n", encoding="utf-8")
    assert [row["text"] for row in rows(cli("embed", "--model", saved, "--file", written))] == texts
    assert [row["text"] for row in rows(cli("predict", "--model", saved, stdin="\n".join(texts)))] == texts


def test_train_user_errors_are_one_line(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "label": "sports"}) + "\n{not json\n")
    user_error(cli("train", "--train_files", f"topic={bad}", "--output_dir", tmp_path / "out"),
               f"{bad}, line 2: malformed JSON")
    result = cli("embed", "--threads", "-1", "hi")
    assert result.returncode == 2 and "--threads: '-1' is not a positive integer" in result.stderr, result.stderr


def test_file_formats_jsonl_any_case_tables_and_text_column_refused(cli, saved, tmp_path):
    upper = tmp_path / "TEXTS.JSONL"  # .jsonl in any case, a UTF-8 byte order mark and a blank line are fine
    upper.write_text("\ufeff" + "\n\n".join(json.dumps({"body": text}) for text in SENTENCES) + "\n", encoding="utf-8")
    output = rows(cli("predict", "--model", saved, "--file", upper, "--text_column", "body"))
    assert [row["text"] for row in output] == SENTENCES
    # Tables are read with `datasets`, the text from --text_column (default: text).
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [1, 2, 3], "body": SENTENCES})
    pq.write_table(table, tmp_path / "texts.parquet")
    (tmp_path / "texts.csv").write_text(table.to_pandas().to_csv(index=False))
    (tmp_path / "texts.TSV").write_text(table.to_pandas().to_csv(index=False, sep="\t"))
    (tmp_path / "texts.json").write_text(json.dumps(table.to_pylist()))
    for name in ("texts.csv", "texts.TSV", "texts.json", "texts.parquet"):
        output = rows(cli("predict", "--model", saved, "--file", tmp_path / name, "--text_column", "body"))
        assert [row["text"] for row in output] == SENTENCES
        user_error(cli("predict", "--model", saved, "--file", tmp_path / name),
                   f"{tmp_path / name} has no column 'text' (columns: id, body); name the text column with "
                   "--text_column")
    # --text_column given for input read as plain text is refused by name, not ignored.
    plain = tmp_path / "texts.txt"
    plain.write_text(json.dumps({"text": "hi"}) + "\n")
    user_error(cli("predict", "--model", saved, "--file", plain, "--text_column", "text"),
               f"--text_column names the text field of a table --file (.jsonl, .json, .csv, .tsv, .parquet); {plain} "
               "is read as plain text")
    for extra in (["--file", "-"], []):
        user_error(cli("embed", "--model", saved, *extra, "--text_column", "text", stdin=plain.read_text()),
                   "--text_column names the text field of a table --file (.jsonl, .json, .csv, .tsv, .parquet); "
                   "standard input is read as plain text")
    # Bad JSON Lines: named as such, with file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b",}\n')
    user_error(cli("predict", "--model", saved, "--file", bad), f"{bad}, line 2: malformed JSON (")
    bad.write_text('{"text": "a"}\n\n["b"]\n')
    user_error(cli("predict", "--model", saved, "--file", bad),
               f"{bad}, line 3: expected a JSON object per line, got list")


def test_input_that_is_not_utf8_names_file_and_line(cli, saved, tmp_path):
    latin1 = "ok\r\ncaf\u00e9\r\n".encode("latin-1")
    for name in ("texts.txt", "texts.jsonl"):
        path = tmp_path / name
        path.write_bytes(latin1)
        user_error(cli("predict", "--model", saved, "--file", path),
                   f"error: {path}, line 2: not UTF-8 (byte 0xe9 at column 4: invalid continuation byte); "
                   "re-encode the file as UTF-8")
    user_error(cli("export-onnx", "--model", saved, "--output_dir", tmp_path / "out", "--quantize",
                   "--calibration_file", tmp_path / "texts.txt"),
               f"error: {tmp_path / 'texts.txt'}, line 2: not UTF-8")
    result = cli("predict", "--model", saved, stdin=latin1)  # bytes on standard input, not a lone surrogate in a text
    user_error(result, "error: standard input, line 2: not UTF-8 (byte 0xe9 at column 4")
    assert "re-encode it as UTF-8" in result.stderr and "surrogate" not in result.stderr


# ---------------------------------------------------------------------------------------------------- fresh processes


def test_the_console_script_exits_2_with_its_usage_line_on_a_bad_option():
    result = subprocess.run([*console_script(), "embed", "--threads", "-1", "hi"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: sentence-multitask embed")
    assert "--threads: '-1' is not a positive integer" in result.stderr, result.stderr


def test_importing_the_cli_imports_neither_torch_nor_transformers():
    """`--help` and option errors answer at once; each command imports what it needs when it runs."""
    code = ("import sys, sentence_multitask.cli\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_predict_as_a_user_runs_it(saved, tiny_model):
    """JSON Lines on stdout, and the truncation warning on stderr, once, from texts piped to the console script."""
    texts = SENTENCES + ["word " * 1000]
    result = subprocess.run([*console_script(), "predict", "--model", str(saved)], input="\n".join(texts) + "\n",
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    output = rows(result)
    assert [row["text"] for row in output] == texts
    for row, reference in zip(output, tiny_model.predict(texts)):
        for task in REFERENCE_TASKS:
            assert row[task]["label"] == reference[task]["label"]
            assert row[task]["score"] == pytest.approx(reference[task]["score"], abs=1e-5)
    assert result.stderr.count("were truncated") == 1, result.stderr[-3000:]
