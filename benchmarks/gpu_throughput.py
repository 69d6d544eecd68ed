"""Streaming `embed` / `predict` throughput on a GPU against sentence-transformers `encode`, in one process.

    python benchmarks/gpu_throughput.py --texts 200000 --precision bf16

The texts are those of benchmarks/scale.py (the shared validation texts, repeated), written to Parquet. Each round
times, over the same texts: sentence-transformers `encode` of all-MiniLM-L6-v2 as users call it (fp32, batch 32) and
at the same precision and batch size as ours; this package's in-memory `encode`; and streaming `embed` and `predict`
(Parquet in, Parquet out). Rates are texts/s; ratios are medians over rounds of (path / sentence-transformers fp32) in
that round. `--device cpu --texts 500` checks the script where there is no GPU. Writes
benchmarks/results/gpu_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import build_models, real_texts, write_parquet  # noqa: E402


def timed(function) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--chunk_rows", type=int, default=50_000)
    parser.add_argument("--output", default=str(HERE / "results" / "gpu_throughput.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from sentence_multitask import local_default_encoder
    from sentence_multitask.loading import load_model
    from sentence_multitask.streaming import stream_to_output

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    texts = real_texts(args.texts)
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        _, real = build_models(folder)
        source = folder / "texts.parquet"
        write_parquet(source, texts)
        model = load_model(real, device=args.device, precision=args.precision)
        anchor = SentenceTransformer(local_default_encoder(), device=args.device)
        anchor_low = SentenceTransformer(local_default_encoder(), device=args.device).to(dtype)
        paths = {
            "sentence_transformers_fp32_batch32": lambda: anchor.encode(texts, batch_size=32),
            f"sentence_transformers_{args.precision}_batch{args.batch_size}":
                lambda: anchor_low.encode(texts, batch_size=args.batch_size),
            "encode_in_memory": lambda: model.encode(texts, batch_size=args.batch_size, show_progress_bar=False),
        }
        for name, embed in (("streaming_embed", True), ("streaming_predict", False)):
            def stream(embed=embed, name=name):
                output = folder / f"{name}-{time.monotonic_ns()}.parquet"
                stream_to_output(model, str(source), str(output), embed=embed, batch_size=args.batch_size,
                                 chunk_rows=args.chunk_rows, keep_columns=["id"], progress=False)
            paths[name] = stream
        for path in paths.values():  # an untimed round first: kernels, caches, the tokenizer
            path()
        ratios: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            round_rates = {name: len(texts) / timed(path) for name, path in paths.items()}
            for name, rate in round_rates.items():
                rates.setdefault(name, []).append(rate)
                ratios.setdefault(name, []).append(rate / round_rates["sentence_transformers_fp32_batch32"])
            print(json.dumps({name: round(rate) for name, rate in round_rates.items()}), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    result = {"texts": len(texts), "rounds": args.rounds, "device": device, "precision": args.precision,
              "batch_size": args.batch_size, "chunk_rows": args.chunk_rows,
              "texts_per_s": {name: round(max(values)) for name, values in rates.items()},
              "ratio_to_sentence_transformers_fp32_batch32": {name: round(statistics.median(values), 2)
                                                               for name, values in ratios.items()},
              "command": " ".join(["python benchmarks/gpu_throughput.py", *sys.argv[1:]])}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
