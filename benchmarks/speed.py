"""Inference and training speed against sentence-transformers, measured side by side.

    python benchmarks/speed.py --model experiments/quality/results/runs/multitask/model

Timing runs in ONE process, in alternating rounds over the same texts (the shared validation data plus a share of
long texts); each ratio is the median over rounds of (path's sentences/s) / (sentence-transformers' sentences/s in
that round). Peak memory (RSS) is measured per path in a fresh process, cold start by timing the CLI. Writes
benchmarks/results/speed.md and speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("SHARED_DATA", REPO.parent / "shared" / "data"))
TASK_FILES = {"topic": "topic_validation.jsonl", "sentiment": "sentiment_validation.jsonl"}
TRAIN_FILES = {"topic": "topic_train.jsonl", "sentiment": "sentiment_train.jsonl"}
RECHECK_MARGIN = 0.01
FLOPS_PER_TOKEN = 21.2e6  # 2 x 10.6 M non-embedding weights of MiniLM-L6 (attention adds ~4 % on short texts)


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def corpus(n: int, long_share: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = [row["text"] for name in TASK_FILES.values() for row in read(DATA / name)]
    chosen = [texts[i] for i in rng.choice(len(texts), size=n, replace=False)]
    n_long = int(long_share * n)
    for i in range(n_long):  # long texts: several joined validation texts, 150-300 tokens
        chosen[i] = " ".join(texts[j] for j in rng.choice(len(texts), size=int(rng.integers(8, 14))))
    rng.shuffle(chosen)
    return chosen


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def rss_mb() -> float:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it does not carry the parent's peak across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_paths(model_dir: str | None, onnx_dir: Path):
    """name -> (callable(texts) -> embeddings or None, kind). Loads everything once."""
    from sentence_transformers import SentenceTransformer

    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel, local_default_encoder
    from sentence_multitask.onnx import OnnxSentenceMultiTask, export_onnx

    encoder_path = local_default_encoder()
    anchor = SentenceTransformer(encoder_path, device="cpu")
    model = (SentenceMultiTaskModel.from_pretrained(model_dir) if model_dir
             else SentenceMultiTaskModel.from_encoder(encoder_path, tasks=REFERENCE_TASKS)).eval()
    model.config.max_length = anchor.max_seq_length  # same truncation as the anchor (256 tokens)
    singles = [SentenceMultiTaskModel.from_encoder(encoder_path, tasks={task: labels}).eval()
               for task, labels in model.config.tasks.items()]
    # Afresh each run (an earlier export may be of another model or code): int8 smoothed with 512 training texts
    # (never the validation texts the agreement is measured on), and plain int8 without calibration texts.
    training = [row["text"] for name in TRAIN_FILES.values() for row in read(DATA / name)]
    calibration = [training[i] for i in np.random.default_rng(0).choice(len(training), 512, replace=False)]
    plain_dir = onnx_dir.with_name(onnx_dir.name + "-plain")
    for folder in (onnx_dir, plain_dir):  # the benchmark's own scratch folders: export_onnx never overwrites a model
        shutil.rmtree(folder, ignore_errors=True)
    export_onnx(model, onnx_dir, quantize=True, calibration_texts=calibration)
    export_onnx(model, plain_dir, quantize=True)
    onnx_models = {  # name in the agreement table -> model
        "ONNX fp32": OnnxSentenceMultiTask.from_pretrained(onnx_dir),
        "ONNX int8, no calibration": OnnxSentenceMultiTask.from_pretrained(plain_dir, quantized=True),
        "ONNX int8, smoothed": OnnxSentenceMultiTask.from_pretrained(onnx_dir, quantized=True),
        f"ONNX int8, smoothed, recheck_margin {RECHECK_MARGIN}":
            OnnxSentenceMultiTask.from_pretrained(onnx_dir, quantized=True, recheck_margin=RECHECK_MARGIN),
    }
    paths = {
        "sentence-transformers encode (anchor)": lambda t: anchor.encode(t, batch_size=32, normalize_embeddings=True),
        "ours encode fp32": lambda t: model.encode(t, batch_size=32),
        "ours predict fp32 (both heads)": lambda t: model.predict(t, batch_size=32),
        "ours encode bf16": lambda t: model.encode(t, batch_size=32, precision="bf16"),
        "ours predict bf16 (both heads)": lambda t: model.predict(t, batch_size=32, precision="bf16"),
        **{f"ours predict {name}": onnx.predict for name, onnx in onnx_models.items()},  # batch_size 32 by default
        "two single-task models, one after the other": lambda t: [single.predict(t, batch_size=32) for single in singles],
    }
    return paths, model, anchor, onnx_models


def agreement(model, anchor, onnx_models, model_dir) -> dict:
    """Embedding cosine to fp32 / sentence-transformers, label agreement and accuracy on the validation texts."""
    from sentence_multitask.onnx import label_margin

    rows = {task: read(DATA / name) for task, name in TASK_FILES.items()}
    texts = [row["text"] for task_rows in rows.values() for row in task_rows]
    reference = model.encode(texts, batch_size=64)
    anchor_embeddings = anchor.encode(texts, batch_size=64, normalize_embeddings=True)
    base = model.predict_proba(texts, batch_size=64)
    out = {"texts": len(texts), "trained_heads": bool(model_dir),
           "ours fp32 vs sentence-transformers": _cosines(reference, anchor_embeddings)}
    variants = {
        "bf16": (model.encode(texts, batch_size=64, precision="bf16"), model.predict_proba(texts, batch_size=64, precision="bf16")),
        # encode never rechecks: the recheck row's cosines are smoothed int8's
        **{name: (onnx.encode(texts, batch_size=64), onnx.predict_proba(texts, batch_size=64))
           for name, onnx in onnx_models.items()},
    }
    for name, (embeddings, probabilities) in variants.items():
        entry = {"cosine to fp32": _cosines(embeddings, reference)}
        for task, task_rows in rows.items():
            labels = model.config.tasks[task]
            truth = np.array([labels.index(row["label"]) for row in task_rows])
            offset = 0 if task == "topic" else len(rows["topic"])
            window = slice(offset, offset + len(task_rows))
            fp32_pred = base[task][window].argmax(-1).numpy()
            pred = probabilities[task][window].argmax(-1).numpy()
            all_same = float((probabilities[task].argmax(-1) == base[task].argmax(-1)).float().mean())
            entry[task] = {"label agreement (all texts)": round(all_same, 5),
                           "accuracy": round(float((pred == truth).mean()), 4),
                           "fp32 accuracy": round(float((fp32_pred == truth).mean()), 4)}
        out[name] = entry
    gaps = label_margin(variants["ONNX int8, smoothed"][1].values())
    for name, onnx in onnx_models.items():
        if onnx.recheck_margin:
            out[name]["rechecked share"] = round(float((gaps < onnx.recheck_margin).float().mean()), 4)
    return out


def _cosines(a, b) -> dict:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}


def training_speed(steps: int, model_dir: str | None) -> dict:
    """Examples/s of full fine-tuning (batch 32, max length 128) with and without length grouping, and, on a CPU with
    native bf16, length-grouped with bf16 mixed precision (`--bf16 true --use_cpu true`)."""
    runs = {"random": ("random", []), "group_by_length": ("group_by_length", [])}
    if torch.cpu._is_avx512_bf16_supported():
        runs["group_by_length + bf16"] = ("group_by_length", ["--bf16", "true", "--use_cpu", "true"])
    result = {}
    for name, (strategy, extra) in runs.items():
        code = (
            "import json, sys, time, resource\n"
            "from sentence_multitask.training import main\n"
            f"out = sys.argv[1]\n"
            "start = time.time()\n"
            f"main(['--train_files', 'topic={DATA / 'topic_train.jsonl'}', 'sentiment={DATA / 'sentiment_train.jsonl'}',"
            f" '--labels', 'topic=sports,health,tech,finance,education,other', 'sentiment=negative,neutral,positive',"
            f" '--max_steps', '{steps}', '--per_device_train_batch_size', '32', '--max_length', '128',"
            f" '--train_sampling_strategy', '{strategy}', '--task_sampling', 'proportional', '--eval_strategy', 'no',"
            f" '--save_strategy', 'no', '--output_dir', out, '--overwrite_model', '--disable_tqdm', 'true',"
            f" '--logging_steps', '1000'] + {extra!r})\n"
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024\n"
            "print('RESULT', json.dumps({'rss_mb': hwm}))\n"
        )
        out_dir = HERE / "results" / f"train-{name.replace(' + ', '-')}"
        start = time.time()
        completed = subprocess.run([sys.executable, "-c", code, str(out_dir)], capture_output=True, text=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if completed.returncode:
            raise RuntimeError(completed.stderr[-3000:])
        runtime = json.loads((out_dir / "train_results.json").read_text())["train_runtime"]
        rss = json.loads(completed.stdout.split("RESULT ")[1].splitlines()[0])["rss_mb"]
        result[name] = {"examples_per_s": round(steps * 32 / runtime, 1), "train_runtime_s": runtime,
                        "peak_rss_mb": round(rss), "wall_s": round(time.time() - start, 1)}
    result["speed-up"] = round(result["group_by_length"]["examples_per_s"] / result["random"]["examples_per_s"], 2)
    if "group_by_length + bf16" in result:
        result["speed-up with bf16"] = round(result["group_by_length + bf16"]["examples_per_s"]
                                             / result["random"]["examples_per_s"], 2)
    result["padded_tokens_per_batch"] = padding_bound()
    return result


def padding_bound(batch_size: int = 32, max_length: int = 128) -> dict:
    """Tokens per batch (padding included) that the Trainer's random batches and our length-grouped sampler feed
    the model on the shared training data: their ratio bounds what length grouping alone can gain."""
    from transformers import AutoTokenizer

    from sentence_multitask import local_default_encoder
    from sentence_multitask.sampling import MultiTaskSampler

    tokenizer = AutoTokenizer.from_pretrained(local_default_encoder())
    texts = [row["text"] for name in ("topic_train.jsonl", "sentiment_train.jsonl") for row in read(DATA / name)]
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    sources = np.zeros(len(lengths), dtype=np.int64)

    def padded(order) -> float:
        batches = [lengths[order[i : i + batch_size]] for i in range(0, len(order) - batch_size + 1, batch_size)]
        return float(np.mean([batch.max() * len(batch) for batch in batches]))

    random_order = np.random.default_rng(0).permutation(len(lengths))
    grouped = list(MultiTaskSampler(sources, lengths, batch_size, "proportional", group_by_length=True))
    out = {"real": round(float(lengths.mean()) * batch_size, 1), "random": round(padded(random_order), 1),
           "group_by_length": round(padded(np.array(grouped)), 1)}
    out["random / real"] = round(out["random"] / out["real"], 2)
    return out


def cold_start(model_dir: str, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sentence_multitask.cli", "predict", "--model", model_dir,
                        "The striker scored twice in the final."], capture_output=True, check=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 2), "all_s": [round(t, 2) for t in times]}


def memory_of(path_name: str, args) -> float:
    """Peak RSS (MB) of a fresh process that loads what one path needs and runs it once on the corpus."""
    completed = subprocess.run(
        [sys.executable, __file__, "--memory-path", path_name, "--texts", str(args.texts), "--long-share",
         str(args.long_share)] + (["--model", args.model] if args.model else []),
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if completed.returncode:
        raise RuntimeError(completed.stderr[-2000:])
    return float(completed.stdout.strip().splitlines()[-1])


def memory_child(args) -> None:
    texts = corpus(args.texts, args.long_share)
    if args.memory_path == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        from sentence_multitask import local_default_encoder

        SentenceTransformer(local_default_encoder(), device="cpu").encode(texts, batch_size=32)
    else:
        from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel, local_default_encoder

        model = (SentenceMultiTaskModel.from_pretrained(args.model) if args.model
                 else SentenceMultiTaskModel.from_encoder(local_default_encoder(), tasks=REFERENCE_TASKS))
        model.config.max_length = 256
        model.predict(texts, batch_size=32)
    print(rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Trained model directory (label agreement needs trained heads).")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--long-share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--memory-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_path:
        return memory_child(args)

    from sentence_multitask.onnx import ONNX_FOLDER  # noqa: F401 - fail early without the onnx extra

    texts = corpus(args.texts, args.long_share)
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    paths, model, anchor, onnx_models = build_paths(args.model, results_dir / "onnx-model")
    tokens = sum(len(ids) for ids in model._tokenize(texts, None))
    for run in paths.values():  # warm-up
        run(texts[:64])
    rates: dict[str, list[float]] = {name: [] for name in paths}
    # The floor is the best matmul rate seen: measured once per round, since one measurement can land in a slow spell
    # of this shared machine (one run measured 134 GFLOP/s in fp32 against 213-327 in others).
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    measured: dict[str, list[float]] = {name: [] for name in dtypes}
    for _ in range(args.rounds):
        for name, dtype in dtypes.items():
            measured[name].append(matmul_rate(dtype))
        for name, run in paths.items():
            start = time.perf_counter()
            run(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    floors = {dtype: max(values) for dtype, values in measured.items()}
    anchor_name = next(iter(paths))
    table = []
    for name, values in rates.items():
        ratios = [value / base for value, base in zip(values, rates[anchor_name])]
        floor = floors["bf16" if "bf16" in name else "fp32"]
        floor_rate = floor / FLOPS_PER_TOKEN / (tokens / len(texts))
        table.append({"path": name, "sentences_per_s": round(statistics.median(values), 1),
                      "ratio": round(statistics.median(ratios), 2),
                      "ratio_per_round": [round(ratio, 2) for ratio in ratios],
                      "floor_fraction": round(statistics.median(values) / floor_rate, 2) if "ONNX" not in name else None})
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "texts": len(texts), "mean_tokens": round(tokens / len(texts), 1), "rounds": args.rounds,
        "matmul_gflops": {k: round(v / 1e9) for k, v in floors.items()},
        "matmul_gflops_per_round": {k: [round(v / 1e9) for v in values] for k, values in measured.items()},
        "table": table,
        "agreement": agreement(model, anchor, onnx_models, args.model),
        "peak_rss_mb": {"sentence-transformers encode": round(memory_of("sentence-transformers", args)),
                        "ours predict fp32": round(memory_of("ours", args))},
    }
    if args.model:
        report["cold_start_cli_predict"] = cold_start(args.model)
    if not args.skip_training:
        report["training"] = training_speed(args.train_steps, args.model)
    (results_dir / "speed.json").write_text(json.dumps(report, indent=2))
    (results_dir / "speed.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}; {report['texts']} texts (mean {report['mean_tokens']} tokens), "
             f"{report['rounds']} alternating rounds; matmul floor {report['matmul_gflops']} GFLOP/s (best of "
             f"{report['rounds']} measurements, one per round).", "",
             "| path | sentences/s | ratio to sentence-transformers (per-round range) | fraction of floor |",
             "|---|---|---|---|"]
    for row in report["table"]:
        floor = f"{row['floor_fraction']:.2f}" if row["floor_fraction"] is not None else "-"
        spread = row.get("ratio_per_round") or [row["ratio"]]
        lines.append(f"| {row['path']} | {row['sentences_per_s']} | {row['ratio']:.2f}x ({min(spread):.2f}-{max(spread):.2f}) "
                     f"| {floor} |")
    rows = {row["path"]: row.get("ratio_per_round") for row in report["table"]}
    multi, singles = rows.get("ours predict fp32 (both heads)"), rows.get("two single-task models, one after the other")
    if multi and singles:
        per_round = [a / b for a, b in zip(multi, singles)]
        lines += ["", f"One multi-task model vs two single-task models (both heads, fp32): "
                      f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f}), the median "
                      f"of per-round ratios."]
    lines += ["", "Agreement on the validation texts (" + str(report["agreement"]["texts"]) + "): ", "",
              "| variant | cosine to fp32 (mean / min) | topic labels same | sentiment labels same | topic acc (fp32) | sentiment acc (fp32) |",
              "|---|---|---|---|---|---|"]
    for name, entry in report["agreement"].items():
        if not isinstance(entry, dict) or "cosine to fp32" not in entry:
            continue
        lines.append(
            f"| {name} | {entry['cosine to fp32']['mean']:.5f} / {entry['cosine to fp32']['min']:.5f} | "
            f"{entry['topic']['label agreement (all texts)']:.4f} | {entry['sentiment']['label agreement (all texts)']:.4f} | "
            f"{entry['topic']['accuracy']} ({entry['topic']['fp32 accuracy']}) | "
            f"{entry['sentiment']['accuracy']} ({entry['sentiment']['fp32 accuracy']}) |")
    for name, entry in report["agreement"].items():
        if isinstance(entry, dict) and "rechecked share" in entry:
            lines += ["", (f"{name}: {100 * entry['rechecked share']:.1f} % of the validation texts rechecked in "
                           "fp32; `encode` never rechecks, so its cosines are smoothed int8's.")]
    st = report["agreement"]["ours fp32 vs sentence-transformers"]
    lines += ["", f"ours fp32 vs sentence-transformers embeddings (same weights only when --model is not given): "
                  f"cosine mean {st['mean']}, min {st['min']}.",
              f"Peak RSS: {report['peak_rss_mb']}."]
    if "cold_start_cli_predict" in report:
        lines.append(f"Cold start of `sentence-multitask predict --model DIR \"one sentence\"`: "
                     f"{report['cold_start_cli_predict']['median_s']} s (median of 3).")
    if "training" in report:
        t = report["training"]
        lines.append(f"Training (full fine-tune, batch 32, max length 128): random batches {t['random']['examples_per_s']} "
                     f"examples/s, length-grouped {t['group_by_length']['examples_per_s']} examples/s "
                     f"({t['speed-up']}x); peak RSS {t['group_by_length']['peak_rss_mb']} MB.")
        if "group_by_length + bf16" in t:
            lines.append(f"Length-grouped with bf16 mixed precision (`--bf16 true --use_cpu true`): "
                         f"{t['group_by_length + bf16']['examples_per_s']} examples/s ({t['speed-up with bf16']}x random "
                         f"fp32); peak RSS {t['group_by_length + bf16']['peak_rss_mb']} MB.")
        if "padded_tokens_per_batch" in t:
            p = t["padded_tokens_per_batch"]
            lines.append(f"Tokens per training batch, padding included: random {p['random']}, length-grouped "
                         f"{p['group_by_length']}, real tokens {p['real']}: grouping can save at most "
                         f"{p['random / real']}x of the work on this data.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
