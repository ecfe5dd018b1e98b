"""Answer questions with a trained adapter: the champion's, for ``wikitune ask``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikitune.tasks import basemodel
from wikitune.tasks import model as models

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from transformers import PreTrainedTokenizerBase

__all__ = ["LoadedVersion", "answer_with_champion", "ask", "load_adapter", "load_version"]


def load_adapter(
    base_model: str, adapter_dir: str, tokenizer_dir: str, *, device: str, quantize: bool
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A trained adapter on its base model, with the tokenizer (and chat template) it trained
    with: what ``ask`` answers with."""
    from peft import PeftModel

    base = models.load_base_model(base_model, device=device, quantize=quantize)
    return PeftModel.from_pretrained(base, adapter_dir), models.load_tokenizer(tokenizer_dir)


def ask(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    system_prompt: str = "",
    max_new_tokens: int = models.ANSWER_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to questions, each rendered as training rendered its rows."""
    from wikitune.tasks.dataset import with_system

    conversations = [
        with_system([{"role": "user", "content": question}], system_prompt)
        for question in questions
    ]
    return models.generate_answers(model, tokenizer, conversations, max_new_tokens=max_new_tokens)


@dataclass(frozen=True)
class LoadedVersion:
    """A registered version on its base model, ready to answer."""

    version: str
    model: Any
    tokenizer: PreTrainedTokenizerBase
    precision: models.Precision
    device: str
    facts: dict[str, str]
    adapter_dir: Path
    """The adapter's files as registered (what another server, such as vLLM, loads)."""


def load_version(
    tracking_uri: str,
    source: str,
    version: ModelVersion,
    *,
    workdir: Path,
    device: str | None = None,
    merge: bool = False,
    models_dir: Path | None = None,
) -> LoadedVersion:
    """Registered ``version`` of ``source`` on its base model, with the tokenizer and template
    it trained with, in the dtype it was evaluated in (its base's: ``models.answer_precision``);
    with ``merge``, its adapter merged into the base (one matmul a layer instead of three) unless
    the base is 4-bit. A base trained on elsewhere is found by its spec (``models_dir``)."""

    from wikitune.mlflow import registry

    device = device or models.default_device()
    number = str(version.version)
    facts = registry.version_facts(tracking_uri, version)
    name = registry.registered_model_name(source)
    logged = registry.download_logged_model(
        tracking_uri, f"models:/{name}/{number}", workdir / f"v{number}"
    )
    quantize = facts.get("method") == "qlora-nf4" and models.fourbit_available(device)
    model, tokenizer = load_adapter(
        basemodel.base_of_run(facts, models_dir or workdir / "models", tracking_uri),
        logged.adapter_dir,
        logged.tokenizer_dir,
        device=device,
        quantize=quantize,
    )
    if merge and not quantize:
        model = model.merge_and_unload()
    model.eval()
    return LoadedVersion(
        number,
        model,
        tokenizer,
        models.answer_precision(model),
        device,
        facts,
        logged.adapter_dir,
    )


def answer_with_champion(
    tracking_uri: str,
    source: str,
    question: str,
    *,
    system_prompt: str,
    workdir: Path,
    device: str | None = None,
    max_new_tokens: int = models.ANSWER_MAX_NEW_TOKENS,
    models_dir: Path | None = None,
) -> str:
    """Answer ``question`` with ``models:/<name>@champion`` on its base model as the server
    loads it (adapter merged), rendered with the chat template the adapter was trained with."""
    from wikitune.mlflow import registry

    current = registry.champion(tracking_uri, source)
    if current is None:
        name = registry.registered_model_name(source)
        raise LookupError(f"{name} has no champion yet: train and promote a model first")
    loaded = load_version(
        tracking_uri,
        source,
        current,
        workdir=workdir,
        device=device,
        merge=True,
        models_dir=models_dir,
    )
    (answer,) = ask(
        loaded.model,
        loaded.tokenizer,
        [question],
        system_prompt=system_prompt,
        max_new_tokens=max_new_tokens,
    )
    return answer
