"""`sentence-multitask` command line: train, evaluate, predict, embed, export-onnx, serve, export-handler.

Heavy libraries are imported inside each command, so `predict` on one sentence does not pay for training code.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Sequence

from .command_help import HelpFormatter
from .loading import load_model  # imports torch and the model when called, not with the CLI


def read_texts(args) -> list[str]:
    """Texts from arguments, else from --file (one per line, or JSON Lines), else stdin (one per line)."""
    if args.texts and args.file:
        raise SystemExit("error: give texts as arguments or with --file, not both.")
    if args.texts:
        if args.text_column is not None:
            raise SystemExit("error: --text_column names the text field of a table --file; texts given as arguments "
                             "are used as they are: drop --text_column.")
        return list(args.texts)
    if not args.file and sys.stdin.isatty():
        raise SystemExit("error: no texts: pass them as arguments, with --file PATH, or on standard input.")
    return read_text_file(args.file or "-", "--file", args.text_column)


# Table formats --file reads with `datasets` (JSON Lines keeps its own reader, whose errors name the line).
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".parquet")


def read_text_file(path: str, option: str, text_column: str | None) -> list[str]:
    """
    The texts of `path` (`-`: standard input), given with `option`: the column `text_column` (None: "text") of a
    table (.jsonl, .json, .csv, .tsv, .parquet, any case); else one text per line, where a `text_column` is refused
    rather than ignored.
    """
    if path != "-" and os.path.isdir(path):
        hint = " or give the folder as --input with --output (a dataset run)" if option == "--file" else ""
        raise SystemExit(f"error: {option} {path} is a folder; {option} takes one file: name a file in it{hint}.")
    if path != "-" and not os.path.isfile(path):
        raise SystemExit(f"error: {option} {path}: no such file.")
    suffix = "" if path == "-" else os.path.splitext(path)[1].lower()
    if suffix in TABLE_SUFFIXES:
        from .streaming import read_table_texts

        return read_table_texts(path, text_column)
    jsonl = suffix == ".jsonl"
    if text_column is not None and not jsonl:
        source = "standard input is" if path == "-" else f"{path} is"
        raise SystemExit(f"error: --text_column names the text field of a table {option} (.jsonl, .json, .csv, .tsv, "
                         f".parquet); {source} read as plain text, one text per line: drop --text_column, or give a "
                         "table file with one of these names.")
    lines = _read_lines(path)
    return _texts_from_json_lines(lines, path, text_column or "text") if jsonl else lines


def _read_lines(path: str) -> list[str]:
    """The lines of `path` (`-`: standard input) as UTF-8 (a byte order mark at the start is dropped), with universal
    newlines; a byte that is not UTF-8 is an error naming the line, not a crash or a lone surrogate in a text."""
    if path == "-":
        stdin = sys.stdin
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogateescape")
    else:
        with open(path, "rb") as handle:
            data = handle.read()
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[:error.start]
        number = before.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        column = error.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
        name, fix = ("standard input", "re-encode it") if path == "-" else (path, "re-encode the file")
        raise SystemExit(f"error: {name}, line {number}: not UTF-8 (byte 0x{data[error.start]:02x} at column {column}: "
                         f"{error.reason}); {fix} as UTF-8, e.g. with `iconv -f latin1 -t utf-8`.") from None
    return _lines(text.replace("\r\n", "\n").replace("\r", "\n"))


def _lines(text: str) -> list[str]:
    """One line per newline (after universal newlines, so also per \\r\\n or \\r). Not str.splitlines, which also
    splits at characters a text or a JSON string may hold (U+2028, U+0085, form feed ...): the outputs would no longer
    line up with the input lines, and JSON Lines this command wrote could not be read back."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _texts_from_json_lines(lines: list[str], name: str, text_column: str) -> list[str]:
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"error: {name}, line {number}: malformed JSON ({error.msg}); fix or remove the line.") \
                from None
        if not isinstance(value, dict):
            raise SystemExit(f"error: {name}, line {number}: expected a JSON object per line, got "
                             f"{type(value).__name__}.")
        if text_column not in value:
            raise SystemExit(f"error: {name}, line {number}: no {text_column!r} in the JSON object (keys: "
                             f"{', '.join(map(str, value)) or 'none'}); name the text field with --text_column.")
        text = value[text_column]
        if not isinstance(text, str):
            raise SystemExit(f"error: {name}, line {number}: {text_column!r} is {type(text).__name__}, not a string.")
        texts.append(text)
    return texts


def model_options(args) -> dict:
    """The `load_model` options of parsed command-line `args`."""
    return {"backend": getattr(args, "backend", "torch"), "device": getattr(args, "device", None),
            "precision": getattr(args, "precision", None), "threads": getattr(args, "threads", None),
            "recheck_margin": getattr(args, "recheck_margin", None)}


def write_jsonl(rows) -> None:
    out = sys.stdout
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()


def dataset_run(args) -> bool:
    """Whether `args` ask for a dataset run (--input to --output); refuses its options elsewhere."""
    if args.input or args.output:
        if not (args.input and args.output):
            raise ValueError("--input and --output go together (a dataset in, a dataset out); for JSON Lines on "
                             "standard output give texts as arguments, with --file or on standard input.")
        if args.texts or args.file:
            raise ValueError("give texts with --input or with --file / as arguments, not both.")
        if args.engine == "ray" and args.resume:
            raise ValueError("--resume applies to --engine local; a Ray run writes its output folder anew.")
        return True
    given = [name for name, value in (("--keep_columns", args.keep_columns), ("--resume", args.resume),
                                      ("--output_format", args.output_format), ("--engine ray", args.engine == "ray"))
             if value]
    if given:
        raise ValueError(f"{', '.join(given)} applies to a dataset run: add --input PATH --output PATH.")
    return False


def run_dataset(args, embed: bool) -> int:
    """predict / embed from --input to --output, in this process (streaming) or with Ray Data."""
    keep_columns = [name.strip() for name in (args.keep_columns or "").split(",") if name.strip()]
    options = {"embed": embed, "text_column": args.text_column or "text", "keep_columns": keep_columns,
               "batch_size": args.batch_size, "return_all_scores": getattr(args, "return_all_scores", False),
               "normalize": not getattr(args, "no_normalize", False), "output_format": args.output_format}
    if args.engine == "ray":
        from .ray_data import run_with_ray

        run_with_ray(args.model, args.input, args.output, address=args.ray_address, actors=args.actors,
                     chunk_rows=args.chunk_size, **options, **model_options(args))
        print(f"Wrote {args.output}", file=sys.stderr)
        return 0
    from .streaming import PartedOutput, stream_to_output

    if not os.path.exists(args.input):  # checked before the model loads
        raise ValueError(f"{args.input}: no such file or folder.")
    PartedOutput.at(args.output, args.output_format).refuse_existing(args.resume)
    model = load_model(args.model, **model_options(args))
    model_source = os.path.abspath(args.model) if args.model and os.path.isdir(args.model) else args.model
    rows = stream_to_output(model, args.input, args.output, chunk_rows=args.chunk_size, resume=args.resume,
                            settings={"model": model_source, "backend": args.backend, "precision": args.precision},
                            **options)
    print(f"Wrote {args.output} ({rows} rows this run)", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    if dataset_run(args):
        return run_dataset(args, embed=False)
    texts = read_texts(args)
    model = load_model(args.model, **model_options(args))
    results = model.predict(texts, batch_size=args.batch_size, return_all_scores=args.return_all_scores)
    write_jsonl({"text": text, **result} for text, result in zip(texts, results))
    return 0


def cmd_embed(args) -> int:
    if dataset_run(args):
        return run_dataset(args, embed=True)
    texts = read_texts(args)
    model = load_model(args.model, **model_options(args))
    embeddings = model.encode(texts, batch_size=args.batch_size, normalize=not args.no_normalize)
    write_jsonl({"text": text, "embedding": [round(float(v), 7) for v in vector]}
                for text, vector in zip(texts, embeddings))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_model, format_table

    if args.output and os.path.isdir(args.output):  # checked before the model loads and the files are scored
        raise SystemExit(f"error: --output {args.output} is a folder; --output takes the JSON report's file name, "
                         f"e.g. {os.path.join(args.output, 'report.json')}.")
    model = load_model(args.model, **model_options(args))
    report = evaluate_model(model, args.eval_files, text_column=args.text_column, label_columns=args.label_columns,
                            batch_size=args.batch_size, label_delimiter=args.label_delimiter)
    print(format_table(report))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    print(json.dumps(report))
    return 0


def cmd_export_onnx(args) -> int:
    from .onnx import export_onnx

    calibration_texts = None
    if args.calibration_file:
        if not args.quantize:
            raise SystemExit("error: --calibration_file prepares the int8 graph: add --quantize.")
        calibration_texts = [text for text in read_text_file(args.calibration_file, "--calibration_file",
                                                             args.text_column) if text.strip()]
    elif args.text_column is not None:
        raise SystemExit("error: --text_column names the text field of a .jsonl --calibration_file: add one, or drop "
                         "--text_column.")
    args.device, args.backend = "cpu", "torch"
    model = load_model(args.model, **model_options(args))
    folder = export_onnx(model, args.output_dir, quantize=args.quantize, calibration_texts=calibration_texts)
    from .onnx import FP32_FILE, INT8_FILE

    stale = not args.quantize and os.path.isfile(os.path.join(folder, INT8_FILE))
    print(f"Exported to {folder}: {FP32_FILE}" + (f", {INT8_FILE}" if args.quantize else "")
          + (f" (an earlier export's {INT8_FILE} of the same weights is still there)" if stale else ""))
    return 0


def cmd_serve(args) -> int:
    from .serving import serve

    serve(args.model, host=args.host, port=args.port, max_batch_texts=args.max_batch_texts,
          max_text_chars=args.max_text_chars, batch_size=args.batch_size, gather_texts=args.gather_texts,
          max_wait_ms=args.max_wait_ms, **model_options(args))
    return 0


def write_endpoint_handler(folder: str) -> str:
    """Copy the Inference Endpoints handler (handler.py of this package) into the saved model `folder`; its path.
    A different handler.py already there is refused rather than replaced."""
    from importlib import resources

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder}: no saved model (no config.json); --model takes a folder saved by "
                         "`sentence-multitask train` or save_pretrained.")
    code = resources.files(__package__).joinpath("handler.py").read_text(encoding="utf-8")
    target = os.path.join(folder, "handler.py")
    if os.path.exists(target):
        with open(target, encoding="utf-8") as handle:
            if handle.read() != code:
                raise ValueError(f"{target} exists and is another handler; move it away to write this one.")
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(code)
    return target


def cmd_export_handler(args) -> int:
    print(f"Wrote {write_endpoint_handler(args.model)}")
    return 0


def cmd_train(argv: Sequence[str]) -> int:
    from .training import main as train_main

    train_main(argv)
    return 0


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


PRECISIONS, BACKENDS = ("fp32", "bf16", "fp16", "auto"), ("torch", "onnx", "onnx-int8")
EXAMPLES = {
    "predict": """\
examples:
  sentence-multitask predict --model my-model "The striker scored twice." "I love this phone"
  sentence-multitask predict --model my-model --file texts.csv --text_column body --return_all_scores
  sentence-multitask predict --model my-model --input tickets.parquet --output labelled.parquet --keep_columns id
""",
    "embed": """\
examples:
  sentence-multitask embed "The dog ran across the grass." "Why is the sky blue?"
  sentence-multitask embed --model my-model --input corpus.parquet --output vectors.parquet --keep_columns id
""",
    "evaluate": """\
example:
  sentence-multitask evaluate --model my-model --eval_files topic=topic_test.csv sentiment=sentiment_test.csv \\
      --output report.json
""",
    "export-onnx": """\
example:
  sentence-multitask export-onnx --model my-model --output_dir my-model-onnx --quantize --calibration_file texts.txt
  sentence-multitask predict --model my-model-onnx --backend onnx-int8 "The striker scored twice."
""",
    "serve": """\
example:
  sentence-multitask serve --model my-model --port 8000
  curl -s localhost:8000/predict -H 'content-type: application/json' -d '{"inputs": ["I love this phone"]}'
""",
    "export-handler": """\
example:
  sentence-multitask export-handler --model my-model   # then upload the folder to an Inference Endpoint
""",
}


def runtime_options(sub, recheck: bool = True, serving: bool = False) -> None:
    """--device, --threads, --precision, --backend (and --recheck_margin): how a loaded model runs."""
    sub.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu).")
    sub.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's choice).")
    sub.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="fp32 (exact), bf16 (CPUs with native bf16, GPUs), fp16 (GPU) or auto.")
    sub.add_argument("--backend", choices=BACKENDS, default="torch",
                     help="onnx / onnx-int8 run MODEL/onnx/model[_quantized].onnx (see export-onnx).")
    if recheck:
        sub.add_argument("--recheck_margin", "--recheck-margin", type=float,
                         help="onnx-int8: rerun in fp32 the texts whose two best labels lie closer than this (0.01 "
                              "kept 99.3-99.4 %% of fp32's labels, rerunning ~1 %% of the texts, on a graph exported "
                              "with --calibration_file; default: no recheck).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentence-multitask", formatter_class=HelpFormatter,
        description="Multi-task sentence models on Hugging Face Transformers: train, evaluate, predict, embed.",
        epilog="`sentence-multitask COMMAND --help` lists a command's options and ends with examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                                   formatter_class=HelpFormatter)

    def inference(name, help_text, model_help, model_required):
        sub = command(name, help_text)
        sub.add_argument("--model", required=model_required, help=model_help)
        sub.add_argument("texts", nargs="*", help="Texts (default: --file, else one per line on standard input).")
        sub.add_argument("--file", help="Text file, one text per line, or a table (.jsonl, .json, .csv, .tsv, "
                                        ".parquet) with a text column; - for stdin (one text per line).")
        sub.add_argument("--text_column", "--text-column",
                         help="Text column of a table --file or of --input (default: text).")
        sub.add_argument("--batch_size", "--batch-size", type=positive_int,
                         help="Texts per forward pass (default: 512 on a GPU, 32 elsewhere).")
        runtime_options(sub, recheck=name == "predict")
        runs = sub.add_argument_group("dataset runs (--input to --output, any size; see docs/scale.md)")
        runs.add_argument("--input", help="CSV, TSV, JSON, JSON Lines, Parquet, plain text (one text per line), a "
                                          "folder of such files or a dataset saved with save_to_disk; streamed.")
        runs.add_argument("--output", help="A .parquet, .jsonl or .csv file, or a folder of parts.")
        runs.add_argument("--output_format", "--output-format", choices=("parquet", "jsonl", "csv"),
                          help="Format of the parts of a folder --output (default: parquet).")
        runs.add_argument("--keep_columns", "--keep-columns", help="Input columns to copy beside the model's, "
                                                                    "comma-separated (e.g. id,date; default: none).")
        runs.add_argument("--resume", action="store_true",
                          help="Continue an interrupted run into --output from its last complete part.")
        runs.add_argument("--chunk_size", "--chunk-size", type=positive_int, default=10_000,
                          help="Rows read, sorted by length and written as one part at a time.")
        runs.add_argument("--engine", choices=("local", "ray"), default="local",
                          help="local: this process; ray: Ray Data actors (pip install 'sentence-multitask[ray]').")
        runs.add_argument("--ray_address", "--ray-address",
                          help="Ray cluster to join (default: RAY_ADDRESS, else a local one).")
        runs.add_argument("--actors", type=positive_int, default=1,
                          help="--engine ray: model replicas (one per GPU with --device cuda).")
        return sub

    sub = inference("predict", "Every task's label and score per text, as JSON Lines (or a dataset with --output).",
                    "Saved model directory or Hub id.", model_required=True)
    sub.add_argument("--return_all_scores", "--all_scores", "--all-scores", action="store_true",
                     help="Add every label's probability (as predict(return_all_scores=True)).")
    sub.set_defaults(run=cmd_predict)

    sub = inference("embed", "Sentence embeddings per text, as JSON Lines (or a dataset with --output).",
                    "Saved model directory or Hub id (default: the default encoder, all-MiniLM-L6-v2).",
                    model_required=False)
    sub.add_argument("--no_normalize", "--no-normalize", action="store_true",
                     help="Do not L2-normalise (as encode(normalize=False)).")
    sub.set_defaults(run=cmd_embed)

    sub = command("evaluate", "Metrics of a saved model on labelled files (a table, then JSON).")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--eval_files", "--data", required=True, nargs="+",
                     help="Labelled files: PATH or TASK=PATH, as train's --validation_files.")
    sub.add_argument("--text_column", "--text-column", default="text", help="Column holding the text.")
    sub.add_argument("--label_columns", "--label-columns", nargs="*",
                     help="TASK=COLUMN per task (default: a column named like the task, else label).")
    sub.add_argument("--label_delimiter", "--label-delimiter", nargs="*",
                     help="TASK=SEPARATOR per multi-label task whose column holds strings such as joy;anger (as for "
                          "train).")
    sub.add_argument("--output", help="Also write the JSON report to this file.")
    sub.add_argument("--batch_size", "--batch-size", type=positive_int, default=64, help="Texts per forward pass.")
    runtime_options(sub)
    sub.set_defaults(run=cmd_evaluate)

    sub = command("export-onnx", "Export encoder, pooling and heads as one ONNX graph (and an int8 one).")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--output_dir", "--output", required=True,
                     help="Folder for a copy of the model with its onnx/ folder (a new or empty folder, or an earlier "
                          "export).")
    sub.add_argument("--quantize", action="store_true", help="Also write a dynamic int8 (per-channel) graph.")
    sub.add_argument("--calibration_file", "--calibration-file",
                     help="With --quantize: a few hundred texts like the model's inputs (one per line, or .jsonl with "
                          "--text_column), e.g. training texts; smooths activation outliers first, so int8 keeps "
                          "more of fp32's labels.")
    sub.add_argument("--text_column", "--text-column",
                     help="Text field of a .jsonl calibration file (default: text).")
    sub.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's choice).")
    sub.set_defaults(run=cmd_export_onnx)

    sub = command("serve", "HTTP server: POST /predict and /embed, GET /health and /info "
                           "(pip install 'sentence-multitask[serve]').")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--host", default="127.0.0.1", help="Address to listen on (127.0.0.1: this machine only).")
    sub.add_argument("--port", type=positive_int, default=8000, help="Port to listen on.")
    sub.add_argument("--max_batch_texts", "--max-batch-texts", type=positive_int, default=256,
                     help="Most texts in one request.")
    sub.add_argument("--max_text_chars", "--max-text-chars", type=positive_int, default=20_000,
                     help="Most characters in one text.")
    sub.add_argument("--batch_size", "--batch-size", type=positive_int, default=64, help="Texts per forward pass.")
    sub.add_argument("--gather_texts", "--gather-texts", type=positive_int, default=256,
                     help="Most texts gathered from concurrent requests into one call, which sorts them by length "
                          "into forward passes of --batch_size.")
    sub.add_argument("--max_wait_ms", "--max-wait-ms", type=float, default=5.0,
                     help="Milliseconds the first request of a gathering waits for others.")
    runtime_options(sub, recheck=False)
    sub.set_defaults(run=cmd_serve)

    sub = command("export-handler", "Add an Inference Endpoints handler.py to a saved model folder.")
    sub.add_argument("--model", required=True, help="Saved model directory.")
    sub.set_defaults(run=cmd_export_handler)

    commands.add_parser("train", help="Fine-tune encoder and heads with the HF Trainer (see `train --help`).",
                        add_help=False)
    return parser


def _raised_by_this_package(error: BaseException) -> bool:
    """Whether the innermost frame of `error` is in this package: its checks of options, data and folders, whose
    messages name the problem and the fix."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and os.path.dirname(os.path.abspath(frame.tb_frame.f_code.co_filename)) == os.path.dirname(
        os.path.abspath(__file__))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        try:
            return cmd_train(argv[1:])
        except (ValueError, OSError) as error:
            if not _raised_by_this_package(error):  # from deep in torch / transformers: keep the traceback
                raise
            raise SystemExit(f"error: {error}") from None
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # bad input: options, texts, model files, data files (DataError)
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
