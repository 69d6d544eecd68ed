"""Ray Data: predictions and embeddings on a cluster's actors (`pip install 'sentence-multitask[ray]'`).

`SentenceMultiTaskPredictor` is a callable class for `ray.data.Dataset.map_batches(..., compute=ActorPoolStrategy(
size=N))`: each actor loads the model once and adds the columns of `streaming.output_columns` to each batch.
`run_with_ray` is `predict` / `embed --engine ray`: it reads, maps and writes through Ray Data.
This module is imported only when asked for; the rest of the package never imports ray.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .streaming import INPUT_FORMATS, OUTPUT_FORMATS, column_texts, output_columns


class SentenceMultiTaskPredictor:
    """
    Adds the model's columns to a batch `{column: np.ndarray}`: per task `<task>_label` / `<task>_score` (and the
    other keys of a task's output, see `streaming.result_columns`), or `embedding` (a float32 array, one row per
    text) when `embed`. Only `keep_columns` of the input stay beside them.

    Args:
        model: a saved model folder or Hub id, loaded once per actor (see `loading.load_model` for `backend`, `device`,
            `precision` and `threads`).
    """

    def __init__(self, model: str, *, embed: bool = False, text_column: str = "text",
                 keep_columns: Sequence[str] = (), batch_size: int | None = None, return_all_scores: bool = False,
                 normalize: bool = True, max_length: int | None = None, backend: str = "torch",
                 device: str | None = None, precision: str | None = "fp32", threads: int | None = None,
                 recheck_margin: float | None = None):
        from .loading import load_model

        self.model = load_model(model, backend=backend, device=device, precision=precision, threads=threads,
                                recheck_margin=recheck_margin)
        self.text_column, self.keep_columns = text_column, list(keep_columns)
        self.options = {"embed": embed, "batch_size": batch_size, "return_all_scores": return_all_scores,
                        "normalize": normalize,
                        "max_length": max_length}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in [self.text_column, *self.keep_columns] if name not in batch]
        if missing:
            raise ValueError(f"the dataset has no column {', '.join(map(repr, missing))} (columns: "
                             f"{', '.join(batch)}); name the text column and the columns to keep.")
        texts = column_texts(batch[self.text_column].tolist(), self.text_column, 0, "the dataset")
        columns = output_columns(self.model, texts, **self.options)
        return {**{name: batch[name] for name in self.keep_columns},
                **{name: np.asarray(values) for name, values in columns.items()}}


def read_dataset(path: str, text_column: str = "text"):
    """`path` as a `ray.data.Dataset`: the formats of `streaming.load_input` (a saved `datasets` folder through
    `ray.data.from_huggingface`)."""
    import ray.data

    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder.")
    if os.path.isfile(os.path.join(path, "state.json")):
        import datasets

        return ray.data.from_huggingface(datasets.load_from_disk(path))
    suffixes = {os.path.splitext(name)[1].lower() for name in os.listdir(path) if not name.startswith((".", "_"))} \
        if os.path.isdir(path) else {os.path.splitext(path)[1].lower()}
    suffix = suffixes.pop() if len(suffixes) == 1 else ""
    if suffix == ".parquet":
        return ray.data.read_parquet(path)
    if suffix in (".csv", ".tsv"):
        import pyarrow.csv

        return ray.data.read_csv(path, parse_options=pyarrow.csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else
                                                                              ","),
                                 convert_options=pyarrow.csv.ConvertOptions(column_types={text_column: "string"},
                                                                            strings_can_be_null=False))
    if suffix in (".json", ".jsonl"):
        return ray.data.read_json(path, file_extensions=["json", "jsonl"])
    if suffix in INPUT_FORMATS:
        raise ValueError(f"{path}: no Ray reader for {suffix}.")
    return ray.data.read_text(path, drop_empty_lines=False)


def run_with_ray(model: str, source: str, output: str, *, address: str | None = None, actors: int = 1,
                 chunk_rows: int = 10_000, text_column: str = "text", keep_columns: Sequence[str] = (),
                 output_format: str | None = None, device: str | None = None, **options: Any) -> None:
    """
    Read `source`, run `SentenceMultiTaskPredictor` on `actors` actors (one GPU each with a cuda `device`) in batches
    of `chunk_rows` rows, and write the folder `output` (Parquet, JSON Lines or CSV files by `output_format` or the
    name's suffix), rows in input order (Ray Data's preserve_order; files named by write task, so reading the folder in
    name order gives the input order). Joins the cluster at `address` (default: RAY_ADDRESS, else a local one).
    """
    import ray

    suffix = os.path.splitext(output)[1].lower()
    output_format = output_format or {extension: name for name, extension in OUTPUT_FORMATS.items()}.get(suffix,
                                                                                                         "parquet")
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"{output} exists: name another --output (nothing is overwritten).")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"))
    gpu = bool(device) and device.startswith("cuda")
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if not gpu and actors >= cpus:  # each actor holds a CPU: none would be left to read and write, and the run stalls
        raise ValueError(f"--actors {actors} on a Ray cluster of {cpus} CPUs: reading and writing need a CPU too; use "
                         f"--actors {max(cpus - 1, 1)} (with --threads for the CPUs an actor uses) or add nodes.")
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = read_dataset(source, text_column)
    mapped = dataset.map_batches(
        SentenceMultiTaskPredictor, batch_size=chunk_rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpu else 0,
        fn_constructor_args=(model,),
        fn_constructor_kwargs={"text_column": text_column, "keep_columns": list(keep_columns),
                               "device": "cuda" if gpu else device, **options})
    if output_format == "parquet":
        mapped.write_datasink(ordered_parquet_sink(output))
    else:
        {"jsonl": mapped.write_json, "csv": mapped.write_csv}[output_format](output)


def ordered_parquet_sink(path: str):
    """A Parquet sink that keeps row order. Ray's own `write_parquet` (2.60) hands a write task's blocks to
    `pyarrow.dataset.write_dataset(use_threads=True)`, which may write them in any order within the file; this sink
    writes the task's blocks, concatenated in order, with `pyarrow.parquet.write_table` (one file per write task)."""
    import pyarrow.parquet as pq
    import ray.data

    class OrderedParquetDatasink(ray.data.BlockBasedFileDatasink):
        def write_block_to_file(self, block, file) -> None:
            pq.write_table(block.to_arrow(), file)

    return OrderedParquetDatasink(path, file_format="parquet")
