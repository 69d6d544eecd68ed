"""`predict` on CPU with texts batched a window at a time (the next window prepared in a background thread) against
one window for the whole call, real all-MiniLM-L6-v2, one process, alternating rounds.

    python benchmarks/windows.py --texts 20000

Writes benchmarks/results/windows.json: texts/s per round and the ratio of the best rounds (windows / one window),
and what the host alone prepares (tokenise, sort, pad, tensors; batches of 512, no forward pass): the rate a GPU
would wait on without the overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scale import real_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output", default=str(HERE / "results" / "windows.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm.auto import tqdm

    from sentence_multitask import SentenceMultiTaskModel, local_default_encoder
    from sentence_multitask import batching_sentence_multitask as batching

    model = SentenceMultiTaskModel.from_encoder(local_default_encoder(), tasks={"topic": ["a", "b", "c"]}).eval()
    texts = real_texts(args.texts)
    paths = {f"windows_of_{batching.SORT_WINDOW}": batching.SORT_WINDOW, "one_window": len(texts)}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, window in paths.items():
            batching.SORT_WINDOW = window
            start = time.perf_counter()
            model.predict(texts, batch_size=args.batch_size, show_progress_bar=False)
            rates[name].append(round(len(texts) / (time.perf_counter() - start), 1))
    windowed, whole = (max(values) for values in rates.values())
    batching.SORT_WINDOW = paths[next(iter(paths))]
    start = time.perf_counter()
    batches = batching.length_sorted_batches(texts, lambda chunk: model._tokenize(chunk, None), 512, pad_id=0,
                                             device="cpu", token_cap=None, show_progress_bar=False, progress_bar=tqdm)
    prepared = sum(len(positions) for positions, _ in batches)
    host = round(prepared / (time.perf_counter() - start), 1)
    report = {"texts": len(texts), "batch_size": args.batch_size, "texts_per_s": rates,
              "ratio_best_windows_to_one_window": round(windowed / whole, 3),
              "host_prepared_texts_per_s_batch_512": host, "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "load_average": os.getloadavg(),
              "command": f"python benchmarks/windows.py --texts {args.texts}"}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
