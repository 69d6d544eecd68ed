"""ONNX export of the whole model (encoder, pooling, every head in one graph) and an ONNX Runtime model with the
same `encode` / `predict` API. Needs the `onnx` extra: `pip install "sentence-multitask[onnx]"`.

    from sentence_multitask.onnx import export_onnx, OnnxSentenceMultiTask
    export_onnx(model, "exported", quantize=True,           # exported/onnx/model.onnx, model_quantized.onnx
                calibration_texts=training_texts[:500])     # smooth activation outliers and correct biases for int8
    fast = OnnxSentenceMultiTask.from_pretrained("exported", quantized=True)
    fast.predict(["The striker scored twice."])
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from transformers.utils import logging
from transformers.utils.logging import tqdm

from .batching_sentence_multitask import length_sorted_batches
from .configuration_sentence_multitask import MULTI_LABEL, REGRESSION, SINGLE_LABEL, SentenceMultiTaskConfig
from .inference_sentence_multitask import (
    SentenceInferenceMixin,
    check_texts,
    files_a_save_would_replace,
    load_tokenizer,
    serve,
)

if TYPE_CHECKING:  # the ONNX model runs without transformers' modeling stack
    from .modeling_sentence_multitask import SentenceMultiTaskModel

ONNX_FOLDER = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
# ONNX Runtime's fused SkipLayerNormalization and BiasGelu CPU kernels ran slower here than the LayerNormalization +
# Add and Gelu + Add they replace, with the same results (docs/onnx.md): those two fusions are left out. The attention
# fusion stays: it is the faster one.
SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")
# SmoothQuant's alpha: the share of each input channel's range moved into the weights before int8, chosen per product
# from these by simulated int8 error (one alpha for all products kept fewer labels).
SMOOTHING_ALPHAS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
# Channel ranges come from the maxima over the calibration texts: too few texts give ranges that are too low.
MIN_CALIBRATION_TEXTS = 100
# More texts than this are sampled down to it (seeded): calibration time grows with the texts, the channel maxima
# hardly do.
MAX_CALIBRATION_TEXTS = 512

logger = logging.get_logger(__name__)


def label_margin(probabilities) -> torch.Tensor:
    """Per text, the smallest gap, over tasks, between the probabilities of its two most likely labels."""
    return torch.stack([(top := p.topk(2, dim=-1).values)[:, 0] - top[:, 1] for p in probabilities]).min(0).values


def output_name(config: SentenceMultiTaskConfig, task: str) -> str:
    """The graph output of `task`: `logits_TASK` (single-label), `probabilities_TASK` (multi-label: sigmoid baked in)
    or `values_TASK` (regression: in the targets' units)."""
    prefix = {SINGLE_LABEL: "logits", MULTI_LABEL: "probabilities", REGRESSION: "values"}[config.task_type(task)]
    return f"{prefix}_{task}"


def _holds_another_model(folder: Path, model: SentenceMultiTaskModel) -> bool:
    """Whether `folder` holds a saved model other than `model`: not its own folder, nor an earlier export of it (the
    same tasks and bit-identical weights)."""
    if not (folder / "config.json").is_file():
        return False
    source = model.config.name_or_path
    if os.path.isdir(source) and folder.samefile(source):
        return False
    weights = folder / "model.safetensors"
    try:
        saved_tasks = SentenceMultiTaskConfig.from_pretrained(folder).tasks
    except (OSError, ValueError):
        return True
    if saved_tasks != model.config.tasks or not weights.is_file():
        return True
    from safetensors.torch import load_file

    saved, own = load_file(weights), model.state_dict()
    return saved.keys() != own.keys() or any(not torch.equal(saved[name], own[name].cpu()) for name in saved)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ImportError(f"ONNX support needs {module}: pip install \"sentence-multitask[onnx]\".") from error


class _Graph(nn.Module):
    """What the ONNX graph computes: token ids -> (embeddings, every task's output in config order, as `serve` gives
    it: logits, sigmoid probabilities or values in the targets' units)."""

    def __init__(self, model: SentenceMultiTaskModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        config = self.model.config
        return (output.embeddings, *(serve(config, task, output.logits[task]) for task in config.tasks))


def export_onnx(model: SentenceMultiTaskModel, output_dir: str | os.PathLike, quantize: bool = False,
                calibration_texts: Sequence[str] | None = None, opset: int = 17) -> Path:
    """
    Save `model` (as save_pretrained does) plus `onnx/model.onnx`: one graph with dynamic batch and sequence axes,
    fused by ONNX Runtime's BERT optimizer where the encoder is BERT-like; with `quantize`, also
    `onnx/model_quantized.onnx` (dynamic int8, per-channel weights). Returns the ONNX folder.

    `calibration_texts` (with `quantize`; a few hundred texts like those the model will see, such as a sample of its
    training texts; more than 512 are sampled down to 512) smooth the activations and correct the biases before
    quantizing (see `smooth_activations`): int8 then keeps more of fp32's labels (docs/onnx.md has the figures).

    The export runs on CPU in eval mode; `model` is left on its device and in its mode.
    """
    device, training = model.device, model.training
    try:
        return _export(model, Path(output_dir), quantize, calibration_texts, opset)
    finally:
        model.to(device).train(training)


def _export(model: SentenceMultiTaskModel, output_dir: Path, quantize: bool, calibration_texts: Sequence[str] | None,
            opset: int) -> Path:
    _require("onnx")
    _require("onnxruntime")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} is a file: the export writes a model folder; give a folder path (new or "
                                 "the model's own) as the output.")
    if calibration_texts is not None:
        if not quantize:
            raise ValueError("calibration_texts prepare the int8 graph: pass them with quantize=True.")
        calibration_texts = check_texts(calibration_texts)
        if len(calibration_texts) < MIN_CALIBRATION_TEXTS:
            raise ValueError(f"{len(calibration_texts)} calibration texts are too few to find each channel's range; "
                             f"pass at least {MIN_CALIBRATION_TEXTS} (a few hundred of the training texts, say).")
        if len(calibration_texts) > MAX_CALIBRATION_TEXTS:
            logger.info(f"Calibrating int8 on a sample of {MAX_CALIBRATION_TEXTS} of the {len(calibration_texts)} "
                        "calibration texts.")
            chosen = np.random.default_rng(0).choice(len(calibration_texts), MAX_CALIBRATION_TEXTS, replace=False)
            calibration_texts = [calibration_texts[i] for i in sorted(chosen)]
    if _holds_another_model(output_dir, model):
        raise FileExistsError(f"{output_dir} already holds another saved model, which the export would overwrite: "
                              "export into a new folder, into the folder the model was loaded from, or into one that "
                              "holds an earlier export of this model.")
    taken = files_a_save_would_replace(output_dir)
    if taken:
        raise FileExistsError(f"{output_dir} holds {', '.join(taken)}, which the export would overwrite (it is no saved "
                              "model). Export into a new folder.")
    model.save_pretrained(output_dir)
    folder = output_dir / ONNX_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "model.raw.onnx"

    # ONNX Runtime fuses attention only for the eager attention graph; dropout must be off (eval mode).
    previous = model.config._attn_implementation
    model.cpu().eval()
    model.config._attn_implementation = "eager"
    model.encoder.config._attn_implementation = "eager"
    try:
        dummy = model.tokenizer(["a short text", "a somewhat longer text for the export"], padding=True,
                                return_tensors="pt", return_token_type_ids=False)
        outputs = [output_name(model.config, task) for task in model.config.tasks]
        with torch.no_grad():
            torch.onnx.export(
                _Graph(model),
                (dummy["input_ids"], dummy["attention_mask"]),
                str(raw),
                input_names=["input_ids", "attention_mask"],
                output_names=["embeddings", *outputs],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "embeddings": {0: "batch"},
                    **{name: {0: "batch"} for name in outputs},
                },
                opset_version=opset,
                dynamo=False,
            )
    finally:
        model.config._attn_implementation = previous
        model.encoder.config._attn_implementation = previous

    fp32 = folder / FP32_FILE
    if model.config.encoder.model_type in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet"):
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        encoder = model.config.encoder
        fusions = FusionOptions("bert")
        fusions.enable_skip_layer_norm = fusions.enable_bias_gelu = False  # see SLOW_FUSIONS
        optimized = optimize_model(str(raw), model_type="bert", num_heads=encoder.num_attention_heads,
                                   hidden_size=encoder.hidden_size, opt_level=1, optimization_options=fusions)
        optimized.save_model_to_file(str(fp32))
        raw.unlink()
    else:
        raw.replace(fp32)
    if quantize:
        heads = head_products(fp32)
        source = fp32
        if calibration_texts is None:
            logger.warning("Quantizing without calibration_texts: int8 keeps fewer of fp32's labels (97-98 % measured); "
                           "pass a few hundred training texts (--calibration_file) to smooth the activations first.")
        else:
            source = folder / "model.smoothed.onnx"
            smooth_activations(fp32, source, model, calibration_texts, skip=set(heads))
        try:
            quantize_int8(source, folder / INT8_FILE, heads)
        finally:
            if source != fp32:
                source.unlink(missing_ok=True)
    return folder


def head_products(graph: Path) -> list[str]:
    """The names of the heads' products in an exported fp32 graph, which int8 leaves in fp32. The heads and the
    embedding lookup are a fraction of a percent of the compute: kept in fp32 they cost nothing and flip fewer labels.
    (The heads export as Gemm, which quantize_dynamic first rewrites into a MatMul named NAME_MatMul: both names.)"""
    onnx = _require("onnx")
    return [name for node in onnx.load(str(graph)).graph.node
            if node.op_type in ("Gemm", "MatMul") and not node.name.startswith("/model/encoder/")
            for name in (node.name, f"{node.name}_MatMul")]


def quantize_int8(source: Path, target: Path, keep: Collection[str]) -> None:
    """Dynamic int8 of the encoder's matrix products (per-channel int8 weights), all but the products in `keep`."""
    onnx = _require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=list(keep),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def smooth_activations(source: Path, target: Path, model: SentenceMultiTaskModel, texts: Sequence[str],
                       alphas: Sequence[float] = SMOOTHING_ALPHAS, skip: Collection[str] = (),
                       correct_bias: bool = True) -> None:
    """
    Prepare an fp32 ONNX graph for dynamic int8 with calibration `texts`, in two steps.

    SmoothQuant (Xiao et al., 2023, arXiv:2211.10438): before each matrix product X @ W that int8 will quantize,
    divide X's input channels by s and multiply W's rows by s, with s = max|X|^alpha / max|W|^(1 - alpha) per channel
    (max|X| over `texts`). In fp32 this computes what the graph did; but int8 gives each activation tensor one scale,
    and a few channels of MiniLM's layer norms reach 10-13x the median channel's range, leaving the others a few bits.
    Each product takes the alpha of `alphas` whose int8 result, simulated as ONNX Runtime quantizes (per-tensor uint8
    inputs with each batch's range, per-column int8 weights) on the calibration activations, lies closest to fp32's.
    The division is a Mul before the product, except before the attention output projection: its input is linear in
    the value projection, whose weight and bias columns take the division instead, at no cost.

    `correct_bias` (Nagel et al., 2019, arXiv:1906.04721): int8 weights shift each product's outputs by, on average,
    mean(X) @ (W - int8(W)); that shift, measured on `texts`, is added to the product's bias. Unlike smoothing, this
    changes the fp32 graph's results (by the int8 error it expects): the graph is meant only to be quantized.
    """
    onnx = _require("onnx")
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    producers = {output: node for node in graph.node for output in node.output}
    targets = {node.name: node for node in graph.node if node.op_type in ("MatMul", "Attention")
               and node.name and node.name not in skip and len(node.input) > 1 and node.input[1] in weights
               and uses[node.input[1]] == 1 and len(weights[node.input[1]].dims) == 2}
    stats = _activation_stats(graph_model, sorted({node.input[0] for node in targets.values()}), model, texts)
    arrays = {}  # initializer name -> its new value

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(weights[name]).astype(np.float64)
        return arrays[name]

    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    biases = {name: _bias_name(node, consumers, weights, uses) for name, node in targets.items()}
    smoothed_means, muls = {}, {}
    for name, node in targets.items():
        channels = stats[node.input[0]]
        s = _best_scale(channels, array(node.input[1]), alphas)
        array(node.input[1])[:] *= s[:, None]
        smoothed_means[name] = channels.mean / s
        attention = producers.get(node.input[0])
        if attention is not None and attention.name in targets and biases[attention.name] and uses[node.input[0]] == 1:
            # The input is softmax(Q K^T) @ V, V = X @ W_v + b_v: dividing W_v's and b_v's columns by s divides it.
            value = slice(2 * array(attention.input[1]).shape[1] // 3, None)
            array(attention.input[1])[:, value] /= s
            array(biases[attention.name])[value] /= s
        else:
            divisor = f"{name}/smooth_scale"
            graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), divisor))
            muls[name] = helper.make_node("Mul", [node.input[0], divisor], [f"{name}/smoothed_input"],
                                          name=f"{name}/smooth")
            node.input[0] = muls[name].output[0]
    if correct_bias:
        for name, node in targets.items():
            if biases[name]:
                matrix = array(node.input[1])
                array(biases[name])[:] += smoothed_means[name] @ (matrix - _int8(matrix))
    for name, value in arrays.items():
        weights[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [new for node in graph.node for new in ((muls[node.name], node) if node.name in muls else (node,))]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(graph_model, str(target))


def _bias_name(node, consumers: dict, weights: dict, uses: Counter) -> str | None:
    """The initializer holding `node`'s bias, if no other node reads it: the Attention's third input, or the other
    input of the Add that alone reads a MatMul's output."""
    if node.op_type == "Attention":
        name = node.input[2] if len(node.input) > 2 else None
    else:
        adds = consumers.get(node.output[0], [])
        name = next((other for other in adds[0].input if other != node.output[0]), None) \
            if len(adds) == 1 and adds[0].op_type == "Add" else None
    return name if name in weights and uses[name] == 1 and len(weights[name].dims) == 1 else None


def _int8(matrix: np.ndarray) -> np.ndarray:
    """`matrix` after ONNX Runtime's per-column symmetric int8 quantization (quantize_dynamic, per_channel)."""
    scale = np.abs(matrix).max(0) / 127
    scale[scale == 0] = 1
    return np.round(matrix / scale) * scale


def _best_scale(channels: _Channels, matrix: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """The smoothing scales, of those `alphas` give, with the smallest simulated int8 error on the calibration rows."""
    best, best_error = None, np.inf
    weight_range = np.maximum(np.abs(matrix).max(1), 1e-5)
    exact = [rows @ matrix for _, _, rows in channels.batches]
    total = sum(float((value ** 2).sum()) for value in exact) or 1.0
    for alpha in alphas:
        s = np.clip(np.maximum(channels.absmax, 1e-5) ** alpha / weight_range ** (1 - alpha), 1e-3, None)
        quantized = _int8(matrix * s[:, None])
        error = 0.0
        for (low, high, rows), reference in zip(channels.batches, exact):
            # DynamicQuantizeLinear: uint8 over the whole batch's range, 0 included, zero point rounded
            low, high = min(0.0, float((low / s).min())), max(0.0, float((high / s).max()))
            step = (high - low) / 255 or 1.0
            zero = np.clip(np.round(-low / step), 0, 255)
            approx = (np.clip(np.round(rows / s / step) + zero, 0, 255) - zero) * step @ quantized
            error += float(((approx - reference) ** 2).sum())
        if error / total < best_error:
            best, best_error = s, error / total
    return best


class _Channels:
    """Per input channel of one tensor over the calibration texts: max |value|, mean, and per batch (min, max,
    a sample of rows)."""

    def __init__(self):
        self.absmax, self.total, self.count, self.batches = 0.0, 0.0, 0, []

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    def add(self, value: np.ndarray, rng: np.random.Generator, rows: int = 64):
        value = value.reshape(-1, value.shape[-1]).astype(np.float64)
        self.absmax = np.maximum(self.absmax, np.abs(value).max(0))
        self.total = self.total + value.sum(0)
        self.count += len(value)
        sample = value[rng.choice(len(value), min(rows, len(value)), replace=False)]
        self.batches.append((value.min(0), value.max(0), sample))


def _activation_stats(graph_model, names: list[str], model: SentenceMultiTaskModel, texts: Sequence[str]) -> dict:
    """`_Channels` of each named tensor of the graph over `texts`, batched as `predict` batches them (padding
    included: int8 quantizes it too)."""
    onnx = _require("onnx")
    ort = _require("onnxruntime")

    probe = onnx.ModelProto()
    probe.CopyFrom(graph_model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(SLOW_FUSIONS))
    runner = OnnxSentenceMultiTask(session, model.config, model.tokenizer)
    stats = {name: _Channels() for name in names}
    rng = np.random.default_rng(0)
    for _, inputs in runner._id_batches(runner._tokenize(texts, None), 32, False):
        values = session.run(names, {name: tensor.numpy() for name, tensor in inputs.items()})
        for name, value in zip(names, values):
            stats[name].add(value, rng)
    return stats


class OnnxSentenceMultiTask(SentenceInferenceMixin):
    """A model exported with `export_onnx`, run by ONNX Runtime, with the `encode` / `predict` API of
    `SentenceMultiTaskModel` (same batching, truncation and outputs).

    With `quantized=True` and `recheck_margin` > 0, `predict` / `predict_proba` run every text through the int8 graph,
    then run again through the fp32 graph the texts where, on some single-label task, the two most likely labels lie
    closer than `recheck_margin` in probability; those texts get the fp32 outputs. Int8 changes a label almost only
    there (docs/onnx.md has the measured agreement). Multi-label and regression outputs are not rechecked. `encode`
    never rechecks.
    """

    # ONNX Runtime runs fastest on smaller batches than PyTorch.
    cpu_batch_tokens = 1024
    training = False
    device = torch.device("cpu")

    def __init__(self, session, config: SentenceMultiTaskConfig, tokenizer, fp32_session=None,
                 recheck_margin: float = 0.0):
        self.session = session
        self.fp32_session = fp32_session
        self.recheck_margin = recheck_margin
        self.config = config
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, quantized: bool = False, threads: int | None = None,
                        recheck_margin: float = 0.0):
        ort = _require("onnxruntime")
        path = Path(path)
        recheck_margin = float(recheck_margin)
        if not 0 <= recheck_margin <= 1:
            raise ValueError(f"recheck_margin is a difference of probabilities, 0 to 1 (0: no recheck), got {recheck_margin}.")
        if recheck_margin and not quantized:
            raise ValueError("recheck_margin reruns int8 results in fp32: it needs quantized=True (the fp32 model has "
                             "nothing to recheck).")
        files = [path / ONNX_FOLDER / (INT8_FILE if quantized else FP32_FILE)]
        if recheck_margin:
            files.append(path / ONNX_FOLDER / FP32_FILE)
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(
                    f"{file} does not exist; create it with `sentence-multitask export-onnx{' --quantize' if quantized else ''}"
                    f" --model MODEL --output {path}`"
                    + (" (or run int8 without the fp32 recheck: recheck_margin=0, no --recheck_margin)."
                       if file.name == FP32_FILE and quantized else "."))
        config = SentenceMultiTaskConfig.from_pretrained(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        sessions = [ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"],
                                         disabled_optimizers=list(SLOW_FUSIONS)) for file in files]
        return cls(sessions[0], config, load_tokenizer(path, config.encoder),
                   fp32_session=sessions[1] if len(sessions) > 1 else None, recheck_margin=recheck_margin)

    @property
    def tokenizer(self):
        return self._tokenizer

    def _run(self, texts, batch_size, max_length, show_progress_bar, with_heads: bool, precision: str | None = None):
        if precision not in (None, "fp32"):
            raise ValueError("The ONNX model runs at the precision it was exported with; leave precision unset.")
        texts = check_texts(texts)
        ids = self._tokenize(texts, max_length) if texts else []  # the tokenizer rejects an empty list
        embeddings, logits = self._outputs(self.session, ids, batch_size, show_progress_bar)
        single = [task for task in logits if self.config.task_type(task) == SINGLE_LABEL]
        if with_heads and self.fp32_session is not None and ids and single:
            margin = label_margin(torch.from_numpy(logits[task]).softmax(-1) for task in single)
            redo = torch.nonzero(margin < self.recheck_margin).flatten().numpy()
            if redo.size:
                again, again_logits = self._outputs(self.fp32_session, [ids[i] for i in redo], batch_size, False)
                embeddings[redo] = again
                for task, values in again_logits.items():
                    logits[task][redo] = values
        return torch.from_numpy(embeddings), {task: torch.from_numpy(values) for task, values in logits.items()}

    def _outputs(self, session, ids: list[list[int]], batch_size: int, show_progress_bar: bool | None):
        """Embeddings and per-task outputs (numpy, input order; see `output_name`) of pre-tokenised texts."""
        embeddings = np.empty((len(ids), self.config.hidden_size), dtype=np.float32)
        logits = {task: np.empty((len(ids), len(labels)), dtype=np.float32) for task, labels in self.config.tasks.items()}
        names = [output.name for output in session.get_outputs()]
        for positions, inputs in self._id_batches(ids, batch_size, show_progress_bar):
            outputs = dict(zip(names, session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})))
            embeddings[positions] = outputs["embeddings"]
            for task, values in logits.items():
                values[positions] = outputs[output_name(self.config, task)]
        return embeddings, logits

    def _id_batches(self, ids: list[list[int]], batch_size: int, show_progress_bar: bool | None):
        """Batches of similar length, as the PyTorch model makes them, from token ids."""
        return length_sorted_batches(ids, list, batch_size, pad_id=self.tokenizer.pad_token_id or 0, device=self.device,
                                     token_cap=self.cpu_batch_tokens, show_progress_bar=show_progress_bar,
                                     progress_bar=tqdm)
