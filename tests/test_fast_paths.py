"""Fast paths (bf16, ONNX fp32, ONNX int8) agree with fp32 on real validation texts. The agreement bounds hold for
all-MiniLM-L6-v2 briefly fine-tuned on real data (so that label agreement means something), on a fixed, seeded
sample of the validation texts whose outputs each model computes once. The ONNX graph's shapes, structure, files and
options are checked on the tiny random encoder in test_onnx_export.py."""

from collections import Counter

import numpy as np
import pytest
import torch

from .conftest import SHARED_DATA
from .fast_path_helpers import SAMPLE_PER_TASK, run_graph, training_texts, validation_texts

pytest.importorskip("onnxruntime")


# Which texts int8 flips is noise of a few texts, which on 600 texts is a point of accuracy: the accuracy bounds
# (0.5 points, set on all 3,440 texts) get this much slack. Measured on this sample: topic lost 1.3 points
# with smoothing, 0.8 with the recheck; sentiment none.
FLIP_NOISE = 6 / SAMPLE_PER_TASK
RECHECK_MARGIN = 0.02


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_path):
    """all-MiniLM-L6-v2 fine-tuned briefly (640 rows, heads at a higher learning rate): accuracy clearly above the
    majority label on both tasks (next test), so that label agreement means something."""
    from sentence_multitask.cli import main

    out = tmp_path_factory.mktemp("fast-paths") / "model"
    main(["train", "--encoder", minilm_path,
          "--train_files", f"topic={SHARED_DATA / 'topic_train.jsonl'}",
          f"sentiment={SHARED_DATA / 'sentiment_train.jsonl'}",
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
