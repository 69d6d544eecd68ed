import pytest
from transformers import AutoConfig

from sentence_multitask import SentenceMultiTaskConfig


def test_tasks_and_defaults_come_from_the_config():
    config = SentenceMultiTaskConfig(tasks={"spam": ["ham", "spam"]}, head_dropout=0.2, pooling="max")
    assert config.tasks == {"spam": ["ham", "spam"]}
    assert config.encoder.model_type == "bert"
    assert config.head_size == config.encoder.hidden_size // 2
    assert (config.pooling, config.head_dropout) == ("max", 0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": {"topic": ["only"]}}, "at least two labels"),
        ({"tasks": {"": ["a", "b"]}}, "non-empty"),
        ({"tasks": {"a.b": ["a", "b"]}}, "dot"),
        ({"tasks": {"topic": ["a", "b", "a"]}}, "more than once"),
        ({"tasks": {"topic": ["a", ""]}}, "empty or non-string label"),
        ({"tasks": {"topic": "ab"}}, "list of names"),
        ({"tasks": ["topic"]}, "dict mapping task name"),
        ({"tasks": {"t": ["a", "b"]}, "pooling": "median"}, "Unknown pooling mode 'median'"),
        ({"tasks": {"t": ["a", "b"]}, "head_dropout": 1.5}, "head_dropout"),
        ({"tasks": {"t": ["a", "b"]}, "task_weights": {"x": 1.0}}, "unknown task"),
        ({"tasks": {"t": ["a", "b"]}, "task_weights": {"t": -1}}, "non-negative"),
        ({"tasks": {"t": ["a", "b"]}, "task_weights": {"t": float("nan")}}, "non-negative number, got nan"),
        ({"tasks": {"t": ["a", "b"]}, "head_dropout": "0.1x"}, "head_dropout must be a number"),
        ({"tasks": {"t": ["a", "b"]}, "max_length": 2.5}, "max_length must be a whole number"),
        ({"tasks": {"average": ["a", "b"]}}, "'average' names the mean of the tasks' metrics"),
        ({"tasks": {"t": ["sports", " sports"]}}, "label ' sports' with surrounding spaces"),
    ],
)
def test_bad_definitions_are_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SentenceMultiTaskConfig(**kwargs)


def test_round_trip_keeps_label_order_and_nested_encoder(tmp_path, minilm_path):
    encoder = AutoConfig.from_pretrained(minilm_path)
    labels = ["zeta", "alpha", "mid"]
    config = SentenceMultiTaskConfig(encoder=encoder, tasks={"t": labels}, task_weights={"t": 0.5})
    config.save_pretrained(tmp_path)
    loaded = SentenceMultiTaskConfig.from_pretrained(tmp_path)
    assert loaded.tasks == {"t": labels}
    assert loaded.encoder.hidden_size == 384 and loaded.encoder.num_hidden_layers == 6
    assert loaded.task_weight("t") == 0.5
    assert "sentence-multitask" in loaded.custom_pipelines
