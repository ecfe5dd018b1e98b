"""How a base model's chat template is used for training, evaluation and inference, whatever the
template: which tokens carry loss (the assistant's answer and its end-of-turn token, nothing
else), how a prompt is rendered, and which tokens stop generation.

Two ways, chosen per template and recorded with every run:

- ``assistant-masks``: the template marks the assistant's turn with ``{% generation %}`` (or
  TRL ships a training variant of it that does); the marked tokens, trimmed of surrounding
  whitespace, carry loss. Every assistant turn of a conversation trains.
- ``prompt-completion``: any other template (Llama, Mistral, Gemma, SmolLM ...). The prompt is
  rendered by the model's own template with ``add_generation_prompt=True``; the completion is
  the last answer plus the template's end-of-turn token, and only the completion carries loss.

Rows are tokenized here, once, and handed to TRL with their labels, so training and evaluation
mask exactly the same tokens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ChatFormat",
    "LossMode",
    "chat_format",
    "encode",
    "has_generation_markers",
    "render_prompt",
    "stop_token_ids",
    "tokenize_rows",
]

log = logging.getLogger(__name__)

LossMode = Literal["assistant-masks", "prompt-completion"]
IGNORE = -100
_PROBE_ANSWER = "wikitune-probe-answer"


def has_generation_markers(template: str | None) -> bool:
    """Whether a chat template marks the assistant's turn for assistant-only loss."""
    return bool(template and re.search(r"\{%-?\s*generation\s*-?%\}", template))


@dataclass(frozen=True)
class ChatFormat:
    """The template a model trains and answers with, and which tokens carry loss."""

    loss: LossMode
    template: str
    origin: Literal["template markers", "TRL training template", "model template"]
    end_of_turn: str

    def describe(self) -> str:
        return f"{self.loss} loss ({self.origin}; end of turn {self.end_of_turn!r})"

    def params(self) -> dict[str, str]:
        return {
            "loss_mode": self.loss,
            "chat_template_origin": self.origin,
            "end_of_turn": self.end_of_turn,
        }


def _template(tokenizer: PreTrainedTokenizerBase) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        raise ValueError(
            "the base model's tokenizer has no chat template: wikitune trains chat models"
            " (pick an instruct model, or give the tokenizer a chat_template)"
        )
    return str(template)


def _end_of_turn(tokenizer: PreTrainedTokenizerBase, template: str) -> str:
    """The token the template closes an assistant turn with: what follows an answer in a
    rendered conversation (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ``<end_of_turn>``...),
    else the tokenizer's end-of-sequence token."""
    user = [{"role": "user", "content": "?"}]
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": _PROBE_ANSWER}],
        chat_template=template,
        tokenize=False,
    )
    after = str(full).split(_PROBE_ANSWER, 1)[-1].strip()
    vocabulary = tokenizer.get_vocab()
    special = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    if after in vocabulary:
        return after
    for token in special:
        if after.startswith(token):
            return token
    if tokenizer.eos_token:
        return str(tokenizer.eos_token)
    raise ValueError("the chat template ends an answer with no token and the tokenizer has no EOS")


def chat_format(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """How ``tokenizer``'s template trains: its own ``{% generation %}`` markers, TRL's training
    variant of it, or prompt-completion rows with the template as it is."""
    template = _template(tokenizer)
    if has_generation_markers(template):
        origin: Any = "template markers"
        loss: LossMode = "assistant-masks"
    else:
        from trl.chat_template_utils import get_training_chat_template

        try:
            patched = get_training_chat_template(tokenizer)
        except ValueError:  # TRL does not know this template: it stays as it is
            patched = None
        if patched:
            template, origin, loss = patched, "TRL training template", "assistant-masks"
        else:
            origin, loss = "model template", "prompt-completion"
    return ChatFormat(
        loss=loss, template=template, origin=origin, end_of_turn=_end_of_turn(tokenizer, template)
    )


def prompt_turns(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to its last user turn: what a model answers (trailing assistant
    turns, such as a reference answer, dropped)."""
    turns = list(messages)
    while turns and turns[-1]["role"] == "assistant":
        turns.pop()
    return turns


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat, messages: Sequence[dict[str, str]]
) -> str:
    """The prompt a model answers: the conversation up to its last user turn, rendered by the
    training template with the generation prompt."""
    turns = prompt_turns(messages)
    return str(
        tokenizer.apply_chat_template(
            turns, chat_template=fmt.template, tokenize=False, add_generation_prompt=True
        )
    )


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template writes BOS itself where the model wants one.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _trim_whitespace(ids: list[int], mask: list[int], tokenizer: Any) -> list[int]:
    """Drop whitespace-only tokens at the edges of each masked span (a template's newline before
    the answer or after its end-of-turn token is layout, not answer)."""
    mask = list(mask)
    n = len(mask)
    start = 0
    while start < n:
        if not mask[start]:
            start += 1
            continue
        end = start
        while end < n and mask[end]:
            end += 1
        left, right = start, end - 1
        while left <= right and not tokenizer.decode([ids[left]]).strip():
            mask[left] = 0
            left += 1
        while right >= left and not tokenizer.decode([ids[right]]).strip():
            mask[right] = 0
            right -= 1
        start = end
    return mask


def encode(
    tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat, messages: Sequence[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its labels: the ids where they carry loss, ``-100``
    elsewhere. The last turn must be the assistant's."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with the assistant's answer")
    if fmt.loss == "assistant-masks":
        encoded = tokenizer.apply_chat_template(
            list(messages),
            chat_template=fmt.template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(encoded["input_ids"])
        mask = _trim_whitespace(ids, list(encoded["assistant_masks"]), tokenizer)
    else:
        prompt = render_prompt(tokenizer, fmt, messages)
        prompt_ids = _ids(tokenizer, prompt)
        ids = _ids(tokenizer, prompt + messages[-1]["content"] + fmt.end_of_turn)
        # Tokens can merge across the boundary; the completion starts where the two differ.
        shared = 0
        for a, b in zip(prompt_ids, ids, strict=False):
            if a != b:
                break
            shared += 1
        mask = [0] * shared + [1] * (len(ids) - shared)
    if not any(mask):
        raise ValueError("no token of the conversation carries loss: is the answer empty?")
    return ids, [i if m else IGNORE for i, m in zip(ids, mask, strict=True)]


def tokenize_rows(rows: Dataset, tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat) -> Dataset:
    """A dataset of ``messages`` as ``input_ids`` and ``labels`` (what TRL trains on as is)."""

    def tokenize(row: dict[str, Any]) -> dict[str, list[int]]:
        ids, labels = encode(tokenizer, fmt, row["messages"])
        return {"input_ids": ids, "labels": labels}

    return rows.map(tokenize, remove_columns=rows.column_names)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat) -> list[int]:
    """Tokens that end an answer: the template's end-of-turn token and the tokenizer's EOS."""
    ids = [tokenizer.convert_tokens_to_ids(fmt.end_of_turn), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int) and i >= 0))
