"""Serve whatever version the `champion` alias points at: poll the registry, load a new champion
beside the one serving, then swap. Requests hold the batcher they started on, so those in flight
finish on the old version while new ones go to the new; the old batcher closes once drained."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wikitune.serving.engine import Batcher, ServedVersion, load_version
from wikitune.serving.vllm import VllmPushError, VllmTarget

__all__ = ["Follower", "LoadFailure", "Swap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swap:
    """The last change of the version serving."""

    from_version: str | None
    to_version: str
    at: datetime
    seconds_after_seen: float
    """From the poll that saw the alias move to the new version answering."""


@dataclass(frozen=True)
class LoadFailure:
    version: str
    error: str
    at: datetime


class Follower:
    """The champion of ``source``, loaded and batched, kept current by :meth:`check`."""

    def __init__(
        self,
        tracking_uri: str,
        source: str,
        *,
        workdir: Path,
        device: str | None = None,
        max_batch: int = 8,
        poll_seconds: float = 5.0,
        merge: bool = True,
        models_dir: Path | None = None,
        url: str = "",
        vllm: VllmTarget | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.source = source
        self.workdir = workdir
        self.models_dir = models_dir
        self.device = device
        self.max_batch = max_batch
        self.poll_seconds = poll_seconds
        self.merge = merge
        self.url = url
        self.vllm = vllm
        self.last_vllm_push: dict[str, Any] | None = None
        self.batcher: Batcher | None = None
        self.last_swap: Swap | None = None
        self.last_failure: LoadFailure | None = None
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> ServedVersion | None:
        batcher = self.batcher
        return batcher.served if batcher is not None else None

    def check(self) -> None:
        """One poll: when the alias points at a version other than the one serving (and not
        one that already failed to load), load it and swap."""
        from wikitune.mlflow import registry

        current = registry.champion(self.tracking_uri, self.source)
        if current is None:
            return
        wanted = str(current.version)
        served = self.served
        if (served is not None and served.version == wanted) or wanted == self._failed_version:
            return
        seen = time.perf_counter()
        log.info("champion of %s is version %s: loading it", self.source, wanted)
        try:
            loaded = load_version(
                self.tracking_uri,
                self.source,
                current,
                workdir=self.workdir,
                device=self.device,
                merge=self.merge,
                models_dir=self.models_dir,
            )
        except Exception as error:  # a broken version must not take the server down
            self._failed_version = wanted
            self.last_failure = LoadFailure(wanted, f"{type(error).__name__}: {error}", _now())
            log.error(
                "version %s of %s failed to load (%s); %s",
                wanted,
                self.source,
                self.last_failure.error,
                f"version {served.version} goes on serving" if served else "nothing is served",
            )
            return
        self._failed_version = None
        previous, self.batcher = self.batcher, Batcher(loaded, max_batch=self.max_batch)
        self.last_swap = Swap(
            served.version if served else None, wanted, _now(), time.perf_counter() - seen
        )
        log.info(
            "serving version %s of %s (loaded in %.1f s)", wanted, self.source, loaded.load_seconds
        )
        if previous is not None:
            previous.close(wait=False)  # drains what it took, then its thread ends
        self._mark_live(wanted)
        if self.vllm is not None:
            self._push_to_vllm(self.vllm, loaded)

    def _push_to_vllm(self, target: VllmTarget, loaded: ServedVersion) -> None:
        """Have vLLM load the version's adapter too; a refusal is reported, not raised."""
        push: dict[str, Any] = {"url": target.url, "version": loaded.version}
        try:
            push["answer"] = target.push(loaded.adapter_dir)
            log.info(
                "vLLM at %s serves version %s as %s", target.url, loaded.version, target.lora_name
            )
        except VllmPushError as error:
            push["error"] = str(error)
            log.error("version %s was not pushed to vLLM: %s", loaded.version, error)
        self.last_vllm_push = {**push, "at": _now().isoformat()}

    def _mark_live(self, version: str) -> None:
        """Tag the version with when (and where) it went live, for the registry's page."""
        from wikitune.mlflow import registry

        tags = {"live_since": self.last_swap.at.isoformat() if self.last_swap else ""}
        if self.url:
            tags["live_on"] = self.url
        try:
            registry.set_version_tags(self.tracking_uri, self.source, version, tags)
        except Exception as error:  # the registry read-only or away: serving matters more
            log.warning("could not tag version %s as live: %s", version, error)

    def start(self) -> None:
        """Load the champion now, then keep polling on a thread."""
        self.check()
        self._thread = threading.Thread(target=self._poll, name="champion-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; let the version serving answer what it took, then stop its threads
        (the generation loop's thread must end before the interpreter does)."""
        self._stop.set()
        if self.batcher is not None:
            self.batcher.close(wait=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception:  # the registry unreachable for a while: keep serving, retry
                log.exception("could not read the champion of %s", self.source)

    def health(self) -> dict[str, Any]:
        from wikitune.mlflow import registry

        batcher = self.batcher
        served = batcher.served if batcher else None
        return {
            "status": "ok" if served else "no champion loaded",
            "model": registry.registered_model_name(self.source),
            "version": served.version if served else None,
            "base_model_digest": served.base_digest if served else None,
            "precision": served.precision if served else None,
            "serving_since": served.loaded_at.isoformat() if served else None,
            "last_swap": (
                {
                    "from": self.last_swap.from_version,
                    "to": self.last_swap.to_version,
                    "at": self.last_swap.at.isoformat(),
                    "seconds_after_seen": round(self.last_swap.seconds_after_seen, 3),
                }
                if self.last_swap
                else None
            ),
            "last_failed_load": (
                {
                    "version": self.last_failure.version,
                    "error": self.last_failure.error,
                    "at": self.last_failure.at.isoformat(),
                }
                if self.last_failure
                else None
            ),
            "last_vllm_push": self.last_vllm_push,
            "requests_in_flight": batcher.in_flight if batcher else 0,
            "requests_cancelled": batcher.cancelled if batcher else 0,
            "poll_seconds": self.poll_seconds,
        }


def _now() -> datetime:
    return datetime.now(UTC)
