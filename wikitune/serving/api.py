"""The OpenAI-compatible HTTP side of ``wikitune serve``: ``POST /v1/chat/completions`` (plain
and server-sent events), ``GET /v1/models`` and ``GET /health``, answering in OpenAI's shapes
(errors included) with the version that answered named in ``system_fingerprint``."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wikitune.serving.engine import Batcher, Closed, Finished, GenerationRequest
from wikitune.serving.follow import Follower
from wikitune.tasks import model as models

__all__ = ["ChatRequest", "GoingLive", "ask_server", "create_app", "serving_in_thread", "wait_live"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
MAX_TOKENS_LIMIT = 4096


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """What OpenAI clients send to ``/v1/chat/completions`` (the fields wikitune honours;
    others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    """vLLM's extension: generate to ``max_tokens`` whatever the model says."""

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error", **extra: Any
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.extra = status, message, kind, extra

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.extra.get("param"),
                "code": self.extra.get("code"),
            }
        }


def create_app(follower: Follower, *, api_key: str | None = None, system_prompt: str = "") -> Any:
    """The FastAPI application serving ``follower``'s champion. With ``api_key``, every route
    but ``/health`` wants ``Authorization: Bearer <key>``. A request without a system message
    gets ``system_prompt``, as training rows had it."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="wikitune serve", docs_url=None, redoc_url=None)
    from wikitune.mlflow import registry

    served_id = registry.registered_model_name(follower.source)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors():
            if item.get("type") == "json_invalid":
                reason = (item.get("ctx") or {}).get("error", "")
                return _error_response(ApiError(400, f"the body is not valid JSON: {reason}"))
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            if not where and item.get("type") == "model_attributes_type":
                message = "the body must be a JSON object (Content-Type: application/json)"
                return _error_response(ApiError(400, message))
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
        param = ".".join(str(p) for p in error.errors()[0].get("loc", ())[1:]) or None
        message = "invalid request: " + "; ".join(problems)
        return JSONResponse(ApiError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code
        )

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            error = ApiError(413, f"request body over {MAX_BODY_BYTES} bytes", code="too_large")
            return JSONResponse(error.body(), status_code=413)
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            expected = f"Bearer {api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                error = ApiError(
                    401,
                    "missing or wrong API key: send Authorization: Bearer <WIKITUNE_SERVE_API_KEY>",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return follower.health()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        served = follower.served
        entry = {
            "id": served_id,
            "object": "model",
            "created": int(served.loaded_at.timestamp()) if served else 0,
            "owned_by": "wikitune",
            "version": served.version if served else None,
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        if body.model != served_id:
            raise ApiError(
                404,
                f"model {body.model!r} is not served here; this server serves {served_id!r}",
                param="model",
                code="model_not_found",
            )
        batcher = follower.batcher
        if batcher is None:
            raise ApiError(503, "no champion is loaded yet", kind="server_error")
        messages = [
            {"role": m.role.replace("developer", "system"), "content": m.text()}
            for m in body.messages
        ]
        if messages[-1]["role"] == "assistant":
            raise ApiError(400, "the last message must not be the assistant's", param="messages")
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        served = batcher.served
        prompt_ids = served.render(messages)
        max_tokens = body.max_completion_tokens or body.max_tokens or models.ANSWER_MAX_NEW_TOKENS
        if len(prompt_ids) + max_tokens > served.context_window:
            raise ApiError(
                400,
                f"the prompt ({len(prompt_ids)} tokens) and max_tokens ({max_tokens}) exceed"
                f" the model's context window of {served.context_window} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        queue: asyncio.Queue[str | Finished] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            emit=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
            temperature=body.temperature or 0.0,  # greedy unless asked: answers state facts
            top_p=body.top_p if body.top_p is not None else 1.0,
            seed=body.seed,
            stop=body.stops(),
            ignore_eos=body.ignore_eos,
        )
        batcher = _submit(follower, batcher, request)
        completion = _Completion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            model=served_id,
            fingerprint=f"{served_id}/v{batcher.served.version}",
            prompt_tokens=len(prompt_ids),
        )
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(completion, queue, request, usage), media_type="text/event-stream"
            )
        try:
            text, finished = await _collect(queue)
        except asyncio.CancelledError:
            request.cancelled.set()
            raise
        if finished.reason == "error":
            raise ApiError(500, f"generation failed: {finished.error}", kind="server_error")
        return completion.whole(text, finished)

    return app


def ask_server(url: str, question: str, key: str | None) -> str:
    """The answer of the server at ``url`` (OpenAI's chat API) to ``question``, greedy."""
    import requests

    base = url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    listed = requests.get(f"{base}/v1/models", headers=headers, timeout=30)
    if not listed.ok:
        raise ValueError(listed.json().get("error", {}).get("message", listed.text))
    reply = requests.post(
        f"{base}/v1/chat/completions",
        headers=headers,
        json={
            "model": listed.json()["data"][0]["id"],
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
        },
        timeout=300,
    )
    if not reply.ok:
        raise ValueError(reply.json().get("error", {}).get("message", reply.text))
    return str(reply.json()["choices"][0]["message"]["content"]).strip()


@dataclass(frozen=True)
class GoingLive:
    """Whether the server at ``url`` answered with ``version`` in time, and what it said."""

    url: str
    version: str
    live: bool
    waited_s: float
    health: dict[str, Any]

    def markdown(self) -> str:
        if self.live:
            return (
                f"Live on `wikitune serve` at {self.url} since {self.health['serving_since']}"
                f" ({self.waited_s:.0f} s after the promotion)."
            )
        if not self.health:
            return f"Not live: the server at {self.url} did not answer its /health."
        failed = self.health.get("last_failed_load") or {}
        why = (
            f"; version {failed['version']} failed to load: {failed['error']}"
            if failed.get("version") == self.version
            else ""
        )
        return (
            f"Not live on {self.url} within {self.waited_s:.0f} s: it serves version"
            f" {self.health.get('version')}{why}."
        )


def wait_live(url: str, version: str, *, timeout: float, interval: float = 1.0) -> GoingLive:
    """Wait (up to ``timeout`` seconds) until the server at ``url`` serves ``version``."""
    import requests

    health_url = url.rstrip("/").removesuffix("/v1") + "/health"
    started = time.monotonic()
    health: dict[str, Any] = {}
    while True:
        try:
            health = requests.get(health_url, timeout=10).json()
        except (requests.RequestException, ValueError):
            health = {}
        waited = time.monotonic() - started
        if health.get("version") == version or waited >= timeout:
            return GoingLive(url, version, health.get("version") == version, waited, health)
        time.sleep(interval)


def _error_response(error: ApiError) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status)


def _submit(follower: Follower, batcher: Batcher, request: GenerationRequest) -> Batcher:
    """Hand ``request`` to ``batcher``, or to the one that replaced it in the meantime; the
    batcher that took it."""
    try:
        batcher.submit(request)
    except Closed:
        batcher = follower.batcher or batcher
        batcher.submit(request)
    return batcher


async def _collect(queue: asyncio.Queue[str | Finished]) -> tuple[str, Finished]:
    pieces: list[str] = []
    while True:
        item = await queue.get()
        if isinstance(item, Finished):
            return "".join(pieces), item
        pieces.append(item)


class _Completion:
    """The fields every response of one completion shares, and its two shapes."""

    def __init__(self, *, id: str, model: str, fingerprint: str, prompt_tokens: int) -> None:
        self.id, self.model, self.fingerprint = id, model, fingerprint
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def usage(self, finished: Finished) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            "total_tokens": self.prompt_tokens + finished.completion_tokens,
        }

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        return {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finished.reason,
                }
            ],
            "usage": self.usage(finished),
        }

    def usage_chunk(self, finished: Finished) -> str:
        """The last chunk when the client asked for usage: no choices, only the counts."""
        body = {**self._head("chat.completion.chunk"), "choices": [], "usage": self.usage(finished)}
        return f"data: {json.dumps(body)}\n\n"

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        body = {
            **self._head("chat.completion.chunk"),
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _sse(
    completion: _Completion,
    queue: asyncio.Queue[str | Finished],
    request: GenerationRequest,
    include_usage: bool,
) -> AsyncIterator[str]:
    """The completion as server-sent events; a client that goes away cancels its row."""
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        while True:
            item = await queue.get()
            if isinstance(item, Finished):
                break
            yield completion.chunk({"content": item})
        if item.reason == "error":
            error = ApiError(500, f"generation failed: {item.error}", kind="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            return
        yield completion.chunk({}, item.reason)
        if include_usage:
            yield completion.usage_chunk(item)
        yield "data: [DONE]\n\n"
    finally:
        request.cancelled.set()


@contextmanager
def serving_in_thread(app: Any, *, host: str = "127.0.0.1", port: int) -> Iterator[str]:
    """Run ``app`` with uvicorn on a thread while the block runs; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="wikitune-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
