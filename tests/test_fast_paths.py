"""Fast paths (bf16, ONNX fp32, ONNX int8) agree with fp32 on real validation texts, and the ONNX graph handles
every batch size and sequence length. The agreement bounds hold for all-MiniLM-L6-v2 briefly fine-tuned on real data
(so that label agreement means something), on a fixed, seeded sample of the validation texts whose outputs each model
computes once; the graph's shapes, structure, files and options are checked on the tiny random encoder."""

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from .conftest import SHARED_DATA, run_cli

pytest.importorskip("onnxruntime")


# Validation texts per task in the sample the agreement bounds are checked on. The tightest bounds are 99 % of the
# labels kept and at most 0.5 points of accuracy lost: on 600 texts 6 and 3 texts (1 text: 0.17 points).
SAMPLE_PER_TASK = 600
# Which texts int8 flips is noise of a few texts, which on 600 texts is a point of accuracy: the accuracy bounds
# (0.5 points, set on all 3,440 texts) get this much slack. Measured on this sample: topic lost 1.3 points
# with smoothing, 0.8 with the recheck; sentiment none.
FLIP_NOISE = 6 / SAMPLE_PER_TASK
RECHECK_MARGIN = 0.02


def validation_texts(n_per_task=300):
    """The first `n_per_task` validation rows of each task; None: a seeded sample of SAMPLE_PER_TASK (the same on
    every run)."""
    rows = {}
    for task in ("topic", "sentiment"):
        with open(SHARED_DATA / f"{task}_validation.jsonl", encoding="utf-8") as handle:
            task_rows = [json.loads(line) for line in handle]
        rows[task] = random.Random(0).sample(task_rows, SAMPLE_PER_TASK) if n_per_task is None else task_rows[:n_per_task]
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_path):
    """all-MiniLM-L6-v2 fine-tuned briefly (640 rows, heads at a higher learning rate): accuracy clearly above the
    majority label on both tasks (next test), so that label agreement means something."""
    from sentence_multitask.cli import main

    out = tmp_path_factory.mktemp("fast-paths") / "model"
    main(["train", "--encoder", minilm_path,
          "--train_files", f"topic={SHARED_DATA / 'topic_train.jsonl'}", f"sentiment={SHARED_DATA / 'sentiment_train.jsonl'}",
          "--labels", "topic=sports,health,tech,finance,education,other", "sentiment=negative,neutral,positive",
          "--max_train_samples", "1500", "--max_steps", "40", "--per_device_train_batch_size", "16",
          "--max_length", "32", "--learning_rate", "1e-4", "--head_learning_rate", "5e-3",
          "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true",
          "--seed", "0"])
    from sentence_multitask import SentenceMultiTaskModel

    return SentenceMultiTaskModel.from_pretrained(out).eval()


@pytest.fixture(scope="module")
def sample():
    rows = validation_texts(None)
    return rows, [row["text"] for task_rows in rows.values() for row in task_rows]


def outputs(model, texts, precision=None):
    """What `encode` (normalised embeddings) and `predict_proba` return, from one pass: both are `_run`."""
    embeddings, logits = model._run(texts, 32, None, False, with_heads=True, precision=precision)
    return (torch.nn.functional.normalize(embeddings, dim=-1).numpy(),
            {task: values.softmax(-1) for task, values in logits.items()})


@pytest.fixture(scope="module")
def reference(trained, sample):
    """fp32 PyTorch's outputs on the sample, computed once."""
    return outputs(trained, sample[1])


@pytest.fixture(scope="module")
def onnx_outputs(exported, plain_int8, sample):
    """Each ONNX model's outputs on the sample, computed once: fp32, int8 (smoothed), int8 without calibration
    ("plain"), and int8 with the fp32 recheck (probabilities only: `encode` never rechecks)."""
    from sentence_multitask.onnx import OnnxSentenceMultiTask

    texts = sample[1]
    results = {"fp32": outputs(OnnxSentenceMultiTask.from_pretrained(exported), texts),
               "int8": outputs(OnnxSentenceMultiTask.from_pretrained(exported, quantized=True), texts),
               "plain": outputs(OnnxSentenceMultiTask.from_pretrained(plain_int8, quantized=True), texts)}
    rechecking = OnnxSentenceMultiTask.from_pretrained(exported, quantized=True, recheck_margin=RECHECK_MARGIN)
    results["recheck"] = (None, rechecking.predict_proba(texts))
    return results


def training_texts(n_per_task=250):
    texts = []
    for task in ("topic", "sentiment"):
        with open(SHARED_DATA / f"{task}_train.jsonl", encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for _, line in zip(range(n_per_task), handle)]
    return texts


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """fp32 and int8 graphs; the int8 one smoothed with 500 training texts (disjoint from the validation texts)."""
    from sentence_multitask.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx")
    export_onnx(trained, path, quantize=True, calibration_texts=training_texts())
    return path


@pytest.fixture(scope="module")
def plain_int8(exported, tmp_path_factory):
    """int8 without calibration texts, no smoothing: what `export_onnx(quantize=True)` does with the same fp32 graph
    (not exported again, to save the time)."""
    import shutil

    from sentence_multitask.onnx import FP32_FILE, INT8_FILE, ONNX_FOLDER, head_products, quantize_int8

    path = tmp_path_factory.mktemp("onnx-plain") / "model"
    shutil.copytree(exported, path)
    graph = path / ONNX_FOLDER / FP32_FILE
    quantize_int8(graph, path / ONNX_FOLDER / INT8_FILE, head_products(graph))
    return path


def compare(reference, other, rows, tasks):
    """Per-text cosine of the embeddings, and label_agreement, of two models' `outputs`."""
    cosine = (reference[0] * other[0]).sum(1) / np.linalg.norm(other[0], axis=1)
    return (cosine, *label_agreement(reference[1], other[1], rows, tasks))


def label_agreement(base, fast, rows, tasks):
    """Share of texts (all of them) with the same label per task, and (base, fast) accuracy on each task's own rows."""
    same = {task: float((base[task].argmax(-1) == fast[task].argmax(-1)).float().mean()) for task in base}
    accuracy = {}
    offset = 0
    for task, task_rows in rows.items():
        truth = torch.tensor([tasks[task].index(row["label"]) for row in task_rows])
        window = slice(offset, offset + len(task_rows))
        accuracy[task] = (float((base[task][window].argmax(-1) == truth).float().mean()),
                          float((fast[task][window].argmax(-1) == truth).float().mean()))
        offset += len(task_rows)
    return same, accuracy


def test_trained_heads_beat_the_majority_label(trained, reference, sample):
    """Label agreement means something only if the labels do: in the sample the most common label is 47 % of the
    topic rows and 45 % of the sentiment rows (a head that always says it keeps 100 % of its labels under int8)."""
    rows = sample[0]
    _, accuracy = label_agreement(reference[1], reference[1], rows, trained.config.tasks)
    for task, task_rows in rows.items():
        majority = max(Counter(row["label"] for row in task_rows).values()) / len(task_rows)
        assert accuracy[task][0] >= majority + 0.1, (task, accuracy[task][0], majority)


def test_bf16_agrees_with_fp32(trained, reference, sample):
    if not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    cosine, same, _ = compare(reference, outputs(trained, sample[1], "bf16"), sample[0],
                              trained.config.tasks)
    assert cosine.min() >= 0.9999
    assert all(share >= 0.995 for share in same.values()), same


def test_bf16_casts_the_weights_once_and_again_when_they_change(tiny_encoder, monkeypatch):
    """In inference mode autocast casts each product's fp32 weights anew for every batch; bf16 encode/predict keep
    one bf16 copy instead. Same results as autocast's own casts, the copy reused across calls, made again when a
    weight changes in place (as a training step does)."""
    if not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    texts = [row["text"] for rows in validation_texts(40).values() for row in rows]

    def run():
        return model.encode(texts, precision="bf16", convert_to="torch"), model.predict_proba(texts, precision="bf16")

    def autocast_only():  # what ran before: the fp32 weights, cast by autocast on every call
        with monkeypatch.context() as patch:
            patch.setattr(model, "_autocast_weights", lambda dtype: dict(model.encoder.named_parameters()))
            return run()

    def same(a, b):
        return torch.equal(a[0], b[0]) and all(torch.equal(a[1][task], b[1][task]) for task in a[1])

    first = run()
    copies = model._autocast_copies[1]
    parameters = dict(model.encoder.named_parameters())
    assert copies and all(torch.equal(copy, parameters[name].to(torch.bfloat16)) for name, copy in copies.items())
    assert same(first, autocast_only())
    assert same(run(), first) and model._autocast_copies[1] is copies

    with torch.no_grad():
        model.encoder.encoder.layer[0].intermediate.dense.weight.mul_(1.5)
    changed = run()
    assert model._autocast_copies[1] is not copies
    assert same(changed, autocast_only()) and not torch.allclose(changed[0], first[0], atol=1e-3)


def test_onnx_fp32_matches_pytorch(trained, exported, reference, onnx_outputs, sample):
    from sentence_multitask.onnx import OnnxSentenceMultiTask

    onnx_model = OnnxSentenceMultiTask.from_pretrained(exported)
    rows, texts = sample
    batches = list(onnx_model._id_batches(onnx_model._tokenize(texts, None), 64, False))
    assert all(inputs["input_ids"].numel() <= onnx_model.cpu_batch_tokens < trained.cpu_batch_tokens
               for _, inputs in batches)  # its own, smaller cap (faster for ONNX Runtime)
    cosine, same, _ = compare(reference, onnx_outputs["fp32"], rows, trained.config.tasks)
    assert cosine.min() >= 0.99999
    assert all(share == 1.0 for share in same.values()), same


def test_onnx_int8_within_bounds(trained, reference, onnx_outputs, sample):
    """Smoothed with calibration texts, int8 keeps more of fp32's labels than without; with the recheck (next test)
    it meets the documented bounds."""
    rows = sample[0]
    cosine, same, accuracy = compare(reference, onnx_outputs["int8"], rows, trained.config.tasks)
    plain_cosine, plain_same, plain_accuracy = compare(reference, onnx_outputs["plain"], rows, trained.config.tasks)

    assert cosine.mean() >= 0.99 and cosine.mean() > plain_cosine.mean(), (cosine.mean(), plain_cosine.mean())
    # Measured on all 3,440 validation texts (briefly trained heads): calibrated 99.7 / 99.2 % of the labels (topic /
    # sentiment), plain 99.2 / 97.8 %; for the quality experiment's model 99.1-99.3 / 98.8-99.2 % and 98.1 / 97.4 %
    # (see README, Performance). Which texts flip also depends on the batches (one activation scale per batch), so
    # 99 % is the recheck's bound.
    assert all(share >= 0.985 for share in same.values()), same
    assert all(fp32 - int8 <= 0.005 + FLIP_NOISE + 1e-9 for fp32, int8 in accuracy.values()), accuracy
    assert plain_cosine.mean() >= 0.98
    assert all(share >= 0.97 for share in plain_same.values()), plain_same
    assert all(fp32 - int8 <= 0.01 + FLIP_NOISE + 1e-9 for fp32, int8 in plain_accuracy.values()), plain_accuracy
    assert sum(same.values()) > sum(plain_same.values()), (same, plain_same)


def test_onnx_int8_rechecks_near_ties_in_fp32(exported, onnx_outputs, sample):
    """With `recheck_margin`, the int8 model runs again in fp32 exactly the texts whose two best labels (on some task)
    lie within the margin; at 0.02 on the smoothed graph that meets the documented label bounds: >= 99 % kept, accuracy
    drop <= 0.5 points (plus FLIP_NOISE on this sample)."""
    from sentence_multitask.onnx import OnnxSentenceMultiTask

    rechecking = OnnxSentenceMultiTask.from_pretrained(exported, quantized=True, recheck_margin=RECHECK_MARGIN)
    plain = OnnxSentenceMultiTask.from_pretrained(exported, quantized=True)  # the default: no recheck
    assert plain.fp32_session is None
    rows, texts = sample
    # ONNX fp32 equals PyTorch's fp32 (test above)
    got, int8, fp32 = onnx_outputs["recheck"][1], onnx_outputs["int8"][1], onnx_outputs["fp32"][1]

    near = torch.stack([(top := p.topk(2, dim=-1).values)[:, 0] - top[:, 1] for p in int8.values()]).min(0).values
    near = near < RECHECK_MARGIN
    assert 0 < near.float().mean() < 0.25, near.float().mean()
    for task in got:
        assert torch.allclose(got[task][near], fp32[task][near], atol=1e-5), task  # rechecked: fp32's outputs
        assert torch.equal(got[task][~near], int8[task][~near]), task  # the others: int8's, untouched
    same, accuracy = label_agreement(fp32, got, rows, rechecking.config.tasks)
    assert all(share >= 0.99 for share in same.values()), same
    assert all(base - fast <= 0.005 + FLIP_NOISE + 1e-9 for base, fast in accuracy.values()), accuracy
    # encode never rechecks: its embeddings are the int8 graph's
    assert np.array_equal(rechecking.encode(texts[:64]), plain.encode(texts[:64]))
    # no texts, one text
    assert rechecking.encode([]).shape == (0, rechecking.config.hidden_size) and rechecking.predict([]) == []
    assert set(rechecking.predict(texts[0])) == set(rechecking.config.tasks)


def test_bias_correction_removes_int8_shift(trained, exported, tmp_path):
    """Bias correction adds to each product's bias the mean shift int8 weights cause on the calibration texts: only
    biases change, and the int8 graph's embeddings lie closer, on average, to fp32's. The real weights: on the tiny
    random encoder the int8 shift is noise-sized, and the correction does not reliably shrink it."""
    import onnx
    from onnx import numpy_helper

    from sentence_multitask.onnx import FP32_FILE, ONNX_FOLDER, head_products, quantize_int8, smooth_activations

    source = exported / ONNX_FOLDER / FP32_FILE
    heads = head_products(source)
    graphs = {}
    for correct in (False, True):
        graphs[correct] = tmp_path / f"smoothed-{correct}.onnx"
        smooth_activations(source, graphs[correct], trained, training_texts(50), skip=set(heads),
                           correct_bias=correct)
    initializers = [{tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(graph)).graph.initializer}
                    for graph in graphs.values()]
    changed = [name for name, value in initializers[0].items() if not np.array_equal(value, initializers[1][name])]
    assert len(changed) == 4 * trained.config.encoder.num_hidden_layers and all(
        initializers[0][name].ndim == 1 for name in changed)  # one bias per product, nothing else

    reference = run_graph(source, trained, 50)[0]
    shifts = []
    for correct, graph in graphs.items():
        quantized = tmp_path / f"int8-{correct}.onnx"
        quantize_int8(graph, quantized, heads)
        shifts.append(np.linalg.norm((run_graph(quantized, trained, 50)[0] - reference).mean(0)))
    assert shifts[1] < shifts[0], shifts


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


def run_graph(graph, model, n_per_task=100):
    """The graph's outputs for validation texts, padded to the longest like one batch."""
    import onnxruntime

    texts = [row["text"] for rows in validation_texts(n_per_task).values() for row in rows]
    inputs = model.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np",
                             return_token_type_ids=False)
    inputs = {name: value.astype(np.int64) for name, value in inputs.items()}
    return onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, inputs)


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
    head_ops = {node.op_type for node in nodes if any(node.name.startswith(f"/model/{task}/") for task in tiny_model.config.tasks)}
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
        got = dict(zip(names, session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})))
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
