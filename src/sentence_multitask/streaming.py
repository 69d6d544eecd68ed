"""Predictions and embeddings over datasets of any size.

`predict_dataset` maps a `datasets.Dataset` or `IterableDataset` to one with prediction columns. `stream_to_output`
reads a file or a saved dataset in streaming mode, a chunk at a time (the next chunk is read in a background thread
while the model runs), and writes the output in parts, each written under a temporary name and renamed when complete:
an interrupted run resumes from its last complete part, and a file output is assembled from its parts at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching_sentence_multitask import prefetch

CHUNK_ROWS = 10_000
# Input file formats by suffix: the `datasets` builder and its options (a CSV's text column is read as written).
INPUT_FORMATS = {".csv": ("csv", {"sep": ","}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}),
                 ".jsonl": ("json", {}), ".parquet": ("parquet", {})}
OUTPUT_FORMATS = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}
RUN_FILE, DONE_FILE = "_run.json", "_SUCCESS"


# ------------------------------------------------------------------------------------------------ columns of results


def result_columns(results: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, list]:
    """
    Columns of `model.predict` results, one row per result. Each key of a task's output becomes a column
    `<task>_<key>` ("label" -> `topic_label`, "score" -> `topic_score`, and so "labels" or "value" of other task
    types); a dict value (the `scores` of `return_all_scores`) becomes one column per entry, `<task>_<key>_<entry>`.
    """
    rows = []
    for result in results:
        row = {}
        for task, output in result.items():
            for key, value in output.items():
                if isinstance(value, Mapping):
                    row.update({f"{task}_{key}_{entry}": number for entry, number in value.items()})
                else:
                    row[f"{task}_{key}"] = value
        rows.append(row)
    names = dict.fromkeys(name for row in rows for name in row)
    return {name: [row.get(name) for row in rows] for name in names}


def output_columns(model, texts: list[str], *, embed: bool = False, batch_size: int | None = None,
                   return_all_scores: bool = False, normalize: bool = True,
                   max_length: int | None = None) -> dict[str, Any]:
    """The columns `model` adds to rows with `texts`: `embedding` (a float32 array, one row per text) when `embed`,
    else the prediction columns of `result_columns`."""
    if embed:
        return {"embedding": model.encode(texts, batch_size=batch_size, normalize=normalize, max_length=max_length,
                                          show_progress_bar=False)}
    return result_columns(model.predict(texts, batch_size=batch_size, return_all_scores=return_all_scores,
                                        max_length=max_length, show_progress_bar=False))


def column_texts(values: Iterable, column: str, first_row: int, source: str) -> list[str]:
    """`values` of the text column as strings; a null or non-string value is an error naming its row (1-based)."""
    texts = list(values)
    for row, text in enumerate(texts, start=first_row + 1):
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            raise ValueError(f"{source}, row {row}: {column!r} is {kind}, not a string; fill or drop that row, or "
                             "name the text column with --text_column.")
    return texts


def check_columns(available: Sequence[str] | None, text_column: str, keep_columns: Sequence[str] | None,
                  source: str) -> None:
    """Refuse a text or kept column that `source` lacks, listing those it has (nothing to check when unknown)."""
    if available is None:
        return
    missing = [name for name in [text_column, *(keep_columns or ())] if name not in available]
    if missing:
        raise ValueError(f"{source} has no column {', '.join(map(repr, missing))} (columns: "
                         f"{', '.join(available) or 'none'}); name the text column with --text_column and the "
                         "columns to keep with --keep_columns.")


def predict_dataset(model, dataset, text_column: str = "text", keep_columns: Sequence[str] | None = None,
                    batch_size: int | None = None, *, embed: bool = False, return_all_scores: bool = False,
                    normalize: bool = True, max_length: int | None = None, chunk_size: int = CHUNK_ROWS):
    """
    `dataset` (a `datasets.Dataset` or `IterableDataset`) with the model's columns added by `dataset.map(...,
    batched=True)`: per task `<task>_label` and `<task>_score` (see `result_columns`), or `embedding` when `embed`.

    Args:
        text_column: the column of texts.
        keep_columns: the input columns to keep beside the new ones (None: all of them).
        batch_size: texts per forward pass (None: the model's default); `chunk_size` rows go to the model at a time
            (sorted by length there).
        embed, return_all_scores, normalize, max_length: as for `model.encode` / `model.predict`.

    Returns:
        A dataset of the same kind: a `Dataset` is computed now, an `IterableDataset` as it is iterated.
    """
    import datasets

    check_columns(dataset.column_names, text_column, keep_columns, "the dataset")
    remove = []
    if keep_columns is not None:
        dataset = dataset.select_columns(list(dict.fromkeys([*keep_columns, text_column])))
        remove = [] if text_column in keep_columns else [text_column]

    def add_columns(batch: dict[str, list]) -> dict[str, Any]:
        texts = column_texts(batch[text_column], text_column, 0, "the dataset")
        return output_columns(model, texts, embed=embed, batch_size=batch_size, return_all_scores=return_all_scores,
                              normalize=normalize, max_length=max_length)

    # A Dataset would hash the model to name its cache: a fresh fingerprint instead (the model may change).
    extra = {"new_fingerprint": datasets.fingerprint.generate_random_fingerprint()} \
        if isinstance(dataset, datasets.Dataset) else {}
    return dataset.map(add_columns, batched=True, batch_size=chunk_size, remove_columns=remove, **extra)


# --------------------------------------------------------------------------------------------------------- input


def _data_files(path: str) -> tuple[str, list[str]]:
    """The suffix and files of a folder of data files of one format (say, the parts of an earlier output)."""
    names = sorted(name for name in os.listdir(path) if not name.startswith((".", "_")))
    suffixes = {os.path.splitext(name)[1].lower() for name in names}
    if len(suffixes) != 1 or next(iter(suffixes)) not in INPUT_FORMATS:
        raise ValueError(f"{path}: a folder given as input must be a dataset saved with save_to_disk or hold data "
                         f"files of one format ({', '.join(INPUT_FORMATS)}); it holds "
                         f"{', '.join(sorted(suffixes)) or 'no data files'}.")
    return suffixes.pop(), [os.path.join(path, name) for name in names]


def load_input(path: str, text_column: str = "text"):
    """
    `path` as a streaming `datasets.IterableDataset`, and its number of rows where the metadata tells it (Parquet,
    a saved dataset), else None. Reads CSV, TSV, JSON, JSON Lines, Parquet, a dataset saved with `save_to_disk`, a
    folder of files of one of these formats, and any other file as plain text, one text per line (column "text").
    """
    import datasets

    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder.")
    if any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"{path} holds a DatasetDict (splits {', '.join(dataset)}); give one split's folder, "
                             f"e.g. {os.path.join(path, next(iter(dataset)))}.")
        return dataset.to_iterable_dataset(), len(dataset)
    suffix, files = _data_files(path) if os.path.isdir(path) else (os.path.splitext(path)[1].lower(), [path])
    if suffix not in INPUT_FORMATS:
        return datasets.IterableDataset.from_generator(_text_lines, gen_kwargs={"path": path}), None
    builder, options = INPUT_FORMATS[suffix]
    if builder == "csv":  # the text column as written: no "NA" or empty field turned into a null
        options = {**options, "na_filter": False, "converters": {text_column: str}}
    dataset = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    total = None
    if builder == "parquet":
        import pyarrow.parquet as pq

        total = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
        # One shard per row group: a scan over a whole file reads ahead of a slow consumer, and its memory grows
        # with the file (+170 MiB on 1,000,000 rows); a row group's scan cannot.
        dataset = dataset.reshard()
    return dataset, total


def _text_lines(path: str) -> Iterator[dict[str, str]]:
    """One row per line of a UTF-8 text file (a byte order mark dropped); lines end at \\n, \\r\\n or \\r only."""
    with open(path, encoding="utf-8-sig", newline=None) as handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                yield {"text": line.removesuffix("\n")}
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}, after line {number}: not UTF-8 ({error.reason}); re-encode the file as UTF-8, "
                             "e.g. with `iconv -f latin1 -t utf-8`.") from None


def read_table_texts(path: str, text_column: str | None) -> list[str]:
    """Every text of the column `text_column` (None: "text") of a table file, in memory."""
    column = text_column or "text"
    dataset, _ = load_input(path, column)
    texts: list[str] = []
    for table in _chunks(dataset, CHUNK_ROWS):
        check_columns(table.column_names, column, None, path)
        texts += column_texts(table.column(column).to_pylist(), column, len(texts), path)
    return texts


def _chunks(dataset, rows: int) -> Iterator:
    """`dataset` as Arrow tables of `rows` rows (the last one shorter)."""
    return dataset.with_format("arrow").iter(batch_size=rows)


# -------------------------------------------------------------------------------------------------------- output


def arrow_table(kept, columns: Mapping[str, Any]):
    """The Arrow table of the `kept` input columns (a table) and the model's `columns`; a 2-D array (embeddings)
    becomes a fixed-size list column of float32."""
    import pyarrow as pa

    table = kept
    for name, values in columns.items():
        if name in table.column_names:
            raise ValueError(f"--keep_columns {name}: the model writes a column of that name; keep the input's under "
                             "another name, or drop it from --keep_columns.")
        if isinstance(values, np.ndarray) and values.ndim == 2:
            array = pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32, copy=False).ravel()),
                                                      values.shape[1])
        else:
            array = pa.array(values)
        table = table.append_column(name, array)
    return table


@dataclass
class PartedOutput:
    """
    An output written in parts, each complete or absent: a part is written under a temporary name and renamed
    (`os.replace`) when complete. A folder output holds its parts (`part-00000.parquet` ...), the run's settings
    (`_run.json`) and, at the end, `_SUCCESS`; for a file output the parts lie in a hidden folder next to it,
    `.NAME.parts`, and are assembled into the file at the end, again under a temporary name first.
    """

    path: str
    format: str
    is_folder: bool
    created: bool = False  # whether this run made the parts folder

    @classmethod
    def at(cls, path: str, output_format: str | None = None) -> PartedOutput:
        """The output at `path`: a file when its name ends in .parquet, .jsonl or .csv (its format), else a folder of
        parts in `output_format` (default parquet)."""
        suffix = os.path.splitext(path)[1].lower()
        by_suffix = {extension: name for name, extension in OUTPUT_FORMATS.items()}
        if suffix in by_suffix and not os.path.isdir(path):
            if output_format not in (None, by_suffix[suffix]):
                raise ValueError(f"--output {path} is {by_suffix[suffix]} by its name, but --output_format is "
                                 f"{output_format}; drop one.")
            return cls(path, by_suffix[suffix], is_folder=False)
        if suffix and not os.path.isdir(path):
            raise ValueError(f"--output {path}: name a .parquet, .jsonl or .csv file, or a folder for the parts.")
        return cls(path, output_format or "parquet", is_folder=True)

    @property
    def parts(self) -> str:
        if self.is_folder:
            return self.path
        folder, name = os.path.split(os.path.abspath(self.path))
        return os.path.join(folder, f".{name}.parts")

    def part_path(self, index: int) -> str:
        return os.path.join(self.parts, f"part-{index:05d}{OUTPUT_FORMATS[self.format]}")

    def complete(self) -> bool:
        """Whether a run finished writing this output."""
        if self.is_folder:
            return os.path.isfile(os.path.join(self.path, DONE_FILE))
        return os.path.isfile(self.path)

    def refuse_existing(self, resume: bool) -> bool:
        """Whether the output (or an interrupted run's parts) exists; refused unless `resume`, so nothing is
        overwritten."""
        started = os.path.isfile(os.path.join(self.parts, RUN_FILE))
        exists = self.complete() or started or (os.path.isdir(self.parts) and bool(os.listdir(self.parts)))
        if exists and not resume:
            what = f"{self.path} exists" if self.complete() or self.is_folder else \
                f"{self.parts} holds the parts of an interrupted run"
            raise ValueError(f"{what}: pass --resume to continue the run that wrote it, or name another --output "
                             "(nothing is overwritten).")
        return exists

    def start(self, settings: Mapping[str, Any], resume: bool) -> int:
        """Prepare the output for a run with `settings`; the number of complete parts to keep (-1: the output is
        complete). An existing output is refused unless `resume`, and resumed only with the same settings."""
        exists = self.refuse_existing(resume)
        started = os.path.isfile(os.path.join(self.parts, RUN_FILE))
        if not self.is_folder and self.complete():
            shutil.rmtree(self.parts, ignore_errors=True)  # left if a run stopped right after assembling the file
            return -1
        if exists and not started:
            raise ValueError(f"{self.path}: --resume continues an output written by predict/embed --output, and "
                             f"{self.parts} has no {RUN_FILE}; name another --output.")
        if started:
            with open(os.path.join(self.parts, RUN_FILE), encoding="utf-8") as handle:
                before = json.load(handle)
            changed = {key: (before.get(key), value) for key, value in settings.items() if before.get(key) != value}
            if changed:
                raise ValueError(f"--resume: {self.path} was written with other options ("
                                 + "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
                                 + "); rerun with the same options, or name another --output.")
            if self.complete():
                return -1
        else:
            self.created = not os.path.isdir(self.parts)
            os.makedirs(self.parts, exist_ok=True)
            _write_atomically(os.path.join(self.parts, RUN_FILE),
                              lambda target: _write_text(target, json.dumps(dict(settings), indent=2)))
        for name in os.listdir(self.parts):  # a part whose writing was cut off
            if name.startswith(".part-") and name.endswith(".tmp"):
                os.remove(os.path.join(self.parts, name))
        count = 0
        while os.path.isfile(self.part_path(count)):
            count += 1
        return count

    def abandon(self) -> None:
        """After a run failed before its first part: remove the parts folder it made, so a rerun is no resume."""
        if self.created and not os.path.isfile(self.part_path(0)):
            shutil.rmtree(self.parts, ignore_errors=True)

    def write(self, index: int, table) -> None:
        """Write part `index` (complete or absent)."""
        _write_atomically(self.part_path(index), lambda target: _write_table(table, self.format, target))

    def finish(self, count: int) -> None:
        """Mark the output complete: `_SUCCESS` in a folder; for a file, its `count` parts assembled into it."""
        if self.is_folder:
            _write_atomically(os.path.join(self.path, DONE_FILE), lambda target: _write_text(target, ""))
            return
        parts = [self.part_path(index) for index in range(count)]
        _write_atomically(self.path, lambda target: _join_parts(parts, self.format, target))
        shutil.rmtree(self.parts)


def _write_atomically(path: str, write) -> None:
    """`write(temporary)` next to `path`, then rename it to `path`: `path` is complete or absent."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _write_table(table, output_format: str, path: str) -> None:
    if output_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif output_format == "jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in table.to_pylist())
    else:
        import pyarrow as pa
        import pyarrow.csv

        # CSV has no lists: a list column (embedding, several labels) is written as JSON text.
        for index, field in enumerate(table.schema):
            if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type) \
                    or pa.types.is_large_list(field.type):
                values = [json.dumps(value) for value in table.column(index).to_pylist()]
                table = table.set_column(index, field.name, pa.array(values, pa.string()))
        pyarrow.csv.write_csv(table, path)


def _join_parts(parts: list[str], output_format: str, path: str) -> None:
    """The parts, in order, as one file: Parquet row groups under one (unified) schema; the lines of JSON Lines and
    CSV parts, a CSV header once."""
    if output_format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.unify_schemas([pq.read_schema(part) for part in parts], promote_options="permissive") \
            if parts else pa.schema([])
        with pq.ParquetWriter(path, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part).cast(schema))
        return
    with open(path, "wb") as out:
        for number, part in enumerate(parts):
            with open(part, "rb") as handle:
                if output_format == "csv" and number:
                    handle.readline()  # the header, written once
                shutil.copyfileobj(handle, out)


def stream_to_output(model, source: str, output: str, *, embed: bool = False, text_column: str = "text",
                     keep_columns: Sequence[str] = (), batch_size: int | None = None, chunk_rows: int = CHUNK_ROWS,
                     return_all_scores: bool = False, normalize: bool = True, max_length: int | None = None,
                     output_format: str | None = None, resume: bool = False, progress: bool = True,
                     settings: Mapping[str, Any] | None = None) -> int:
    """
    Run `model` over the file or saved dataset `source` in streaming mode, `chunk_rows` rows at a time, and write
    `output` (see `PartedOutput`): the `keep_columns` of the input and the columns of `output_columns`, in input
    order. With `resume`, rows of the complete parts of an interrupted run into `output` are skipped; `settings`
    (say, the model's path) join the options that a resumed run must share. Returns the number of rows this run read.
    """
    from tqdm.auto import tqdm

    target = PartedOutput.at(output, output_format)
    keep_columns = list(keep_columns)
    run = {"input": os.path.abspath(source), "embed": embed, "text_column": text_column, "keep_columns": keep_columns,
           "chunk_rows": chunk_rows, "return_all_scores": return_all_scores, "normalize": normalize,
           "max_length": max_length,
           "format": target.format, **(settings or {})}
    dataset, total = load_input(source, text_column)
    check_columns(dataset.column_names, text_column, keep_columns, source)
    done = target.start(run, resume)
    if done < 0:
        return 0
    skipped = done * chunk_rows
    if skipped:
        dataset = dataset.skip(skipped)
    bar = tqdm(total=total, initial=min(skipped, total or skipped), unit=" rows", disable=not progress,
               desc="Embedding" if embed else "Predicting", dynamic_ncols=True)
    rows, index = 0, done
    try:
        with bar:
            for table in prefetch(_chunks(dataset, chunk_rows)):
                check_columns(table.column_names, text_column, keep_columns, source)
                texts = column_texts(table.column(text_column).to_pylist(), text_column, skipped + rows, source)
                columns = output_columns(model, texts, embed=embed, batch_size=batch_size,
                                         return_all_scores=return_all_scores, normalize=normalize,
                                         max_length=max_length)
                target.write(index, arrow_table(table.select(keep_columns), columns))
                index, rows = index + 1, rows + len(texts)
                bar.update(len(texts))
    except BaseException:
        target.abandon()
        raise
    target.finish(index)
    return rows
