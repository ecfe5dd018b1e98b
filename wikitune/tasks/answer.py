"""Answer questions with a trained adapter: the champion's, for ``wikitune ask``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikitune.tasks import model as models

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["answer_with_champion", "ask", "load_adapter"]


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
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answers to questions, each rendered as training rendered its rows."""
    from wikitune.tasks.dataset import with_system

    conversations = [
        with_system([{"role": "user", "content": question}], system_prompt)
        for question in questions
    ]
    return models.generate_answers(model, tokenizer, conversations, max_new_tokens=max_new_tokens)


def answer_with_champion(
    tracking_uri: str,
    source: str,
    question: str,
    *,
    system_prompt: str,
    workdir: Path,
    device: str | None = None,
    max_new_tokens: int = 64,
) -> str:
    """Answer ``question`` with ``models:/<name>@champion`` on its base model, rendered with the
    chat template the adapter was trained with."""
    import torch

    from wikitune.mlflow import registry

    current = registry.champion(tracking_uri, source)
    if current is None:
        name = registry.registered_model_name(source)
        raise LookupError(f"{name} has no champion yet: train and promote a model first")
    name = registry.registered_model_name(source)
    logged = registry.download_logged_model(
        tracking_uri, f"models:/{name}@{registry.CHAMPION}", workdir / str(current.version)
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    facts = registry.version_facts(tracking_uri, current)
    quantize = facts.get("method") == "qlora-nf4" and models.fourbit_available(device)
    model, tokenizer = load_adapter(
        facts["base_model"],
        logged.adapter_dir,
        logged.tokenizer_dir,
        device=device,
        quantize=quantize,
    )
    # The precision the evaluation answered in, so that `ask` answers as it did.
    precision, _ = models.resolve_precision(facts.get("precision", "fp32"), device)
    with models.computing_in(precision, device):
        (answer,) = ask(
            model, tokenizer, [question], system_prompt=system_prompt, max_new_tokens=max_new_tokens
        )
    return answer
