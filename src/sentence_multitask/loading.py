"""The model as the commands, the Ray Data actors and the server load it: a saved folder or Hub id on a backend
(torch, onnx, onnx-int8), device, precision and number of threads, with the options that do not go together refused
by name."""

from __future__ import annotations


def load_model(path: str | None, *, backend: str = "torch", device: str | None = None, precision: str | None = "fp32",
               threads: int | None = None, recheck_margin: float | None = None):
    """
    The model at `path` (a saved folder or Hub id; None: the default encoder with unused reference heads, for
    embeddings) on `backend` ("torch", "onnx" or "onnx-int8"), `device` (default: cuda when available), `precision`
    and `threads`, as the commands load it. Options that do not go together raise ValueError naming the fix.
    """
    from .inference_sentence_multitask import not_a_model_folder

    problem = path and not_a_model_folder(path)
    if problem:
        problem = "a file, not a directory" if problem == "is a file" else "no such directory"
        raise ValueError(f"{path}: {problem}; --model takes a directory saved by `sentence-multitask train` (or "
                         "save_pretrained) or a Hub repo id.")
    if recheck_margin and backend != "onnx-int8":
        raise ValueError("--recheck_margin applies to --backend onnx-int8 only.")
    if backend in ("onnx", "onnx-int8"):
        if path is None:
            raise ValueError("--backend onnx runs a saved model's ONNX graph (see export-onnx): add --model DIR.")
        if device not in (None, "cpu"):
            raise ValueError(f"--device {device}: an ONNX model runs on CPU (onnxruntime's CPU provider); "
                             "drop --device or use --backend torch.")
        if precision in ("bf16", "fp16"):
            raise ValueError(f"--precision {precision}: an ONNX model runs at the precision it was exported "
                             "with; drop --precision or use --backend torch.")
        from .onnx import OnnxSentenceMultiTask

        return OnnxSentenceMultiTask.from_pretrained(path, quantized=backend == "onnx-int8", threads=threads,
                                                     recheck_margin=recheck_margin or 0.0)
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = check_device(device) if device else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or "fp32"
    from .modeling_sentence_multitask import SentenceMultiTaskModel

    if path is None:
        from . import REFERENCE_TASKS

        model = SentenceMultiTaskModel.from_encoder(tasks=REFERENCE_TASKS)  # heads unused for embeddings
    else:
        # The package's own class: same code as the model's remote code, without copying it into the modules cache.
        model = SentenceMultiTaskModel.from_pretrained(path)
    model.inference_precision = precision
    return model.to(device)


def check_device(name: str) -> str:
    """`name` when torch can put a tensor there; else an error with torch's reason."""
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError, ValueError) as error:  # unknown name / no such device / torch built without it
        raise ValueError(f"--device {name}: {str(error).splitlines()[0]} (use cpu, cuda or cuda:N where this "
                         "torch has them).") from None
    return name
