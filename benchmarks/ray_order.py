"""Row order of Ray Data Parquet writes: Ray's `write_parquet` against `ordered_parquet_sink`, on a local Ray of 2
CPUs. Each run maps 6,000 rows in batches of 500 on one actor (sleeping a random 0-0.3 s per batch, as a model's
forward pass varies) with `preserve_order` set, writes them both ways, and checks the ids read back.

    python benchmarks/ray_order.py --runs 8
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from sentence_multitask.ray_data import ordered_parquet_sink


class SlowIdentity:
    def __call__(self, batch: dict) -> dict:
        time.sleep(random.random() * 0.3)
        return {"id": batch["id"], "length": np.asarray([len(text) for text in batch["text"]])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rows", type=int, default=6_000)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "ray_order.json"))
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    in_order = {"write_parquet": [], "ordered_parquet_sink": []}
    with tempfile.TemporaryDirectory() as scratch:
        source = f"{scratch}/input.parquet"
        pq.write_table(pa.table({"id": list(range(args.rows)), "text": [f"text {i} " * (i % 7 + 1)
                                                                         for i in range(args.rows)]}), source)
        for run in range(args.runs):
            for name in in_order:
                mapped = ray.data.read_parquet(source).map_batches(
                    SlowIdentity, batch_size=500, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1))
                output = f"{scratch}/{name}-{run}"
                if name == "write_parquet":
                    mapped.write_parquet(output)
                else:
                    mapped.write_datasink(ordered_parquet_sink(output))
                in_order[name].append(pq.read_table(output).column("id").to_pylist() == list(range(args.rows)))
    result = {"ray": ray.__version__, "rows": args.rows, "runs": args.runs,
              "runs_in_order": {name: sum(values) for name, values in in_order.items()},
              "command": f"python benchmarks/ray_order.py --runs {args.runs}"}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
