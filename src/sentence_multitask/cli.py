"""`sentence-multitask` command line: train, evaluate, predict, embed, export-onnx.

Heavy libraries are imported inside each command, so `predict` on one sentence does not pay for training code.
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Sequence


def read_texts(args) -> list[str]:
    """Texts from arguments, else from --file (one per line, or JSON Lines), else stdin (one per line)."""
    if args.texts and args.file:
        raise SystemExit("error: give texts as arguments or with --file, not both.")
    if args.texts:
        if args.text_column is not None:
            raise SystemExit("error: --text_column names the text field of a .jsonl --file; texts given as arguments "
                             "are used as they are: drop --text_column.")
        return list(args.texts)
    if not args.file and sys.stdin.isatty():
        raise SystemExit("error: no texts: pass them as arguments, with --file PATH, or on standard input.")
    return read_text_file(args.file or "-", "--file", args.text_column)


# Table formats --file does not parse, with the pandas reader that converts them to JSON Lines.
_TABLE_READERS = {".csv": "read_csv(PATH)", ".tsv": "read_csv(PATH, sep='\\t')", ".json": "read_json(PATH)",
                  ".parquet": "read_parquet(PATH)"}


def read_text_file(path: str, option: str, text_column: str | None) -> list[str]:
    """
    The texts of `path` (`-`: standard input), given with `option`: JSON Lines when the name ends in .jsonl (any case),
    text in the field `text_column` (None: "text") of each non-blank line; else one text per line. Table formats,
    and a `text_column` for input that is not JSON Lines, are refused rather than read as lines of text.
    """
    if path != "-" and not os.path.isfile(path):
        raise SystemExit(f"error: {path}: no such file.")
    suffix = "" if path == "-" else os.path.splitext(path)[1].lower()
    if suffix in _TABLE_READERS:
        convert = f"pandas.{_TABLE_READERS[suffix].replace('PATH', repr(path))}.to_json('texts.jsonl', " \
                  "orient='records', lines=True, force_ascii=False)"
        raise SystemExit(f"error: {path}: {option} takes plain text, one text per line, or JSON Lines (.jsonl) with a "
                         f"{text_column or 'text'!r} field per line (or name it with --text_column), not "
                         f"{suffix[1:].upper()}; convert it, e.g. {convert}"
                         + (", or rename it *.jsonl if it holds JSON Lines." if suffix == ".json" else "."))
    jsonl = suffix == ".jsonl"
    if text_column is not None and not jsonl:
        source = "standard input is" if path == "-" else f"{path} is"
        raise SystemExit(f"error: --text_column names the text field of a .jsonl {option}; {source} read as plain "
                         "text, one text per line: drop --text_column, or give JSON Lines as a file named *.jsonl.")
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


def recheck_option(sub) -> None:
    sub.add_argument("--recheck_margin", "--recheck-margin", type=float,
                     help="onnx-int8: rerun in fp32 the texts whose two best labels lie closer than this (0.01 kept "
                          "99.3-99.4 %% of fp32's labels, rerunning ~1 %% of the texts, on a graph exported with "
                          "--calibration-file; default: no recheck).")


def load_model(path: str | None, args):
    """
    The model at `path` for `args` (backend, device, threads, precision); `path` None: the default encoder with
    unused reference heads (for embeddings).
    """
    from .inference_sentence_multitask import not_a_model_folder

    problem = path and not_a_model_folder(path)
    if problem:
        problem = "a file, not a directory" if problem == "is a file" else "no such directory"
        raise SystemExit(f"error: {path}: {problem}; --model takes a directory saved by `sentence-multitask train` (or "
                         "save_pretrained) or a Hub repo id.")
    recheck_margin = getattr(args, "recheck_margin", None) or 0.0
    if recheck_margin and getattr(args, "backend", "torch") != "onnx-int8":
        raise SystemExit("error: --recheck_margin applies to --backend onnx-int8 only.")
    if getattr(args, "backend", "torch") in ("onnx", "onnx-int8"):
        if path is None:
            raise SystemExit("error: --backend onnx runs a saved model's ONNX graph (see export-onnx): add --model DIR.")
        if args.device not in (None, "cpu"):
            raise SystemExit(f"error: --device {args.device}: an ONNX model runs on CPU (onnxruntime's CPU provider); "
                             "drop --device or use --backend torch.")
        if getattr(args, "precision", None) in ("bf16", "fp16"):
            raise SystemExit(f"error: --precision {args.precision}: an ONNX model runs at the precision it was exported "
                             "with; drop --precision or use --backend torch.")
        from .onnx import OnnxSentenceMultiTask

        return OnnxSentenceMultiTask.from_pretrained(path, quantized=args.backend == "onnx-int8", threads=args.threads,
                                                     recheck_margin=recheck_margin)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = getattr(args, "precision", None) or "fp32"
    from .modeling_sentence_multitask import SentenceMultiTaskModel

    if path is None:
        from . import REFERENCE_TASKS

        model = SentenceMultiTaskModel.from_encoder(tasks=REFERENCE_TASKS)  # heads unused for embeddings
    else:
        # The package's own class: same code as the model's remote code, without copying it into the modules cache.
        model = SentenceMultiTaskModel.from_pretrained(path)
    model.inference_precision = precision
    return model.to(device)


def check_device(name: str) -> str:
    """`name` when torch can put a tensor there; else an error with torch's reason."""
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError, ValueError) as error:  # unknown name / no such device / torch built without it
        raise SystemExit(f"error: --device {name}: {str(error).splitlines()[0]} (use cpu, cuda or cuda:N where this "
                         "torch has them).") from None
    return name


def write_jsonl(rows) -> None:
    out = sys.stdout
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()


def cmd_predict(args) -> int:
    texts = read_texts(args)
    model = load_model(args.model, args)
    results = model.predict(texts, batch_size=args.batch_size, return_all_scores=args.all_scores)
    write_jsonl({"text": text, **result} for text, result in zip(texts, results))
    return 0


def cmd_embed(args) -> int:
    texts = read_texts(args)
    model = load_model(args.model, args)
    embeddings = model.encode(texts, batch_size=args.batch_size, normalize=not args.no_normalize)
    write_jsonl({"text": text, "embedding": [round(float(v), 7) for v in vector]} for text, vector in zip(texts, embeddings))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_model, format_table

    model = load_model(args.model, args)
    report = evaluate_model(model, args.data, text_column=args.text_column, label_columns=args.label_columns,
                            batch_size=args.batch_size)
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
    model = load_model(args.model, args)
    folder = export_onnx(model, args.output, quantize=args.quantize, calibration_texts=calibration_texts)
    from .onnx import FP32_FILE, INT8_FILE

    stale = not args.quantize and os.path.isfile(os.path.join(folder, INT8_FILE))
    print(f"Exported to {folder}: {FP32_FILE}" + (f", {INT8_FILE}" if args.quantize else "")
          + (f" (an earlier export's {INT8_FILE} of the same weights is still there)" if stale else ""))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentence-multitask",
        description="Multi-task sentence models on Hugging Face Transformers: train, evaluate, predict, embed.",
        epilog="`sentence-multitask train --help` lists every training option (all Trainer flags work).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def inference(name, help_text):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("texts", nargs="*", help="Texts (default: --file, else one per line on standard input).")
        sub.add_argument("--file", help="Text file, one text per line, or JSON Lines (.jsonl) with a text field; - "
                                        "for stdin (one text per line).")
        sub.add_argument("--text_column", "--text-column", help="Text field of a .jsonl --file (default: text).")
        sub.add_argument("--batch_size", "--batch-size", type=int, default=32)
        sub.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
        sub.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's choice).")
        sub.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                         help="fp32 (exact), bf16 (CPUs with native bf16, GPUs), fp16 (GPU) or auto.")
        sub.add_argument("--backend", choices=("torch", "onnx", "onnx-int8"), default="torch",
                         help="onnx / onnx-int8 run MODEL/onnx/model[_quantized].onnx (see export-onnx).")
        return sub

    sub = inference("predict", "Every task's label and score per text, as JSON Lines.")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--all_scores", "--all-scores", action="store_true", help="Add every label's probability.")
    recheck_option(sub)
    sub.set_defaults(run=cmd_predict)

    sub = inference("embed", "Sentence embeddings per text, as JSON Lines.")
    sub.add_argument("--model", help="Saved model directory or Hub id (default: the default encoder).")
    sub.add_argument("--no_normalize", "--no-normalize", action="store_true", help="Do not L2-normalise.")
    sub.set_defaults(run=cmd_embed)

    sub = commands.add_parser("evaluate", help="Metrics of a saved model on labelled files (table and JSON).")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--data", required=True, nargs="+", help="Labelled files: PATH or TASK=PATH (as for train).")
    sub.add_argument("--text_column", "--text-column", default="text")
    sub.add_argument("--label_columns", "--label-columns", nargs="*", help="TASK=COLUMN per task.")
    sub.add_argument("--output", help="Also write the JSON report to this file.")
    sub.add_argument("--batch_size", "--batch-size", type=int, default=64)
    sub.add_argument("--device")
    sub.add_argument("--threads", type=positive_int)
    sub.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32")
    sub.add_argument("--backend", choices=("torch", "onnx", "onnx-int8"), default="torch")
    recheck_option(sub)
    sub.set_defaults(run=cmd_evaluate)

    sub = commands.add_parser("export-onnx", help="Export encoder, pooling and heads as one ONNX graph.")
    sub.add_argument("--model", required=True, help="Saved model directory or Hub id.")
    sub.add_argument("--output", required=True, help="Directory for the model and its onnx/ folder.")
    sub.add_argument("--quantize", action="store_true", help="Also write a dynamic int8 (per-channel) graph.")
    sub.add_argument("--calibration_file", "--calibration-file",
                     help="With --quantize: a few hundred texts like the model's inputs (one per line, or .jsonl with "
                          "--text_column), e.g. training texts; smooths activation outliers first, so int8 keeps "
                          "more of fp32's labels.")
    sub.add_argument("--text_column", "--text-column",
                     help="Text field of a .jsonl calibration file (default: text).")
    sub.add_argument("--threads", type=positive_int)
    sub.set_defaults(run=cmd_export_onnx)

    commands.add_parser("train", help="Fine-tune encoder and heads with the HF Trainer (see `train --help`).", add_help=False)
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
