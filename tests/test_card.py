"""The model card follows the Hub's conventions: huggingface_hub parses its metadata and its model-index, the metric
types are the Hub's ids, and the usage snippets name the repository the model is published to."""

from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from .conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "topic_train.jsonl").exists(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_path) -> Path:
    """all-MiniLM-L6-v2 trained (two steps) and validated on slices of the real shared data files."""
    from sentence_multitask import training

    out = tmp_path_factory.mktemp("card") / "real-data-model"
    training.main([
        "--encoder", minilm_path, "--output_dir", str(out),
        "--train_files", f"topic={SHARED_DATA / 'topic_train.jsonl'}", f"sentiment={SHARED_DATA / 'sentiment_train.jsonl'}",
        "--validation_files", f"topic={SHARED_DATA / 'topic_validation.jsonl'}",
        f"sentiment={SHARED_DATA / 'sentiment_validation.jsonl'}",
        "--labels", "topic=sports,health,tech,finance,education,other", "sentiment=negative,neutral,positive",
        "--max_train_samples", "32", "--max_eval_samples", "32", "--max_steps", "2", "--max_length", "32",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--hub_model_id", "someone/topic-sentiment",
    ])
    return out


def test_the_card_parses_and_its_model_index_round_trips(trained):
    text = (trained / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    metadata = metadata_load(trained / "README.md")
    assert metadata == card.data.to_dict()
    for key in ("license", "language", "library_name", "pipeline_tag", "base_model", "model-index"):
        assert metadata.get(key), key
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-classification"

    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "real-data-model"
    types = {(result.metric_type, tuple(sorted((result.metric_args or {}).items()))) for result in results}
    assert types == {("accuracy", ()), ("f1", (("average", "macro"),)), ("recall", (("average", "macro"),))}
    assert {result.dataset_split for result in results} == {"validation"}
    assert {result.dataset_name for result in results} == {"topic_validation.jsonl",
                                                           "sentiment_validation.jsonl"}
    # The same results written again give the same metadata: nothing is lost in the round trip.
    again = ModelCard.from_template(card.data).data.to_dict()
    assert model_index_to_eval_results(again["model-index"]) == (name, results)

    # Usage first, then what the card must say for a model that runs remote code.
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Usage" and {"## Intended use", "## Training", "## Evaluation", "## Limitations",
                                          "## Framework versions", "## Citation"} <= set(sections)
    assert 'from_pretrained("someone/topic-sentiment", trust_remote_code=True)' in text
    assert "transformers>=5.20" in text and 'revision="<commit hash>"' in text
    assert "validation files named in Training, which also chose the training options" in text


def test_a_loaded_model_pushed_to_another_repo_names_it_in_its_card(trained, monkeypatch):
    from sentence_multitask import SentenceMultiTaskModel

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["card"] = (Path(folder_path) / "README.md").read_text(encoding="utf-8")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: type("Url", (), {"repo_id": repo_id}))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = SentenceMultiTaskModel.from_pretrained(trained)
    model.push_to_hub("me/x")
    card = uploaded["card"]
    assert 'from_pretrained("me/x", trust_remote_code=True)' in card and 'pipeline(model="me/x"' in card
    assert "someone/topic-sentiment" not in card
    # Everything else is the card that was saved with the model, measured metrics included.
    saved = (trained / "README.md").read_text(encoding="utf-8")
    assert card == saved.replace("someone/topic-sentiment", "me/x")
