"""The model behind ``wikitune serve``: a registered version loaded on its base as the
evaluation loads it, and a batcher that answers chat requests with transformers' continuous
batching, handing each request its text as it is generated.

A request joins the running batch (up to ``max_batch`` requests) at its next step and leaves it
when it stops on its own: the template's end-of-turn token, its ``stop`` strings, its
``max_tokens``, or a cancel when its client went away.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikitune.tasks import chat
from wikitune.tasks import model as models

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

__all__ = ["Batcher", "Closed", "Finished", "GenerationRequest", "ServedVersion", "load_version"]

log = logging.getLogger(__name__)

_PAGE_TOKENS = 256  # tokens per page of the paged KV cache


@dataclass(frozen=True)
class Finished:
    """The last thing a request receives: why it stopped and how many tokens it generated."""

    reason: str  # "stop", "length", or "error"
    completion_tokens: int
    error: str = ""


@dataclass
class GenerationRequest:
    """One chat completion to generate. ``emit`` receives text pieces, then one ``Finished``;
    it is called from the batcher's thread."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str | Finished], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    """Generate on past the end-of-turn token, to ``max_tokens`` (vLLM's extension)."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampled(self) -> bool:
        """Sampled rather than greedy: the two decode in batches of their own."""
        return self.temperature > 0


class Closed(RuntimeError):
    """The batcher is closing: its version no longer takes requests."""


class _Stream:
    """One request's text as it is generated: the tokens so far, the text already handed out,
    and whether (and why) it stopped. Fed the request's tokens after every step."""

    def __init__(self, request: GenerationRequest, tokenizer: Any, stop_ids: list[int]):
        self.request = request
        self.tokenizer = tokenizer
        self.stop_ids = set() if request.ignore_eos else set(stop_ids)
        self.tokens: list[int] = []
        self.sent = ""
        self.done = False

    def feed(self, generated: Sequence[int], *, finished: bool) -> None:
        """Take the tokens generated so far (all of them: the new ones are those not yet seen)."""
        for token in generated[len(self.tokens) :]:
            if self.done:
                return
            self._step(int(token))
        if finished and not self.done:
            self._finish("length", self._text())

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()

    def _step(self, token: int) -> None:
        if token in self.stop_ids:
            self._finish("stop", self._text())
            return
        self.tokens.append(token)
        text = self._text()
        for stop in self.request.stop:
            if stop in text:
                self._finish("stop", text[: text.index(stop)])
                return
        if len(self.tokens) >= self.request.max_tokens:
            self._finish("length", text)
            return
        # Hold back an unfinished character and what may be the start of a stop string.
        safe = text.rstrip("\ufffd")
        for stop in self.request.stop:
            for size in range(min(len(stop) - 1, len(safe)), 0, -1):
                if safe.endswith(stop[:size]):
                    safe = safe[:-size]
                    break
        self._send(safe)

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.request.emit(text[len(self.sent) :])
            self.sent = text

    def _finish(self, reason: str, text: str) -> None:
        self._send(models.without_cut_character(text))
        self.done = True
        self.request.emit(Finished(reason, len(self.tokens)))


@dataclass
class ServedVersion:
    """A registered version loaded for serving."""

    source: str
    version: str
    model: Any
    tokenizer: Any
    fmt: chat.ChatFormat
    stop_ids: list[int]
    precision: models.Precision
    device: str
    base_digest: str
    context_window: int
    loaded_at: datetime
    load_seconds: float
    adapter_dir: Path

    def render(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The prompt's token ids, rendered with the adapter's own template as the
        evaluation renders its questions."""
        prompt = chat.render_prompt(self.tokenizer, self.fmt, list(messages))
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def load_version(
    tracking_uri: str,
    source: str,
    version: ModelVersion,
    *,
    workdir: Path,
    device: str | None = None,
    merge: bool = True,
    models_dir: Path | None = None,
) -> ServedVersion:
    """Registered ``version`` of ``source`` loaded to serve (``answer.load_version``: its base,
    tokenizer, template and the dtype it was evaluated in; the adapter merged unless ``merge``
    is off)."""
    from wikitune.tasks import answer

    started = time.perf_counter()
    loaded = answer.load_version(
        tracking_uri,
        source,
        version,
        workdir=workdir,
        device=device,
        merge=merge,
        models_dir=models_dir,
    )
    fmt = chat.chat_format(loaded.tokenizer)
    return ServedVersion(
        source=source,
        version=loaded.version,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        fmt=fmt,
        stop_ids=chat.stop_token_ids(loaded.tokenizer, fmt),
        precision=loaded.precision,
        device=loaded.device,
        base_digest=loaded.facts.get("base_model_digest", ""),
        context_window=int(getattr(loaded.model.config, "max_position_embeddings", 0) or 2048),
        loaded_at=datetime.now(UTC),
        load_seconds=time.perf_counter() - started,
        adapter_dir=Path(loaded.adapter_dir),
    )


class Batcher:
    """Answers requests for one served version with transformers' continuous batching: a request
    joins the running batch at the next step and leaves it when it stops, so a long answer never
    holds up a short one. Greedy requests share one batch, sampled ones another (a batch decodes
    one way); a cancelled request (its client went away) is dropped from its batch at once."""

    def __init__(self, served: ServedVersion, *, max_batch: int = 8) -> None:
        self.served = served
        self.max_batch = max_batch
        self._managers: dict[bool, Any] = {}  # sampling or not -> ContinuousBatchingManager
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.cancelled = 0
        """Requests dropped before they finished because their client went away."""
        self._closing = False
        self._manager(sampling=False)  # greedy is the default: ready before the first request
        self._thread = threading.Thread(
            target=self._deliver, name=f"batcher-v{served.version}", daemon=True
        )
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Requests taken and not yet finished."""
        return len(self._streams)

    def submit(self, request: GenerationRequest) -> None:
        with self._lock:
            if self._closing:
                raise Closed(f"version {self.served.version} is no longer served")
            manager = self._manager(request.sampled)
            request_id = f"r{next(self._ids)}"
            self._streams[request_id] = _Stream(
                request, self.served.tokenizer, self.served.stop_ids
            )
        knobs = {"temperature": request.temperature, "top_p": request.top_p}
        knobs = knobs if request.sampled else {}
        taken = manager.add_request(
            request.prompt_ids,
            request_id=request_id,
            max_new_tokens=request.max_tokens,
            streaming=True,
            eos_token_id=-1 if request.ignore_eos else self.served.stop_ids,
            **knobs,
        )
        if taken is None:  # the manager stopped taking requests (it logged why)
            self._streams.pop(request_id, None)
            request.emit(Finished("error", 0, "the generation loop refused the request"))

    def close(self, *, wait: bool = True) -> None:
        """Take no more requests; answer those already taken, then stop generating."""
        with self._lock:
            self._closing = True
        if wait:
            self._thread.join()

    def _manager(self, sampling: bool) -> Any:
        """The continuous-batching manager for greedy or sampled requests, started on first use."""
        if sampling not in self._managers:
            from transformers import ContinuousBatchingConfig, GenerationConfig

            served = self.served
            decoding: dict[str, Any] = {"do_sample": False}
            if sampling:  # per-request temperature and top-p need the processors to exist
                decoding = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
            pages = -(-served.context_window // _PAGE_TOKENS)
            manager = served.model.init_continuous_batching(
                generation_config=GenerationConfig(
                    max_new_tokens=models.ANSWER_MAX_NEW_TOKENS,
                    eos_token_id=served.stop_ids,
                    pad_token_id=served.tokenizer.pad_token_id,
                    **decoding,
                ),
                continuous_batching_config=ContinuousBatchingConfig(
                    page_size=_PAGE_TOKENS,
                    # One request as long as the context window, and room for the others.
                    num_blocks=pages + 2 * self.max_batch,
                    max_batch_tokens=_PAGE_TOKENS * 4,
                    max_requests_per_batch=self.max_batch,
                    per_request_processors=sampling,
                ),
            )
            manager.start()
            self._managers[sampling] = manager
        return self._managers[sampling]

    def _deliver(self) -> None:
        """Hand each request the tokens of every step; drop cancelled requests; once closing
        and drained, stop the managers."""
        while True:
            for request_id, stream in list(self._streams.items()):
                if stream.request.cancelled.is_set():
                    self._managers[stream.request.sampled].cancel_request(request_id)
                    self._streams.pop(request_id, None)
                    self.cancelled += 1
            if self._closing and not self._streams:
                break
            for sampling, manager in list(self._managers.items()):
                if not manager.is_running():  # its loop died: fail what it held, not hang
                    self._fail(sampling, "the generation loop stopped; see the server's log")
                    time.sleep(0.05)
                    continue
                timeout = 0.05
                while (output := manager.get_result(timeout=timeout)) is not None:
                    self._route(output)
                    timeout = 0  # take what is there, then look at the other manager
        for manager in list(self._managers.values()):
            manager.stop(block=True)

    def _fail(self, sampling: bool, why: str) -> None:
        for request_id, stream in list(self._streams.items()):
            if stream.request.sampled == sampling:
                self._streams.pop(request_id, None)
                stream.request.emit(Finished("error", len(stream.tokens), why))

    def _route(self, output: Any) -> None:
        stream = self._streams.get(output.request_id)
        if stream is None:  # cancelled meanwhile
            return
        try:
            if output.error:
                stream.done = True
                stream.request.emit(Finished("error", len(stream.tokens), str(output.error)))
            else:
                stream.feed(output.generated_tokens, finished=output.is_finished())
        except Exception as error:  # one request's failure must not stop the others
            log.exception("could not deliver request %s", output.request_id)
            stream.done = True
            stream.request.emit(Finished("error", len(stream.tokens), f"{error}"))
        if stream.done:
            self._streams.pop(output.request_id, None)
            if not output.is_finished():  # stopped by a stop string or max_tokens here
                self._managers[stream.request.sampled].cancel_request(output.request_id)
