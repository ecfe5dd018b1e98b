"""What the bare base model says, computed once per base and kept: its greedy answers (the
general probes' reference for agreement, the self-distilled general replay's targets) and its
general loss (the gate's reference). Keys hold the base's weights digest and chat template, so
another base or template never reads them; a base without a digest is never cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from wikitune.tasks import chat

__all__ = ["base_answers", "base_tensors", "cache_key", "once_per_base"]

T = TypeVar("T")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()[:24]


def cache_key(digest: str, precision: str) -> str:
    """The key of a base's answers and numbers computed in ``precision``: its digest alone in
    fp32 (as caches were keyed before other precisions), else the digest and the precision."""
    return digest if precision == "fp32" else f"{digest}+{precision}"


def _replace(path: Path, write: Callable[[Path], Any]) -> None:
    """``write`` a staged file beside ``path``, then move it over ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_suffix(".tmp")
    write(staged)
    staged.replace(path)


def _write_json(path: Path, value: Any) -> None:
    _replace(path, lambda staged: staged.write_text(json.dumps(value, ensure_ascii=False), "utf-8"))


def once_per_base(
    cache_dir: Path,
    base_digest: str,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    compute: Callable[[], T],
) -> T:
    """``compute()``, a bare base model's number or answers on ``rows`` as a whole: computed once
    per base, chat template and rows, and kept as JSON under ``cache_dir``."""
    key = [base_digest, tokenizer.chat_template, [row["messages"] for row in rows]]
    cache = cache_dir / f"{_digest(key)}.json"
    if base_digest and cache.exists():
        return cast(T, json.loads(cache.read_text(encoding="utf-8")))
    value = compute()
    if base_digest:
        _write_json(cache, value)
    return value


def base_tensors(
    cache_dir: Path, base_digest: str, key: Any, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``compute()``, named tensors of a bare base model (its log-probabilities over some
    rows), computed once per base and ``key`` (JSON: what else they depend on) and kept as a
    torch file under ``cache_dir``."""
    import torch

    cache = cache_dir / f"{_digest([base_digest, key])}.pt"
    if base_digest and cache.exists():
        return cast(dict[str, Any], torch.load(cache, weights_only=True))
    value = compute()
    if base_digest:
        _replace(cache, lambda staged: torch.save(value, staged))
    return value


def base_answers(
    cache_dir: Path,
    base_digest: str,
    tokenizer: Any,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    generate: Callable[[list[list[dict[str, str]]]], list[str]],
) -> list[str]:
    """The bare base's greedy answers to ``conversations`` (to their last user turn: assistant
    turns after it are dropped), one per conversation. Each prompt is answered once per base,
    template and ``max_new_tokens``: ``generate`` (the base answering a list of prompts) sees
    only the prompts not yet kept in ``cache_dir``."""
    cache = cache_dir / f"{_digest([base_digest, tokenizer.chat_template, max_new_tokens])}.json"
    kept: dict[str, str] = {}
    if base_digest and cache.exists():
        kept = json.loads(cache.read_text(encoding="utf-8"))
    prompts = [chat.prompt_turns(conversation) for conversation in conversations]
    keys = [_digest(prompt) for prompt in prompts]
    missing = {key: prompt for key, prompt in zip(keys, prompts, strict=True) if key not in kept}
    if missing:
        answers = generate(list(missing.values()))
        kept |= dict(zip(missing, answers, strict=True))
        if base_digest:
            _write_json(cache, kept)
    return [kept[key] for key in keys]
