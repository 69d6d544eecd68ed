"""The ONNX export on the tiny random encoder, exported once: the graph's structure (int8 where it should be, no
slow fusions), every batch size and sequence length, smoothing's arithmetic, calibration texts, the files the export
writes or refuses to overwrite, and the ONNX options of `sentence-multitask predict` and `export-onnx`. The agreement
bounds on real weights are test_fast_paths.py's."""

import json

import numpy as np
import pytest
import torch

from .conftest import run_cli
from .fast_path_helpers import run_graph, training_texts

pytest.importorskip("onnxruntime")


# ---------------------------------------------------------------------------------------------------- tiny encoder
# Graph structure, shapes, smoothing's arithmetic, files and options: the tiny random encoder, exported once.


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel

    torch.manual_seed(0)
    return SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()


@pytest.fixture(scope="module")
def tiny_int8(tiny_model, tmp_path_factory):
    """The tiny model exported with fp32 and int8 graphs, the int8 one smoothed with 100 training texts."""
    from sentence_multitask.onnx import export_onnx

    path = tmp_path_factory.mktemp("tiny-int8")
    export_onnx(tiny_model, path, quantize=True, calibration_texts=training_texts(50))
    return path


def test_smoothing_leaves_fp32_results_unchanged(tiny_model, tiny_int8, tmp_path):
    """Smoothing divides each quantized product's input channels and multiplies its weight rows by the same scales:
    in fp32 the graph computes what it did, with one Mul before each product but the attention output projection,
    whose scales go into the value projection's columns."""
    import onnx

    from sentence_multitask.onnx import FP32_FILE, ONNX_FOLDER, smooth_activations

    source = tiny_int8 / ONNX_FOLDER / FP32_FILE
    smoothed = tmp_path / "smoothed.onnx"
    smooth_activations(source, smoothed, tiny_model, training_texts(50), correct_bias=False)
    before = onnx.load(str(source)).graph.node
    after = onnx.load(str(smoothed)).graph.node
    layers = tiny_model.config.encoder.num_hidden_layers
    products = [node for node in before if node.op_type == "Attention" or
                (node.op_type == "MatMul" and node.name.startswith("/model/encoder/"))]
    assert len(products) == 4 * layers
    assert [node.op_type for node in after].count("Mul") - [node.op_type for node in before].count("Mul") == 3 * layers
    for a, b in zip(*(run_graph(graph, tiny_model) for graph in (source, smoothed))):
        assert np.abs(a - b).max() < 1e-4


def test_calibration_texts_are_checked(tiny_model, tmp_path):
    from sentence_multitask.onnx import export_onnx

    with pytest.raises(ValueError, match="quantize=True"):
        export_onnx(tiny_model, tmp_path / "a", calibration_texts=training_texts())
    with pytest.raises(ValueError, match="too few.*at least 100"):
        export_onnx(tiny_model, tmp_path / "b", quantize=True, calibration_texts=training_texts(5))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # checked before anything is written


def test_onnx_recheck_needs_the_fp32_graph(tiny_int8, tmp_path):
    import shutil

    from sentence_multitask.onnx import FP32_FILE, ONNX_FOLDER, OnnxSentenceMultiTask

    copy = tmp_path / "int8-only"
    shutil.copytree(tiny_int8, copy)
    (copy / ONNX_FOLDER / FP32_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="recheck_margin=0"):
        OnnxSentenceMultiTask.from_pretrained(copy, quantized=True, recheck_margin=0.05)
    assert OnnxSentenceMultiTask.from_pretrained(copy, quantized=True).predict("A goal in the last minute.")
    with pytest.raises(ValueError, match="recheck_margin"):
        OnnxSentenceMultiTask.from_pretrained(tiny_int8, quantized=True, recheck_margin=1.5)
    with pytest.raises(ValueError, match="needs quantized=True"):
        OnnxSentenceMultiTask.from_pretrained(tiny_int8, recheck_margin=0.05)


def test_int8_graph_keeps_heads_and_embeddings_in_fp32(tiny_model, tiny_int8):
    import onnx

    from sentence_multitask.onnx import INT8_FILE, ONNX_FOLDER

    nodes = onnx.load(str(tiny_int8 / ONNX_FOLDER / INT8_FILE)).graph.node
    head_ops = {node.op_type for node in nodes
                if any(node.name.startswith(f"/model/{task}/") for task in tiny_model.config.tasks)}
    assert head_ops and not head_ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, head_ops
    assert "QEmbedLayerNormalization" not in {node.op_type for node in nodes}
    assert {"QAttention", "MatMulInteger"} & {node.op_type for node in nodes}  # the encoder is quantized


@pytest.mark.parametrize("quantized", [False, True])
def test_onnx_runs_without_the_slow_fusions(tiny_int8, quantized, monkeypatch, tmp_path):
    """SkipLayerNormalization and BiasGelu are slower on CPU than what they fuse: neither the saved graph nor the graph
    ONNX Runtime optimizes at load time may hold them. The attention fusion stays."""
    import onnx
    import onnxruntime

    from sentence_multitask.onnx import FP32_FILE, INT8_FILE, ONNX_FOLDER, OnnxSentenceMultiTask

    session_class = onnxruntime.InferenceSession

    def keep_optimized_graph(path, options, **kwargs):  # the real session, saving the graph it runs
        options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
        return session_class(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", keep_optimized_graph)
    OnnxSentenceMultiTask.from_pretrained(tiny_int8, quantized=quantized)
    saved = tiny_int8 / ONNX_FOLDER / (INT8_FILE if quantized else FP32_FILE)
    for graph in (saved, tmp_path / "loaded.onnx"):
        ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
        assert not ops & {"SkipLayerNormalization", "BiasGelu"}, (graph.name, ops)
        assert "LayerNormalization" in ops and ops & {"Attention", "QAttention"}, (graph.name, ops)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnx_graph_handles_every_shape(tiny_model, tiny_int8, batch):
    from sentence_multitask.onnx import OnnxSentenceMultiTask

    session = OnnxSentenceMultiTask.from_pretrained(tiny_int8).session  # the graph as the package runs it
    names = [output.name for output in session.get_outputs()]
    generator = torch.Generator().manual_seed(batch)
    for length in (1, 2, 5, 31, 64, 128, 255, 512):
        input_ids = torch.randint(1000, 30000, (batch, length), generator=generator)
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        for row in range(batch):  # random right padding, at least one real token
            attention_mask[row, int(torch.randint(1, length + 1, (1,), generator=generator)):] = 0
        with torch.no_grad():
            expected = tiny_model(input_ids=input_ids, attention_mask=attention_mask)
        got = dict(zip(names, session.run(None, {"input_ids": input_ids.numpy(),
                                                 "attention_mask": attention_mask.numpy()})))
        assert np.abs(got["embeddings"] - expected.embeddings.numpy()).max() < 1e-4, (batch, length)
        for task, logits in expected.logits.items():
            assert np.abs(got[f"logits_{task}"] - logits.numpy()).max() < 1e-4, (batch, length, task)


def test_cli_predict_with_onnx_backend(tiny_model, tiny_int8, capsys):
    text = "The striker scored twice in the final."
    status, out, err = run_cli(["predict", "--model", str(tiny_int8), "--backend", "onnx", text], capsys)
    assert status == 0, err[-2000:]
    row = json.loads(out.strip().splitlines()[-1])
    expected = tiny_model.predict(text)
    assert {task: row[task]["label"] for task in expected} == {task: value["label"] for task, value in expected.items()}


@pytest.mark.parametrize("backend, margin, error", [
    ("onnx-int8", "0.05", None),
    ("onnx", "0", None),  # 0: no recheck, so any backend
    ("onnx", "0.05", "--recheck_margin applies to --backend onnx-int8 only"),
    ("torch", "0.05", "--recheck_margin applies to --backend onnx-int8 only"),
    ("onnx-int8", "1.5", "error: recheck_margin is a difference of probabilities, 0 to 1"),
])
def test_cli_recheck_margin(tiny_int8, backend, margin, error, capsys):
    status, out, err = run_cli(["predict", "--model", str(tiny_int8), "--backend", backend, "--recheck_margin", margin,
                                "A close match."], capsys)
    if error is None:
        assert status == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])
    else:
        assert status != 0 and error in err, err


@pytest.mark.parametrize("extra, error", [
    ([], "--calibration_file prepares the int8 graph: add --quantize"),
    (["--quantize"], "error: 3 calibration texts are too few"),
])
def test_cli_export_calibration_file(tiny_int8, tmp_path, extra, error, capsys):
    texts = tmp_path / "calibration.jsonl"
    texts.write_text('{"text": "One."}\n\n{"text": "Two."}\n{"text": "Three."}\n')  # the blank line is skipped
    status, _, err = run_cli(["export-onnx", "--model", str(tiny_int8), "--output_dir", str(tmp_path / "out"),
                              "--calibration_file", str(texts), *extra], capsys)
    assert status != 0 and error in err, err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_exported(tmp_path_factory, tiny_encoder):
    """A trained-looking model (a card with metrics) saved, loaded and exported into its own folder, as
    `sentence-multitask export-onnx --model D --output_dir D` does; with the card as saved before the export."""
    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel
    from sentence_multitask.onnx import export_onnx

    path = tmp_path_factory.mktemp("tiny-onnx")
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS)
    model.training_summary = {"metrics": {"topic": {"accuracy": 0.8123, "macro_f1": 0.7456, "macro_recall": 0.75}}}
    model.save_pretrained(path)
    card = (path / "README.md").read_text()
    export_onnx(SentenceMultiTaskModel.from_pretrained(path), path)
    return path, card


def test_export_leaves_the_model_in_its_mode(tiny_encoder, tmp_path):
    """The export runs in eval mode on CPU; the caller's model keeps its mode (and device: tests/test_cuda.py)."""
    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel
    from sentence_multitask.onnx import export_onnx

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS)
    for training in (False, True):  # torch.onnx.export alone would leave it in train mode: a forward with dropout
        export_onnx(model.train(training), tmp_path / f"export-{training}")
        assert {module.training for module in model.modules()} == {training}


def test_exporting_into_the_models_own_folder_keeps_its_card(tiny_exported):
    path, card = tiny_exported
    assert (path / "onnx" / "model.onnx").is_file()
    assert (path / "README.md").read_text() == card and "value: 0.8123" in card


def test_export_to_a_file_is_refused_by_name(tiny_exported, tmp_path):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.onnx import export_onnx

    target = tmp_path / "README.md"
    target.write_text("my notes", encoding="utf-8")
    with pytest.raises(NotADirectoryError, match=r"README\.md is a file: the export writes a model folder"):
        export_onnx(SentenceMultiTaskModel.from_pretrained(tiny_exported[0]), target)
    assert target.read_text(encoding="utf-8") == "my notes"


def test_export_never_overwrites_another_saved_model(tiny_exported, tiny_encoder, tmp_path):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.onnx import export_onnx

    other = tmp_path / "other"
    SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"spam": ["ham", "spam"]}).save_pretrained(other)
    def files():
        return {str(p.relative_to(other)): p.read_bytes() for p in other.rglob("*") if p.is_file()}

    before = files()
    with pytest.raises(FileExistsError, match="already holds another saved model"):
        export_onnx(SentenceMultiTaskModel.from_pretrained(tiny_exported[0]), other)
    assert files() == before  # nothing changed, nothing added

    # An earlier export of the same model is not another model: exporting again (now with int8) refreshes it.
    model = SentenceMultiTaskModel.from_pretrained(tiny_exported[0])
    again = tmp_path / "again"
    export_onnx(model, again)
    export_onnx(model, again, quantize=True)
    assert (again / "onnx" / "model_quantized.onnx").is_file()
    with torch.no_grad():
        model.heads["topic"].dense.weight.add_(1.0)  # trained further: now another model
    with pytest.raises(FileExistsError, match="already holds another saved model"):
        export_onnx(model, again)

    # Nor does it write its card over a README.md that is no model's.
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project", encoding="utf-8")
    with pytest.raises(FileExistsError, match="holds README.md, which the export would overwrite"):
        export_onnx(model, project)
    assert [p.name for p in project.iterdir()] == ["README.md"]
    assert (project / "README.md").read_text(encoding="utf-8") == "my project"


def test_onnx_checks_and_caps_max_length_as_the_model_does(tiny_exported):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.onnx import OnnxSentenceMultiTask

    onnx_model = OnnxSentenceMultiTask.from_pretrained(tiny_exported[0])
    long = "word " * 1000
    for max_length in (0, 1):
        with pytest.raises(ValueError, match="max_length must be an integer from 2 to 512"):
            onnx_model.encode([long], max_length=max_length)
    model = SentenceMultiTaskModel.from_pretrained(tiny_exported[0])
    expected = model.encode(long, max_length=512)
    assert np.abs(onnx_model.encode(long, max_length=600) - expected).max() < 1e-4


def test_onnx_model_without_tokenizer_files_is_refused_by_name(tiny_exported, tmp_path):
    import shutil

    from sentence_multitask.onnx import OnnxSentenceMultiTask

    path = tmp_path / "model"
    shutil.copytree(tiny_exported[0], path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(OSError, match=r"missing tokenizer\.json, tokenizer_config\.json.*tokenizer\.save_pretrained"):
        OnnxSentenceMultiTask.from_pretrained(path)


def test_many_calibration_texts_are_sampled_down(tiny_encoder, tmp_path, monkeypatch):
    """More than 512 calibration texts are sampled (seeded) to 512: calibration time grows with them, the ranges
    hardly do. Smoothing itself is stubbed here: only the texts it gets are checked (the tiny encoder, for speed)."""
    import shutil

    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask import onnx as onnx_module

    seen = []

    def smooth(source, target, model, texts, **kwargs):
        seen.append(list(texts))
        shutil.copy(source, target)

    monkeypatch.setattr(onnx_module, "smooth_activations", smooth)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"t": ["a", "b"]})
    texts = [f"text number {i}" for i in range(2000)]
    for folder in ("first", "second"):
        onnx_module.export_onnx(model, tmp_path / folder, quantize=True, calibration_texts=texts)
    assert len(seen[0]) == len(set(seen[0])) == onnx_module.MAX_CALIBRATION_TEXTS and set(seen[0]) <= set(texts)
    assert seen[0] == seen[1]  # the same sample every time
