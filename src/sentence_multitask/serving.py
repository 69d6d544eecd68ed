"""HTTP server for a saved model: `POST /predict`, `POST /embed`, `GET /health`, `GET /info` (FastAPI + uvicorn,
`pip install 'sentence-multitask[serve]'`).

Bodies follow the Inference Endpoints convention, `{"inputs": str | [str], "parameters": {...}}`. Requests from many
clients are gathered: the first request of a gathering waits up to `max_wait_ms` for others (or until `gather_texts`
texts are in), then one `predict` / `encode` call runs in a worker thread, which sorts the texts by length and runs
them in forward passes of `batch_size`, and each request gets its own rows. While a call runs, the next requests
queue up, so under load each call gets a full gathering. Bad requests get a 4xx answer with a JSON body
`{"error": ...}`; a failing request never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field or parameter is an error, not ignored


class PredictParameters(_Strict):
    return_all_scores: StrictBool = False
    max_length: int | None = Field(None, ge=2, strict=True)


class EmbedParameters(_Strict):
    normalize: StrictBool = True
    max_length: int | None = Field(None, ge=2, strict=True)


class PredictRequest(_Strict):
    inputs: StrictStr | list[StrictStr]
    parameters: PredictParameters = PredictParameters()


class EmbedRequest(_Strict):
    inputs: StrictStr | list[StrictStr]
    parameters: EmbedParameters = EmbedParameters()


@dataclass
class _Pending:
    kind: str
    options: tuple
    texts: list[str]
    future: asyncio.Future


@dataclass
class Batcher:
    """Gathers the texts of concurrent requests, up to `gather_texts`, into one `run(kind, options, texts)` call in a
    worker thread; requests with other options in the same gathering run as their own call."""

    run: Callable[[str, tuple, list[str]], list]
    gather_texts: int = 256
    max_wait: float = 0.005
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="forward"))

    async def submit(self, kind: str, options: tuple, texts: list[str]) -> list:
        """The outputs for `texts`, computed in a batch with other requests'."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(kind, options, texts, future))
        return await future

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            count, deadline = len(batch[0].texts), loop.time() + self.max_wait
            while count < self.gather_texts:
                if self.queue.empty():
                    if loop.time() >= deadline:
                        break
                    await asyncio.sleep(min(0.001, max(deadline - loop.time(), 0)))
                    continue
                batch.append(self.queue.get_nowait())
                count += len(batch[-1].texts)
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault((pending.kind, pending.options), []).append(pending)
            for (kind, options), members in groups.items():
                await self._run_group(kind, options, members)

    async def _run_group(self, kind: str, options: tuple, members: list[_Pending]) -> None:
        texts = [text for pending in members for text in pending.texts]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, kind, options, texts)
        except Exception as error:  # answered to each request of the batch
            logger.exception("forward pass failed")
            for pending in members:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        start = 0
        for pending in members:
            if not pending.future.done():  # a client that went away
                pending.future.set_result(outputs[start : start + len(pending.texts)])
            start += len(pending.texts)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_error(errors: list[dict]) -> JSONResponse:
    """400 for a body that is no JSON object (malformed or empty), 422 for a well-formed one with wrong fields."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return _error(400, f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg'))}; send a JSON object "
                           '{"inputs": "text" or ["text", ...], "parameters": {...}}.')
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return _error(400, 'empty body; send a JSON object {"inputs": "text" or ["text", ...], "parameters": {...}}.')
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg')}")
    return _error(422, "; ".join(dict.fromkeys(problems)) + ' (expected {"inputs": "text" or ["text", ...], '
                       '"parameters": {...}}).')


def check_limits(texts: list[str], max_batch_texts: int, max_text_chars: int) -> None:
    """Refuse a request over the server's limits (413), naming the limit."""
    if len(texts) > max_batch_texts:
        raise HTTPException(413, f"{len(texts)} texts in one request; this server takes at most {max_batch_texts} "
                                 "(--max_batch_texts): split the request.")
    for position, text in enumerate(texts):
        if len(text) > max_text_chars:
            raise HTTPException(413, f"inputs[{position}] has {len(text)} characters; this server takes at most "
                                     f"{max_text_chars} per text (--max_text_chars): shorten or split it.")


def create_app(model, *, max_batch_texts: int = 256, max_text_chars: int = 20_000, batch_size: int = 64,
               gather_texts: int = 256, max_wait_ms: float = 5.0, **load_options: Any) -> FastAPI:
    """
    The FastAPI app serving `model`: a loaded model, or a saved folder / Hub id loaded once when the app starts
    (with `load_options` of `loading.load_model`: backend, device, precision, threads).
    """
    from .inference_sentence_multitask import check_texts

    state: dict[str, Any] = {}

    def run(kind: str, options: tuple, texts: list[str]) -> list:
        loaded = state["model"]
        if kind == "embed":
            normalize, max_length = options
            return loaded.encode(texts, batch_size=batch_size, normalize=normalize, max_length=max_length,
                                 show_progress_bar=False).tolist()
        return_all_scores, max_length = options
        return loaded.predict(texts, batch_size=batch_size, return_all_scores=return_all_scores,
                              max_length=max_length, show_progress_bar=False)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, (str, os.PathLike)):
            from .loading import load_model

            state["model"] = await asyncio.to_thread(load_model, model, **load_options)
        else:
            state["model"] = model
        batcher = Batcher(run, gather_texts=gather_texts, max_wait=max_wait_ms / 1000)
        state["batcher"], state["task"] = batcher, asyncio.create_task(batcher.serve_forever())
        yield
        state["task"].cancel()
        batcher.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="sentence-multitask", lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, lambda request, error: _validation_error(list(error.errors())))
    app.add_exception_handler(StarletteHTTPException,
                              lambda request, error: _error(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request failed")
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    async def answer(kind: str, inputs: str | list[str], options: tuple):
        texts = [inputs] if isinstance(inputs, str) else inputs
        check_limits(texts, max_batch_texts, max_text_chars)
        try:
            check_texts(texts)  # here, so that one bad text does not fail the batch it would join
        except (TypeError, ValueError) as error:
            raise HTTPException(422, str(error).replace("texts[", "inputs[")) from None
        outputs = await state["batcher"].submit(kind, options, texts) if texts else []
        # Plain lists, dicts, strings and floats: serialised as they are, without FastAPI's per-value encoder.
        return JSONResponse(outputs[0] if isinstance(inputs, str) else outputs)

    @app.post("/predict")
    async def predict(request: PredictRequest):
        """Every task's label and score: one object for a string, a list of them for a list."""
        parameters = request.parameters
        return await answer("predict", request.inputs, (parameters.return_all_scores, parameters.max_length))

    @app.post("/embed")
    async def embed(request: EmbedRequest):
        """Sentence embeddings: one list of floats for a string, a list of them for a list."""
        parameters = request.parameters
        return await answer("embed", request.inputs, (parameters.normalize, parameters.max_length))

    @app.get("/health")
    async def health():
        task = state.get("task")
        if task is None or task.done():
            return _error(503, "the batching loop is not running; restart the server.")
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        config = state["model"].config
        return {"model": getattr(config, "name_or_path", None) or str(model), "tasks": dict(config.tasks),
                "hidden_size": config.hidden_size, "max_length": config.max_length,
                "limits": {"max_batch_texts": max_batch_texts, "max_text_chars": max_text_chars},
                "batch_size": batch_size, "gather_texts": gather_texts, "max_wait_ms": max_wait_ms}

    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve the model at `model` on `host`:`port` until interrupted (options: those of `create_app`)."""
    import uvicorn

    uvicorn.run(create_app(model, **options), host=host, port=port)
