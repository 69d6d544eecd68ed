"""The HTTP server (a real uvicorn server on 127.0.0.1, in a thread) and the Inference Endpoints handler: every
endpoint, concurrent requests batched together and each answered with its own rows, bad requests answered 4xx with a
JSON body while the server stays healthy."""

import importlib.util
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .conftest import REFERENCE_TASKS, SENTENCES, run_cli

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

MAX_TEXTS, MAX_CHARS = 8, 200


@pytest.fixture(scope="module")
def server(tiny_reference_model):
    from sentence_multitask.serving import create_app

    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(tiny_reference_model, max_batch_texts=MAX_TEXTS, max_text_chars=MAX_CHARS, batch_size=4,
                     gather_texts=64, max_wait_ms=20)
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    instance.should_exit = True
    thread.join(30)


def same_predictions(answer, expected):
    for task in REFERENCE_TASKS:
        assert answer[task]["label"] == expected[task]["label"]
        assert answer[task]["score"] == pytest.approx(expected[task]["score"], abs=1e-5)


def test_every_endpoint(server, tiny_reference_model):
    assert server.get("/health").json() == {"status": "ok"}
    info = server.get("/info").json()
    assert info["tasks"] == REFERENCE_TASKS and info["limits"] == {"max_batch_texts": MAX_TEXTS,
                                                                   "max_text_chars": MAX_CHARS}
    expected = tiny_reference_model.predict(SENTENCES, return_all_scores=True)
    one = server.post("/predict", json={"inputs": SENTENCES[0]}).json()
    same_predictions(one, expected[0])
    assert "scores" not in one["topic"]
    many = server.post("/predict", json={"inputs": SENTENCES, "parameters": {"return_all_scores": True}}).json()
    for answer, reference in zip(many, expected):
        same_predictions(answer, reference)
        assert answer["topic"]["scores"] == pytest.approx(reference["topic"]["scores"], abs=1e-5)
    assert server.post("/predict", json={"inputs": []}).json() == []
    vector = server.post("/embed", json={"inputs": SENTENCES[0]}).json()
    assert np.abs(np.array(vector) - tiny_reference_model.encode(SENTENCES[0])).max() < 1e-6
    raw = server.post("/embed", json={"inputs": SENTENCES, "parameters": {"normalize": False, "max_length": 8}}).json()
    assert np.abs(np.array(raw) - tiny_reference_model.encode(SENTENCES, normalize=False, max_length=8)).max() < 1e-6


def test_concurrent_requests_are_batched_and_each_gets_its_rows(server, tiny_reference_model, monkeypatch):
    texts = [f"request {i}: " + "word " * (i % 7) for i in range(48)]
    expected = tiny_reference_model.predict(texts)
    calls, predict = [], tiny_reference_model.predict
    monkeypatch.setattr(tiny_reference_model, "predict", lambda batch, **options: calls.append(len(batch)) or
                        predict(batch, **options))
    requests = [texts[start : start + 1 + start % 3] for start in range(0, 48, 3)]  # 16 requests of 1-3 texts
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda batch: server.post("/predict", json={"inputs": batch}), requests))
    for batch, answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        for row, text in zip(answer.json(), batch):
            same_predictions(row, expected[texts.index(text)])
    assert sum(calls) == sum(map(len, requests)) and len(calls) < len(requests), calls  # requests shared passes
    assert max(calls) > 4  # a gathering is not cut at --batch_size: predict sorts it into passes of that size


BAD_REQUESTS = [  # (method, path, body: JSON-able or raw bytes, status, words of the error)
    ("POST", "/predict", b'{"inputs": ', 400, "malformed JSON"),
    ("POST", "/predict", b"", 400, "empty body"),
    ("POST", "/predict", ["a text"], 422, "inputs"),
    ("POST", "/predict", {}, 422, "inputs: Field required"),
    ("POST", "/predict", {"inputs": 5}, 422, "inputs"),
    ("POST", "/predict", {"inputs": ["a", 3]}, 422, "inputs"),
    ("POST", "/predict", {"inputs": None}, 422, "inputs"),
    ("POST", "/predict", {"inputs": ["a"] * (MAX_TEXTS + 1)}, 413, f"at most {MAX_TEXTS} (--max_batch_texts)"),
    ("POST", "/embed", {"inputs": ["ok", "x" * (MAX_CHARS + 1)]}, 413, f"inputs[1] has {MAX_CHARS + 1} characters"),
    ("POST", "/predict", {"inputs": "a", "parameters": {"top_k": 3}}, 422, "parameters.top_k: Extra inputs"),
    ("POST", "/predict", {"inputs": "a", "parameters": {"return_all_scores": "yes"}}, 422, "return_all_scores"),
    ("POST", "/predict", {"inputs": "a", "parameters": {"max_length": 1}}, 422, "max_length"),
    ("POST", "/predict", {"inputs": "a", "extra": 1}, 422, "extra: Extra inputs"),
    ("POST", "/predict", b'{"inputs": "\\ud800"}', 422, "inputs[0] holds a lone surrogate"),
    ("POST", "/embed", {"inputs": "a", "parameters": {"return_all_scores": True}}, 422, "return_all_scores"),
    ("POST", "/embed", {"inputs": "a", "parameters": [1]}, 422, "parameters"),
    ("GET", "/predict", None, 405, "Method Not Allowed"),
    ("POST", "/nowhere", {"inputs": "a"}, 404, "Not Found"),
]


def test_bad_requests_get_a_4xx_json_error_and_the_server_stays_healthy(server):
    for method, path, body, status, words in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
        response = server.request(method, path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == status, (path, body, response.text)
        assert words in response.json()["error"], (path, body, response.text)
        assert server.get("/health").status_code == 200
    assert server.post("/predict", json={"inputs": "still serving"}).status_code == 200


def test_the_endpoint_handler_runs_from_the_model_folder(tiny_reference_model, tmp_path, capsys):
    tiny_reference_model.save_pretrained(tmp_path)
    status, _, err = run_cli(["export-handler", "--model", str(tmp_path)], capsys)
    assert status == 0 and (tmp_path / "handler.py").is_file(), err
    spec = importlib.util.spec_from_file_location("endpoint_handler", tmp_path / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.EndpointHandler(str(tmp_path))
    for answer, expected in zip(handler({"inputs": SENTENCES}), tiny_reference_model.predict(SENTENCES)):
        same_predictions(answer, expected)
    assert len(handler({"inputs": SENTENCES[0], "parameters": {"return_all_scores": True}})) == 1
    embeddings = handler({"inputs": SENTENCES, "parameters": {"embed": True, "normalize": False}})
    assert np.abs(np.array(embeddings) - tiny_reference_model.encode(SENTENCES, normalize=False)).max() < 1e-6
    with pytest.raises(ValueError, match="unknown parameter"):
        handler({"inputs": "a", "parameters": {"top_k": 1}})
    (tmp_path / "handler.py").write_text("# my own handler\n")
    status, _, err = run_cli(["export-handler", "--model", str(tmp_path)], capsys)
    assert status == 1 and "exists and is another handler" in err


def test_serve_command_passes_its_options(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("sentence_multitask.serving.serve",
                        lambda model, **options: seen.update(model=model, **options))
    status, _, err = run_cli(["serve", "--model", "some/model", "--port", "9001", "--max_batch_texts", "4"], capsys)
    assert status == 0, err
    assert seen["model"] == "some/model" and seen["port"] == 9001 and seen["max_batch_texts"] == 4
    assert seen["batch_size"] == 64 and seen["gather_texts"] == 256
    assert seen["host"] == "127.0.0.1" and seen["backend"] == "torch"
