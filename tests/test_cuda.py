"""On a CUDA device: fine-tuning there (bf16 mixed precision), the pipeline there, exporting ONNX from there, and
fp32 / bf16 / fp16 `encode` and `predict` there against fp32 on CPU, on every validation text of the shared data, within
the documented bounds (docs/performance.md). CI has no GPU, so these skip there; on a GPU machine run `pytest tests/test_cuda.py`."""

import copy
import json

import pytest
import torch

from .conftest import SHARED_DATA
from .test_fast_paths import label_agreement, validation_texts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def gpu_trained(tmp_path_factory, minilm_path):
    """All-MiniLM-L6-v2 fine-tuned for 300 steps on the GPU (the Trainer's default device) in bf16 mixed precision,
    loaded on CPU."""
    from sentence_multitask import SentenceMultiTaskModel
    from sentence_multitask.training import main

    out = tmp_path_factory.mktemp("cuda") / "model"
    main(["--encoder", minilm_path,
          "--train_files", f"topic={SHARED_DATA / 'topic_train.jsonl'}", f"sentiment={SHARED_DATA / 'sentiment_train.jsonl'}",
          "--labels", "topic=sports,health,tech,finance,education,other", "sentiment=negative,neutral,positive",
          "--max_steps", "300", "--per_device_train_batch_size", "32", "--max_length", "128", "--learning_rate", "1e-4",
          "--bf16", "true", "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", str(out),
          "--disable_tqdm", "true", "--seed", "0"])
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0
    return out, SentenceMultiTaskModel.from_pretrained(out).eval()


@pytest.fixture(scope="module")
def rows():
    return validation_texts(n_per_task=100_000)  # all of them: 1,440 topic and 2,000 sentiment texts


@pytest.fixture(scope="module")
def cpu_fp32(gpu_trained, rows):
    model = gpu_trained[1]
    texts = [row["text"] for task_rows in rows.values() for row in task_rows]
    return texts, model.encode(texts, convert_to="torch"), model.predict_proba(texts)


@pytest.fixture(scope="module")
def on_gpu(gpu_trained):
    return copy.deepcopy(gpu_trained[1]).to("cuda")


def test_training_on_the_gpu_learns_both_tasks(on_gpu, cpu_fp32, rows):
    texts, _, cpu = cpu_fp32
    _, accuracy = label_agreement(cpu, on_gpu.predict_proba(texts), rows, on_gpu.config.tasks)
    for task, task_rows in rows.items():
        labels = [row["label"] for row in task_rows]
        majority = max(labels.count(label) for label in set(labels)) / len(labels)
        assert accuracy[task][1] > majority + 0.1, (task, accuracy[task], majority)


@pytest.mark.parametrize("precision, cosine_min, same_min", [
    ("fp32", 0.99999, 0.999),  # exact up to the order of GPU sums
    ("bf16", 0.9999, 0.995),
    ("fp16", 0.9999, 0.995),
    ("auto", 0.9999, 0.995),  # bf16 on GPUs that have it
])
def test_gpu_precisions_agree_with_cpu_fp32(on_gpu, cpu_fp32, rows, precision, cosine_min, same_min):
    texts, embeddings, proba = cpu_fp32
    gpu_embeddings = on_gpu.encode(texts, precision=precision, convert_to="torch").float().cpu()
    cosine = (embeddings * gpu_embeddings).sum(1) / gpu_embeddings.norm(dim=1)
    same, accuracy = label_agreement(proba, on_gpu.predict_proba(texts, precision=precision), rows,
                                     on_gpu.config.tasks)
    print(f"{precision}: cosine min {float(cosine.min()):.6f}, labels same {same}, accuracy (cpu, gpu) {accuracy}")
    assert float(cosine.min()) >= cosine_min
    assert all(share >= same_min for share in same.values()), same


def test_pipeline_on_the_gpu_matches_cpu(gpu_trained, cpu_fp32):
    from transformers import pipeline

    texts, _, proba = cpu_fp32
    classify = pipeline(model=str(gpu_trained[0]), trust_remote_code=True, device=0)
    assert classify.model.device.type == "cuda"
    results = classify(texts[:64], batch_size=16)
    tasks = gpu_trained[1].config.tasks
    for task, labels in tasks.items():
        expected = [labels[i] for i in proba[task][:64].argmax(-1).tolist()]
        assert [result[task]["label"] for result in results] == expected


def test_onnx_export_of_a_model_on_the_gpu_leaves_it_there(gpu_trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from sentence_multitask.onnx import OnnxSentenceMultiTask, export_onnx

    model = copy.deepcopy(gpu_trained[1]).to("cuda")
    export_onnx(model, tmp_path / "onnx-model")
    assert model.device.type == "cuda" and not model.training
    texts = ["The striker scored twice in the final.", "My rent went up again and I am furious."]
    onnx = OnnxSentenceMultiTask.from_pretrained(tmp_path / "onnx-model")
    assert [row["topic"]["label"] for row in onnx.predict(texts)] == [row["topic"]["label"] for row in model.predict(texts)]
