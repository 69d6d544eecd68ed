"""Dataset runs of `predict` / `embed` (--input to --output, streamed in chunks, written in parts) and the
`predict_dataset` API: the same predictions as in-memory `predict`, for every input and output format; kept columns;
resuming an interrupted run; an existing output refused."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import REFERENCE_TASKS, run_cli

TEXTS = [f"text {i}: " + " ".join(["word", "team", "money", "doctor"][i % 4] for _ in range(i % 9)) for i in range(23)]
TEXTS[3:6] = ["NA", "", "123"]  # a CSV reader would make nulls and numbers of these


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_reference_model):
    path = tmp_path_factory.mktemp("streaming-model")
    tiny_reference_model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def expected(tiny_reference_model):
    return tiny_reference_model.predict(TEXTS, return_all_scores=True)


def write_input(folder, kind: str) -> str:
    ids = list(range(100, 100 + len(TEXTS)))
    if kind == "txt":
        path = folder / "texts.txt"
        path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    elif kind in ("csv", "tsv", "parquet"):
        path = folder / f"texts.{kind}"
        table = pa.table({"id": ids, "text": TEXTS})
        if kind == "parquet":  # several row groups, which chunks of 10 rows straddle
            pq.write_table(table, path, row_group_size=4)
        else:
            import pyarrow.csv

            pyarrow.csv.write_csv(table, path, pyarrow.csv.WriteOptions(delimiter="\t" if kind == "tsv" else ","))
    elif kind == "json":
        path = folder / "texts.json"  # one JSON array
        path.write_text(json.dumps([{"id": i, "text": t} for i, t in zip(ids, TEXTS)]), encoding="utf-8")
    elif kind == "jsonl":
        path = folder / "texts.jsonl"
        path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, TEXTS)), encoding="utf-8")
    else:  # a dataset saved with save_to_disk
        import datasets

        path = folder / "saved-dataset"
        datasets.Dataset.from_dict({"id": ids, "text": TEXTS}).save_to_disk(path)
    return str(path)


def ok(result):
    status, out, err = result
    assert status == 0, err[-3000:]
    return out


def error(result, text):
    status, _, err = result
    assert status != 0 and text in err and "Traceback" not in err, err[-3000:]


def check_predictions(table: pa.Table, expected, return_all_scores=False):
    assert table.num_rows == len(expected)
    for task, labels in REFERENCE_TASKS.items():
        assert table.column(f"{task}_label").to_pylist() == [row[task]["label"] for row in expected]
        np.testing.assert_allclose(table.column(f"{task}_score").to_numpy(), [row[task]["score"] for row in expected],
                                   atol=1e-5)
        for label in labels:
            assert (f"{task}_scores_{label}" in table.column_names) == return_all_scores
            if return_all_scores:
                np.testing.assert_allclose(table.column(f"{task}_scores_{label}").to_numpy(),
                                           [row[task]["scores"][label] for row in expected], atol=1e-5)


@pytest.mark.parametrize("kind", ["csv", "tsv", "json", "jsonl", "parquet", "txt", "saved"])
def test_every_input_format_gives_the_in_memory_predictions(kind, saved, expected, tmp_path, capsys):
    source = write_input(tmp_path, kind)
    keep = [] if kind == "txt" else ["--keep_columns", "id"]
    ok(run_cli(["predict", "--model", saved, "--input", source, "--output", str(tmp_path / "out.parquet"),
                "--chunk_size", "10", *keep], capsys))
    table = pq.read_table(tmp_path / "out.parquet")
    check_predictions(table, expected)
    assert table.column_names[0] == ("topic_label" if kind == "txt" else "id")
    if kind != "txt":
        assert table.column("id").to_pylist() == list(range(100, 100 + len(TEXTS)))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # the parts folder is gone


def test_output_formats_all_scores_and_embeddings(saved, tiny_reference_model, expected, tmp_path, capsys):
    source = write_input(tmp_path, "parquet")
    base = ["--model", saved, "--input", source, "--chunk_size", "7"]
    ok(run_cli(["predict", *base, "--output", str(tmp_path / "p.jsonl"), "--return_all_scores", "--keep_columns", "id,text"],
               capsys))
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == TEXTS and [row["id"] for row in rows][:2] == [100, 101]
    check_predictions(pa.Table.from_pylist(rows), expected, return_all_scores=True)
    ok(run_cli(["predict", *base, "--output", str(tmp_path / "p.csv")], capsys))
    import pyarrow.csv

    check_predictions(pyarrow.csv.read_csv(tmp_path / "p.csv"), expected)
    # embed into a folder of parts: a fixed-size float list per row, equal to encode
    ok(run_cli(["embed", *base, "--output", str(tmp_path / "emb"), "--keep_columns", "id"], capsys))
    parts = [f"part-0000{i}.parquet" for i in range(4)]
    assert sorted(os.listdir(tmp_path / "emb")) == ["_SUCCESS", "_run.json", *parts]
    table = pq.read_table(tmp_path / "emb")
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    embeddings = np.array(table.column("embedding").to_pylist())
    assert np.abs(embeddings - tiny_reference_model.encode(TEXTS)).max() < 1e-6
    # the embeddings as a CSV: JSON lists in a column
    ok(run_cli(["embed", *base, "--output", str(tmp_path / "emb.csv"), "--no_normalize"], capsys))
    column = pyarrow.csv.read_csv(tmp_path / "emb.csv").column("embedding")
    written = np.array([json.loads(value) for value in column.to_pylist()])
    assert np.abs(written - tiny_reference_model.encode(TEXTS, normalize=False)).max() < 1e-6


def test_parquet_is_read_one_row_group_at_a_time(tmp_path):
    """One shard per row group: a scan over a whole file reads ahead, and its memory grows with the file."""
    from sentence_multitask.streaming import load_input

    source = write_input(tmp_path, "parquet")
    dataset, total = load_input(source)
    assert total == len(TEXTS) and dataset.num_shards == pq.ParquetFile(source).num_row_groups == 6
    assert [row["id"] for row in dataset] == list(range(100, 100 + len(TEXTS)))


def test_an_interrupted_run_resumes_to_the_uninterrupted_output(saved, tmp_path, capsys, monkeypatch):
    from sentence_multitask import SentenceMultiTaskModel

    source = write_input(tmp_path, "jsonl")
    args = ["predict", "--model", saved, "--input", source, "--chunk_size", "5", "--keep_columns", "id"]
    ok(run_cli([*args, "--output", str(tmp_path / "reference.parquet")], capsys))
    calls, predict = [], SentenceMultiTaskModel.predict

    def failing_predict(self, texts, *a, **k):
        calls.append(len(texts))
        if len(calls) == 3:
            raise OSError("simulated crash in the third chunk")
        return predict(self, texts, *a, **k)

    monkeypatch.setattr(SentenceMultiTaskModel, "predict", failing_predict)
    out = tmp_path / "out.parquet"
    error(run_cli([*args, "--output", str(out)], capsys), "simulated crash")
    parts = tmp_path / ".out.parquet.parts"
    assert not out.exists() and sorted(os.listdir(parts)) == ["_run.json", "part-00000.parquet", "part-00001.parquet"]
    error(run_cli([*args, "--output", str(out)], capsys),
          f"{parts} holds the parts of an interrupted run: pass --resume")
    error(run_cli([*args, "--output", str(out), "--resume", "--return_all_scores"], capsys),
          "--resume: " + str(out) + " was written with other options (return_all_scores: False then, True now)")
    ok(run_cli([*args, "--output", str(out), "--resume"], capsys))
    assert calls == [5, 5, 5, 5, 5, 3]  # 3 chunks of the first run (the third failed), then the 3 left: none twice
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "reference.parquet"))
    assert not parts.exists()
    error(run_cli([*args, "--output", str(out)], capsys), f"{out} exists: pass --resume")  # nothing overwritten
    ok(run_cli([*args, "--output", str(out), "--resume"], capsys))  # complete: nothing to do


def test_dataset_run_errors_name_the_fix(saved, tmp_path, capsys):
    source = write_input(tmp_path, "csv")
    base = ["predict", "--model", saved, "--input", source]
    error(run_cli([*base, "--output", str(tmp_path / "o.parquet"), "--keep_columns", "id,date"], capsys),
          "has no column 'date' (columns: id, text)")
    error(run_cli([*base, "--output", str(tmp_path / "o.parquet"), "--text_column", "body"], capsys),
          "has no column 'body'")
    error(run_cli([*base, "--output", str(tmp_path / "o.xlsx")], capsys), "name a .parquet, .jsonl or .csv file")
    error(run_cli([*base], capsys), "--input and --output go together")
    error(run_cli(["predict", "--model", saved, "--keep_columns", "id", "hi"], capsys), "add --input PATH --output")
    error(run_cli(["predict", "--model", saved, "--input", str(tmp_path / "none.csv"), "--output", "o.csv"], capsys),
          "none.csv: no such file or folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    error(run_cli([*base, "--output", str(tmp_path / "folder")], capsys), "folder exists: pass --resume")
    assert (tmp_path / "folder" / "notes.txt").read_text() == "mine"
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "a"}\n{"text": null}\n')
    error(run_cli(["predict", "--model", saved, "--input", str(nulls), "--output", str(tmp_path / "n.jsonl")], capsys),
          f"{nulls}, row 2: 'text' is null, not a string")


def test_predict_dataset_maps_datasets_and_iterable_datasets(tiny_reference_model, expected):
    import datasets

    from sentence_multitask.streaming import predict_dataset

    dataset = datasets.Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS, "other": [1] * len(TEXTS)})
    mapped = predict_dataset(tiny_reference_model, dataset, chunk_size=8)
    assert mapped.column_names[:3] == ["id", "text", "other"]  # keep_columns None: every input column
    check_predictions(mapped.data.table, expected)
    streamed = predict_dataset(tiny_reference_model, dataset.to_iterable_dataset(), keep_columns=["id"], return_all_scores=True,
                               chunk_size=8)
    table = pa.Table.from_pylist(list(streamed))
    assert table.column_names[0] == "id" and "text" not in table.column_names and "other" not in table.column_names
    check_predictions(table, expected, return_all_scores=True)
    embedded = predict_dataset(tiny_reference_model, dataset, keep_columns=[], embed=True)
    assert embedded.column_names == ["embedding"]
    assert np.abs(np.array(embedded["embedding"]) - tiny_reference_model.encode(TEXTS)).max() < 1e-6
    with pytest.raises(ValueError, match="the dataset has no column 'body'"):
        predict_dataset(tiny_reference_model, dataset, text_column="body")


def test_result_columns_follow_the_keys_of_each_task_output():
    from sentence_multitask.streaming import result_columns

    results = [{"topic": {"label": "tech", "score": 0.9, "scores": {"tech": 0.9, "other": 0.1}},
                "tags": {"labels": ["a", "b"], "scores": [0.8, 0.7]}, "rating": {"value": 3.5}},
               {"topic": {"label": "other", "score": 0.6, "scores": {"tech": 0.4, "other": 0.6}},
                "tags": {"labels": [], "scores": []}, "rating": {"value": 1.0}}]
    assert result_columns(results) == {
        "topic_label": ["tech", "other"], "topic_score": [0.9, 0.6], "topic_scores_tech": [0.9, 0.4],
        "topic_scores_other": [0.1, 0.6], "tags_labels": [["a", "b"], []], "tags_scores": [[0.8, 0.7], []],
        "rating_value": [3.5, 1.0]}
