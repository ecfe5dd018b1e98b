"""The model behind ``wikitune serve``: a registered version loaded on its base as the
evaluation loads it, and a batcher that answers chat requests in shared batches on a thread of
its own, handing each request its text as it is generated.

Requests that arrive while a batch generates wait for the next one; a batch holds up to
``max_batch`` requests with the same sampling settings. Each request stops on its own (the
template's end-of-turn token, its ``stop`` strings, its ``max_tokens``, or a cancel when its
client went away); a batch ends when all of its requests have.
"""

from __future__ import annotations

import logging
import threading
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
    cancelled: threading.Event = field(default_factory=threading.Event)

    def sampling(self) -> tuple[Any, ...]:
        """What a batch must share: greedy, or the same temperature, top-p and seed."""
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


class Closed(RuntimeError):
    """The batcher is closing: its version no longer takes requests."""


class _Rows:
    """Per request of a batch: the tokens generated so far, the text already handed out, and
    whether it stopped. Receives each step's tokens as a ``transformers`` streamer."""

    def __init__(self, requests: list[GenerationRequest], tokenizer: Any, stop_ids: list[int]):
        self.requests = requests
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.sent = ["" for _ in requests]
        self.done = [False for _ in requests]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate hands over the prompt first
            self._prompt_seen = True
            return
        steps = value.reshape(len(self.requests), -1).tolist()
        for row, new in enumerate(steps):
            for token in new:
                if not self.done[row]:
                    self._step(row, int(token))

    def end(self) -> None:
        for row in range(len(self.requests)):
            if not self.done[row]:
                self._finish(row, "length", self._text(row))

    def stopped(self) -> list[bool]:
        return [d or r.cancelled.is_set() for d, r in zip(self.done, self.requests, strict=True)]

    def _text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()

    def _step(self, row: int, token: int) -> None:
        request = self.requests[row]
        if request.cancelled.is_set():
            self.done[row] = True
            return
        if token in self.stop_ids:
            self._finish(row, "stop", self._text(row))
            return
        self.tokens[row].append(token)
        text = self._text(row)
        for stop in request.stop:
            if stop in text:
                self._finish(row, "stop", text[: text.index(stop)])
                return
        if len(self.tokens[row]) >= request.max_tokens:
            self._finish(row, "length", text)
            return
        # Hold back an unfinished character and what may be the start of a stop string.
        safe = text.rstrip("\ufffd")
        for stop in request.stop:
            for size in range(min(len(stop) - 1, len(safe)), 0, -1):
                if safe.endswith(stop[:size]):
                    safe = safe[:-size]
                    break
        self._send(row, safe)

    def _send(self, row: int, text: str) -> None:
        if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
            self.requests[row].emit(text[len(self.sent[row]) :])
            self.sent[row] = text

    def _finish(self, row: int, reason: str, text: str) -> None:
        self._send(row, text.rstrip("\ufffd"))
        self.done[row] = True
        self.requests[row].emit(Finished(reason, len(self.tokens[row])))


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
) -> ServedVersion:
    """Registered ``version`` of ``source`` loaded to serve (``answer.load_version``: its base,
    tokenizer, template and evaluation precision; the adapter merged unless ``merge`` is off)."""
    import time

    from wikitune.tasks import answer

    started = time.perf_counter()
    loaded = answer.load_version(
        tracking_uri, source, version, workdir=workdir, device=device, merge=merge
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
    )


class Batcher:
    """Answers requests for one served version on a thread of its own, in shared batches."""

    def __init__(self, served: ServedVersion, *, max_batch: int = 8) -> None:
        self.served = served
        self.max_batch = max_batch
        self._waiting: list[GenerationRequest] = []
        self._condition = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"batcher-v{served.version}", daemon=True
        )
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        with self._condition:
            if self._closing:
                raise Closed(f"version {self.served.version} is no longer served")
            self._waiting.append(request)
            self._condition.notify()

    def close(self, *, wait: bool = True) -> None:
        """Take no more requests; answer those already taken, then stop the thread."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if wait:
            self._thread.join()

    def _next_batch(self) -> list[GenerationRequest] | None:
        with self._condition:
            while not self._waiting and not self._closing:
                self._condition.wait()
            if not self._waiting:
                return None
            kind = self._waiting[0].sampling()
            batch = [r for r in self._waiting if r.sampling() == kind][: self.max_batch]
            self._waiting = [r for r in self._waiting if r not in batch]
        return [r for r in batch if not r.cancelled.is_set()]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                self._generate(batch)
            except Exception as error:  # a failed batch fails its requests, not the server
                log.exception("generation failed for %d requests", len(batch))
                for request in batch:
                    request.emit(Finished("error", 0, f"{type(error).__name__}: {error}"))

    def _generate(self, batch: list[GenerationRequest]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        served = self.served
        tokenizer = served.tokenizer
        tokenizer.padding_side = "left"
        inputs = tokenizer.pad(
            {"input_ids": [r.prompt_ids for r in batch]}, return_tensors="pt"
        ).to(served.device)
        rows = _Rows(batch, tokenizer, served.stop_ids)

        class EachRowStops(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.tensor(rows.stopped(), device=input_ids.device)

        first = batch[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        with torch.inference_mode(), models.computing_in(served.precision, served.device):
            served.model.generate(
                **inputs,
                max_new_tokens=max(r.max_tokens for r in batch),
                eos_token_id=served.stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                streamer=rows,
                stopping_criteria=StoppingCriteriaList([EachRowStops()]),
                **sampling,
            )
        rows.end()
