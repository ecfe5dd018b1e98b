"""Another place to serve the champion: a running vLLM server (on a GPU machine) that loads
each new champion's LoRA adapter at runtime through ``POST /v1/load_lora_adapter``.

vLLM must run with ``--enable-lora`` (and ``--max-lora-rank`` at least the recipe's rank) and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, on the same base model, and must be able to read the
adapter's directory (the same machine, or a shared path). The adapter is loaded under one stable
name, ``wikitune-<source>``, replacing the one before it in place, so clients keep asking for
that model while the champion moves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["VllmPushError", "VllmTarget"]

log = logging.getLogger(__name__)


class VllmPushError(RuntimeError):
    """vLLM did not load the adapter; the message says what it answered."""


@dataclass(frozen=True)
class VllmTarget:
    """A vLLM server at ``url`` (``http://host:port``) that serves ``lora_name``."""

    url: str
    lora_name: str
    api_key: str | None = None
    timeout_s: float = 300.0

    def push(self, adapter_dir: Path) -> str:
        """Load the adapter in ``adapter_dir`` as ``lora_name``, in place of the one loaded;
        vLLM's answer. A vLLM that predates ``load_inplace`` refuses a name it has: then the
        old adapter is unloaded first (requests in that moment get vLLM's 404)."""
        body = {"lora_name": self.lora_name, "lora_path": str(adapter_dir), "load_inplace": True}
        reply = self._post("load_lora_adapter", body)
        if reply.status_code == 400 and "already been loaded" in _message(reply):
            log.warning(
                "vLLM at %s cannot load %s in place; unloading it first", self.url, self.lora_name
            )
            self._post("unload_lora_adapter", {"lora_name": self.lora_name})
            reply = self._post(
                "load_lora_adapter", {k: body[k] for k in ("lora_name", "lora_path")}
            )
        if reply.ok:
            return reply.text.strip()
        if reply.status_code == 404 and _message(reply) == "Not Found":
            raise VllmPushError(
                f"vLLM at {self.url} has no /v1/load_lora_adapter: start it with --enable-lora"
                " and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        raise VllmPushError(
            f"vLLM at {self.url} did not load {adapter_dir} as {self.lora_name!r}:"
            f" HTTP {reply.status_code}: {_message(reply)}"
        )

    def _post(self, endpoint: str, body: dict[str, Any]) -> Any:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            return requests.post(
                f"{self.url.rstrip('/').removesuffix('/v1')}/v1/{endpoint}",
                json=body,
                headers=headers,
                timeout=self.timeout_s,
            )
        except requests.RequestException as error:
            raise VllmPushError(f"could not reach vLLM at {self.url}: {error}") from None


def _message(reply: Any) -> str:
    """The error message of a vLLM reply, in any of its shapes: ``{"error": {"message"}}``
    (current), ``{"message"}`` (older), ``{"error": "Unauthorized"}`` (a wrong key),
    ``{"detail"}`` (a route it does not have), or text."""
    try:
        body = reply.json()
    except ValueError:
        return str(reply.text).strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):  # its API-key check
            return error
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])
    return str(body)
