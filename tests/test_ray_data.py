"""Ray Data: the map_batches predictor gives in-process `predict` / `encode`'s outputs, and `predict --engine ray`
writes them with the kept columns, rows in input order. A local Ray of 2 CPUs."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import REFERENCE_TASKS, run_cli

ray = pytest.importorskip("ray")

TEXTS = [f"row {i}: " + "word " * (i % 11) for i in range(40)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_encoder):
    import torch

    from sentence_multitask import SentenceMultiTaskModel

    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    path = tmp_path_factory.mktemp("ray-model")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_the_predictor_adds_the_prediction_columns(saved):
    from sentence_multitask.ray_data import SentenceMultiTaskPredictor

    path, model = saved
    predictor = SentenceMultiTaskPredictor(path, keep_columns=["id"], device="cpu")
    batch = {"id": np.arange(len(TEXTS)), "text": np.array(TEXTS, dtype=object), "other": np.zeros(len(TEXTS))}
    columns = predictor(batch)
    expected = model.predict(TEXTS)
    assert list(columns) == ["id", "topic_label", "topic_score", "sentiment_label", "sentiment_score"]
    assert columns["topic_label"].tolist() == [row["topic"]["label"] for row in expected]
    np.testing.assert_allclose(columns["sentiment_score"], [row["sentiment"]["score"] for row in expected], atol=1e-5)
    embedder = SentenceMultiTaskPredictor(path, embed=True, normalize=False, device="cpu")
    embeddings = embedder(batch)["embedding"]
    assert embeddings.shape == (len(TEXTS), 32)
    assert np.abs(embeddings - model.encode(TEXTS, normalize=False)).max() < 1e-6
    with pytest.raises(ValueError, match="no column 'body'"):
        SentenceMultiTaskPredictor(path, text_column="body", device="cpu")(batch)


def test_engine_ray_equals_in_process_predict(saved, local_ray, tmp_path, capsys):
    path, model = saved
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), source)
    status, _, err = run_cli(["predict", "--model", path, "--input", str(source), "--output", str(tmp_path / "out"),
                              "--engine", "ray", "--keep_columns", "id", "--chunk_size", "7", "--device", "cpu"],
                             capsys)
    assert status == 0, err[-3000:]
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))  # every row once, in input order
    expected = model.predict(TEXTS)
    for task in REFERENCE_TASKS:
        assert table.column(f"{task}_label").to_pylist() == [row[task]["label"] for row in expected]
        np.testing.assert_allclose(table.column(f"{task}_score").to_numpy(), [row[task]["score"] for row in expected],
                                   atol=1e-5)
    status, _, err = run_cli(["embed", "--model", path, "--input", str(source), "--output", str(tmp_path / "out"),
                              "--engine", "ray"], capsys)
    assert status == 1 and "out exists: name another --output" in err
    status, _, err = run_cli(["embed", "--model", path, "--input", str(source), "--output", str(tmp_path / "emb"),
                              "--engine", "ray", "--actors", "2"], capsys)  # 2 CPUs: none left to read and write
    assert status == 1 and "--actors 2 on a Ray cluster of 2 CPUs" in err and "use --actors 1" in err
