"""Bad data and bad options of `sentence-multitask train` (and of `evaluate`, where it reads the same files): each
fails before any work with an error that names the file, line, option or value, or is handled (skipped, capped) as
documented. The tiny random encoder and small JSON Lines files written to tmp_path; `training.main` in-process.
"""

from __future__ import annotations

import json

import pytest

try:
    from . import training_helpers as shared
    from .training_helpers import TOPIC_TEXT, make_rows, tiny_args, write_jsonl
except ImportError:  # tests/ collected as a plain directory
    import training_helpers as shared
    from training_helpers import TOPIC_TEXT, make_rows, tiny_args, write_jsonl
from sentence_multitask import training
from sentence_multitask.arguments import DataArguments, parse_args
from sentence_multitask.data import (
    IGNORE,
    LABEL_PREFIX,
    DataError,
    load_source,
    parse_specs,
    prepare_data,
)

# The shared fixtures of training_helpers.py (pytest finds them here; module-scoped ones are built once for
# this file).
data_dir = shared.data_dir
tiny_tokenizer = shared.tiny_tokenizer
joint_run = shared.joint_run


# ---------------------------------------------------------------------------------------------------- 1. bad data


BAD_DATA = {
    "unknown label": (
        ['{"text": "a", "topic": "sports", "sentiment": "positive"}',
         '{"text": "b", "topic": "health", "sentiment": "negative"}',
         '{"text": "c", "topic": "tech", "sentiment": "angry"}'],
        ["--labels", "topic=sports,health,tech", "sentiment=negative,positive"],
        r"bad\.jsonl \(train\), line 3: unknown label 'angry' for task 'sentiment'",
    ),
    "missing label column": (
        ['{"text": "a", "mood": "positive"}', '{"text": "b", "mood": "negative"}'],
        ["--tasks", "sentiment"],
        r"bad\.jsonl \(train\): no label column for task 'sentiment'.*'mood'",
        "sentiment",  # given as sentiment=PATH
    ),
    "missing text column": (
        ['{"sentence": "a", "topic": "sports"}', '{"sentence": "b", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\): no text column 'text'.*'sentence'",
    ),
    "empty file": ([], ["--tasks", "topic"], r"bad\.jsonl: the file is empty"),
    "all labels missing for a task": (
        ['{"text": "a", "topic": "sports", "sentiment": null}',
         '{"text": "b", "topic": "tech", "sentiment": null}'],
        ["--tasks", "topic", "sentiment", "--labels", "topic=sports,tech", "sentiment=negative,positive"],
        r"bad\.jsonl \(train\): every row lacks a label for task 'sentiment'",
    ),
    "all labels missing for a task, labels inferred": (
        ['{"text": "a", "topic": "sports", "sentiment": null}',
         '{"text": "b", "topic": "tech", "sentiment": null}'],
        ["--tasks", "topic", "sentiment"],
        r"Task 'sentiment' has no labelled training row",
    ),
    "no file carries a task, labels given": (
        ['{"text": "a", "topic": "sports"}', '{"text": "b", "topic": "tech"}'],
        ["--labels", "topic=sports,tech", "sentiment=negative,positive"],
        r"Task 'sentiment' has no labelled training row",
    ),
    "malformed JSON": (
        ['{"text": "a", "topic": "sports"}', '{"text": "b", "topic": "tech"}', '{"text": "c", "topic": "tech"',
         '{"text": "d", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl, line 3: malformed JSON",
    ),
    "empty text": (
        ['{"text": "a", "topic": "sports"}', '{"text": "   ", "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\), line 2: the text is empty",
    ),
    "number as text": (
        ['{"text": "a", "topic": "sports"}', '{"text": 42, "topic": "tech"}'],
        ["--tasks", "topic"],
        r"bad\.jsonl \(train\), line 2: the text is 42 \(int\), not a string",
    ),
}


def test_json_files_with_a_byte_order_mark_or_leading_blanks_load(tmp_path):
    rows = [{"text": "a", "topic": "sports"}, {"text": "b", "topic": "tech"}]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(row) + "\n" for row in rows).encode())
    array = tmp_path / "array.json"
    array.write_text("\n  " + json.dumps(rows), encoding="utf-8")
    for path in (bom, array):
        assert load_source(parse_specs([f"topic={path}"])[0], "train").to_list() == rows, path.name


def test_a_file_the_parser_rejects_is_named_with_the_parsers_reason(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,topic\na,sports\nb,tech,extra,more\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ragged\.csv: could not be read as CSV: .*\(.*[Ee]xpected 2 fields"):
        load_source(parse_specs([f"topic={ragged}"])[0], "train")


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_fails_before_training_with_a_precise_error(case, tmp_path, tiny_encoder, monkeypatch):
    lines, options, message, *prefix = BAD_DATA[case]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    spec = f"{prefix[0]}={path}" if prefix else str(path)

    def not_reached(*args, **kwargs):
        raise AssertionError("the model was built: the data error was not caught before training")

    monkeypatch.setattr(training, "build_model", not_reached)
    with pytest.raises(DataError, match=message):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", spec, *options))
    assert not (tmp_path / "out" / "config.json").exists()


def test_unknown_label_in_validation_file_is_named(tmp_path, data_dir, tiny_tokenizer):
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "topic": "sports", "sentiment": "positive"},
                                                      {"text": "y", "topic": "cooking", "sentiment": "negative"}])
    with pytest.raises(DataError, match=r"val\.jsonl \(validation\), line 2: unknown label 'cooking' for task 'topic'"):
        prepare_data(DataArguments(train_files=[str(data_dir / "both.jsonl")], validation_files=[validation],
                                   tasks=["topic", "sentiment"]), tiny_tokenizer)


def test_validation_files_without_train_files_is_an_error(tmp_path, data_dir, tiny_tokenizer):
    """Not silently swapped for the demo validation file."""
    with pytest.raises(ValueError, match=r"--validation_files needs --train_files"):
        prepare_data(DataArguments(validation_files=[str(data_dir / "both_val.jsonl")]), tiny_tokenizer)


def test_csv_label_ids_with_blank_cells_train_and_evaluate(tmp_path, tiny_encoder, tiny_tokenizer):
    """A CSV id column with a blank cell is read as floats (0.0, 1.0, None): whole numbers are ids, blanks no label."""
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    path = tmp_path / "ids.csv"
    path.write_text("text,topic,sentiment\nthe team won the match,0,1\nthe doctor changed my medicine,1,\n"
                    "the laptop update broke wifi,2,0\nthe clinic opened a new ward,,0\n", encoding="utf-8")
    labels = ["--labels", "topic=sports,health,tech", "sentiment=negative,positive"]
    data = prepare_data(DataArguments(train_files=[str(path)], labels=labels[1:]), tiny_tokenizer)
    assert data.train[LABEL_PREFIX + "topic"] == [0, 1, 2, IGNORE]
    assert data.train[LABEL_PREFIX + "sentiment"] == [1, IGNORE, 0, 0]
    out = tmp_path / "out"
    training.main(tiny_args(tiny_encoder, out, "--train_files", str(path), *labels, "--max_steps", "1"))
    assert json.loads((out / "config.json").read_text())["tasks"]["topic"] == ["sports", "health", "tech"]

    model = SentenceMultiTaskModel.from_pretrained(out)
    report = evaluate_model(model, [str(path)])
    assert report["tasks"]["topic"]["support"] == 3 and report["tasks"]["sentiment"]["support"] == 3

    # A fractional id is still an error, named by line, in training and in evaluation.
    path.write_text("text,topic\nthe team won the match,0\nthe doctor changed my medicine,0.5\n", encoding="utf-8")
    message = r"ids\.csv \((train|evaluation)\), line 3: .*0\.5.*for task 'topic'.*whole number"
    with pytest.raises(DataError, match=message):
        prepare_data(DataArguments(train_files=[str(path)], labels=["topic=sports,health,tech"]), tiny_tokenizer)
    with pytest.raises(DataError, match=message):
        evaluate_model(model, [str(path)])


@pytest.mark.parametrize("max_length", ["0", "1"])
def test_max_length_below_two_fails_before_any_work(max_length, tmp_path, data_dir, tiny_encoder, monkeypatch):
    """Such a model could not be loaded again; with --overwrite_model it would have replaced a good one."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"the": "good model"}', encoding="utf-8")

    def not_reached(*args, **kwargs):
        raise AssertionError("data or model loaded before --max_length was checked")

    monkeypatch.setattr(training, "prepare_data", not_reached)
    monkeypatch.setattr(training, "build_model", not_reached)
    message = rf"--max_length must be a whole number of at least 2 tokens .*got {max_length}\."
    with pytest.raises(ValueError, match=message):
        training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"), "--max_length",
                                max_length, "--overwrite_model"))
    assert (out / "config.json").read_text(encoding="utf-8") == '{"the": "good model"}'


@pytest.mark.parametrize("limit", ["encoder", "tokenizer"])
def test_max_length_above_the_encoder_limit_is_capped_before_tokenising(limit, tmp_path, tiny_encoder, monkeypatch,
                                                                       caplog):
    """An encoder with 64 positions (or a tokenizer with model_max_length 48) and --max_length 1024: long texts are
    truncated to the limit, and the saved model says so, instead of a tensor size error in the first step."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    positions, cap = (64, 64) if limit == "encoder" else (512, 48)
    encoder = tmp_path / "encoder"
    config = BertConfig.from_pretrained(tiny_encoder, max_position_embeddings=positions)
    BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder, model_max_length=cap if limit == "tokenizer" else 512)
    tokenizer.save_pretrained(encoder)
    rows = [{"text": "the team won the match " * 30, "topic": "sports"},
            {"text": "the doctor changed my medicine " * 30, "topic": "health"}]
    train_file = write_jsonl(tmp_path / "long.jsonl", rows)

    prepared = []
    original = training.prepare_data

    def recording(data_args, *args, **kwargs):
        prepared.append(data_args.max_length)
        return original(data_args, *args, **kwargs)

    monkeypatch.setattr(training, "prepare_data", recording)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="sentence_multitask"):
        training.main(tiny_args(str(encoder), out, "--train_files", train_file, "--tasks", "topic", "--max_length",
                                "1024", "--max_steps", "1"))
    assert prepared == [cap]
    warnings = [record.getMessage() for record in caplog.records if "--max_length" in record.getMessage()]
    assert len(warnings) == 1 and "--max_length 1024" in warnings[0] and f"truncated to {cap} tokens" in warnings[0]
    assert ("max_position_embeddings" in warnings[0]) == (limit == "encoder"), warnings
    assert json.loads((out / "config.json").read_text())["max_length"] == cap
    assert f"| max length | {cap} |" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("weight", ["abc", "", "-1", "nan"])
def test_bad_task_weight_names_the_option_and_the_value(weight, tmp_path, data_dir, tiny_encoder, monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("data loaded before --task_weights was checked")

    monkeypatch.setattr(training, "prepare_data", not_reached)
    with pytest.raises(ValueError, match=rf"--task_weights .*'topic={weight}'"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                "--task_weights", f"topic={weight}"))


@pytest.mark.parametrize("option, items", [("--task_weights", ["topic=1", "topic=2"]),
                                           ("--labels", ["topic=a,b", "sentiment=x,y", "topic=c,d"])])
def test_a_task_given_twice_in_one_option_is_an_error(option, items, tmp_path, data_dir, tiny_encoder):
    with pytest.raises(ValueError, match=rf"{option} gives 'topic' twice"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                option, *items))


def test_unknown_task_prefix_hint_fits_train_and_evaluate(tmp_path, data_dir, tiny_encoder, tiny_tokenizer):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    spec = f"cooking={data_dir / 'both_val.jsonl'}"
    hint = r"names task\(s\) \['cooking'\].*the TASK= prefix of this file must name one of them\.$"
    with pytest.raises(DataError, match=hint) as trained:
        prepare_data(DataArguments(train_files=[str(data_dir / "both.jsonl")], validation_files=[spec],
                                   tasks=["topic", "sentiment"]), tiny_tokenizer)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": ["health", "sports", "tech"]})
    with pytest.raises(DataError, match=hint) as evaluated:  # `evaluate` has no --tasks option
        evaluate_model(model, [spec])
    assert "--tasks" not in str(trained.value) + str(evaluated.value)


def test_label_columns_naming_no_task_is_an_error_in_train_and_evaluate(tmp_path, tiny_encoder, tiny_tokenizer):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    # `label` holds other labels than `category`: a misspelt task must not silently fall back to it.
    rows = [{"text": text, "category": topic, "label": "tech"} for topic, texts in TOPIC_TEXT.items() for text in texts]
    spec = "topic=" + write_jsonl(tmp_path / "two_columns.jsonl", rows)
    message = r"--label_columns names task\(s\) \['topc'\], but the tasks are \['topic'\]"
    with pytest.raises(DataError, match=message):
        prepare_data(DataArguments(train_files=[spec], label_columns=["topc=category"]), tiny_tokenizer)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": sorted(TOPIC_TEXT)})
    with pytest.raises(DataError, match=message):
        evaluate_model(model, [spec], label_columns=["topc=category"])
    assert evaluate_model(model, [spec], label_columns=["topic=category"])["tasks"]["topic"]["support"] == len(rows)


def test_evaluate_refuses_data_without_labels_and_words_the_fix_for_evaluate(tmp_path, tiny_encoder):
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.evaluation import evaluate_model

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"topic": sorted(TOPIC_TEXT)})
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": "a match", "topic": None}] * 2)
    with pytest.raises(ValueError, match=r"No row of .*unlabelled.jsonl has a label for the model's tasks"):
        evaluate_model(model, [f"topic={unlabelled}"])
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"text": "a recipe", "topic": "cooking"}])
    with pytest.raises(DataError, match="unknown label 'cooking'") as error:
        evaluate_model(model, [f"topic={unknown}"])
    assert "--labels" not in str(error.value)  # an option of train, not of evaluate


@pytest.mark.parametrize("option", ["--max_train_samples", "--max_eval_samples"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_row_limits_below_one_are_refused(option, value, tmp_path, data_dir, tiny_encoder):
    with pytest.raises(ValueError, match=rf"{option} must be at least 1 .*got {value}"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", "--train_files", str(data_dir / "both.jsonl"),
                                option, value))
    assert not (tmp_path / "out").exists()


def test_validation_without_labels_is_skipped_and_the_model_saved(tmp_path, data_dir, tiny_encoder):
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": row["text"], "topic": None, "sentiment": None}
                                                             for row in make_rows(6, seed=5)])
    out = tmp_path / "out"
    metrics = training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"),
                                      "--validation_files", unlabelled, "--tasks", "topic", "sentiment", "--max_steps",
                                      "2", "--eval_strategy", "steps", "--eval_steps", "1"))
    assert metrics == {}
    assert (out / "model.safetensors").is_file()


def test_sequential_phase_without_validation_rows_is_not_evaluated(tmp_path, data_dir, tiny_encoder):
    # The validation data labels only the primary task: phase 2 (sentiment) has nothing to evaluate.
    out = tmp_path / "out"
    metrics = training.main(tiny_args(tiny_encoder, out, "--train_files", str(data_dir / "both.jsonl"),
                                      "--validation_files", f"topic={data_dir / 'topic.jsonl'}", "--tasks", "topic",
                                      "sentiment", "--training_mode", "sequential", "--primary_tasks", "topic",
                                      "--num_train_epochs", "1", "--eval_strategy", "epoch"))
    assert "eval_topic_accuracy" in metrics and "eval_sentiment_accuracy" not in metrics
    assert (out / "model.safetensors").is_file()


def test_output_dir_files_the_save_would_overwrite_are_refused(tmp_path, data_dir, tiny_encoder):
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project", encoding="utf-8")
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "1"]
    with pytest.raises(FileExistsError, match=r"holds README.md, which saving the model would overwrite"):
        training.main(tiny_args(tiny_encoder, out, *options))
    assert (out / "README.md").read_text(encoding="utf-8") == "my project"
    training.main(tiny_args(tiny_encoder, out, *options, "--overwrite_model"))  # asked for: replaced
    assert (out / "config.json").is_file()
    with pytest.raises(FileExistsError, match=r"--output_dir .*afile is a file"):
        (tmp_path / "afile").write_text("x", encoding="utf-8")
        training.main(tiny_args(tiny_encoder, tmp_path / "afile", *options))


def test_model_sources_are_checked_before_any_work(tmp_path, data_dir, tiny_encoder, joint_run):
    options = ["--train_files", str(data_dir / "both.jsonl"), "--tasks", "topic", "sentiment", "--max_steps", "1"]
    for option in ("--model", "--encoder"):
        with pytest.raises(FileNotFoundError, match=rf"{option} {tmp_path}/nope does not exist"):
            training.main(tiny_args(tiny_encoder, tmp_path / "out", *options, option, str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="is a saved sentence-multitask model, not an encoder: continue training it "
                                         "with --model"):
        training.main(tiny_args(str(joint_run), tmp_path / "out", *options))
    with pytest.raises(ValueError, match=r"--model .* is a \w+ encoder, not a saved sentence-multitask model: start a "
                                         "new model from it with --encoder"):
        training.main(tiny_args(tiny_encoder, tmp_path / "out", *options, "--model", str(tiny_encoder)))


def test_train_usage_errors_are_one_line(tmp_path, data_dir, tiny_encoder):
    """Unknown options and bad options files end in one `error:` line (the CLI shows errors this package raises)."""
    from sentence_multitask.cli import _raised_by_this_package

    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    unknown_key = tmp_path / "unknown.json"
    unknown_key.write_text(json.dumps({"trian_files": ["x.jsonl"]}), encoding="utf-8")
    cases = [(tiny_args(tiny_encoder, tmp_path / "out", "--trian_files", "x.jsonl"), "unknown options"),
             ([str(broken)], "options file .*broken.json"), ([str(tmp_path / "missing.json")], "options file"),
             ([str(unknown_key)], "options file .*trian_files")]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            parse_args(argv)
        assert _raised_by_this_package(error.value), argv
