"""Base models and tokenizers: build a small local base model, probe for 4-bit support, load a
base (4-bit or not) with its tokenizer, and answer questions greedily in batches.

torch and transformers are imported inside the functions: flows import this module, and
`prefect deploy` imports flow files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from wikitune import progress
from wikitune.tasks.basemodel import directory_digest

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BARE_BASE",
    "CHAT_TEMPLATE",
    "MODEL_SIZES",
    "ModelSize",
    "Precision",
    "answer_hidden",
    "answer_loss_sum",
    "answer_precision",
    "base_top_log_probs",
    "computing_in",
    "fourbit_available",
    "generate_answers",
    "keep_4bit_layers_trainable",
    "load_base_model",
    "load_tokenizer",
    "make_base_model",
    "make_base_model_for_wiki",
    "merges_exactly",
    "pad_rows",
    "resolve_precision",
    "top_k_kl",
    "top_log_probs",
]

log = logging.getLogger(__name__)

# ChatML, as Qwen models use it, with the assistant turn (and its end-of-turn token) inside
# `{% generation %}` so TRL's assistant-only loss trains the model to answer and to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]

ModelSize = Literal["tiny", "small"]
EMBEDDING_STD = 0.25
PRETRAIN_BLOCK = 128


@dataclass(frozen=True)
class _Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    pretrain_steps: int


# Qwen2-shaped (grouped-query attention, SwiGLU MLP, tied embeddings) and small enough to train
# on two CPU cores: "tiny" for tests (~0.4M parameters), "small" for demos (~8M).
MODEL_SIZES: dict[str, _Shape] = {
    "tiny": _Shape(2048, 64, 192, 2, 4, 2, pretrain_steps=300),
    "small": _Shape(8192, 256, 768, 4, 8, 4, pretrain_steps=300),
}


def make_base_model(
    out: Path,
    texts: Iterable[str],
    *,
    pretrain_texts: Sequence[str] = (),
    pretrain_chats: Sequence[list[dict[str, str]]] = (),
    pretrain_steps: int | None = None,
    size: ModelSize = "tiny",
    seed: int = 0,
) -> Path:
    """Build a Qwen2-shaped model and a byte-level BPE tokenizer trained on ``texts``, saved as
    a Hugging Face model directory that the Auto classes load.

    The weights are random, then trained in full for ``pretrain_steps`` (default: the size's)
    on ``pretrain_texts`` and ``pretrain_chats`` (rendered with the chat template): a random
    network has no attention to adapt, so LoRA alone cannot teach it to read a question. Pass
    0 steps for purely random weights."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    shape = MODEL_SIZES[size]
    corpus = [t for t in texts if t and t.strip()]
    if not corpus:
        raise ValueError("no text to train the tokenizer on")

    # Training from Qwen2Tokenizer keeps Qwen's pipeline (NFC, its split regex, byte-level with
    # use_regex=False), which is what AutoTokenizer rebuilds for model_type=qwen2.
    tokenizer = Qwen2Tokenizer().train_new_from_iterator(
        corpus, vocab_size=shape.vocab_size, new_special_tokens=SPECIAL_TOKENS
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = END_OF_TEXT
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    # With the default init (std 0.02) the tied output embeddings are so small that, behind the
    # frozen final norm, no LoRA update can make a token likely: logits stay within about +-1.
    # Larger embeddings give a LoRA-only fine-tune the range a pretrained model has.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, EMBEDDING_STD)
    steps = shape.pretrain_steps if pretrain_steps is None else pretrain_steps
    chats = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in pretrain_chats]
    warmup_texts = [*pretrain_texts, *chats]
    loss = _pretrain(model, tokenizer, warmup_texts, steps=steps, seed=seed) if steps else None
    model.generation_config = GenerationConfig(
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TEXT)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    digest = directory_digest(out)  # before the info file, which would then carry it
    (out / "wikitune_base.json").write_text(
        json.dumps(
            {
                "size": size,
                "seed": seed,
                "tokenizer_texts": len(corpus),
                "pretrain_texts": len(warmup_texts),
                "pretrain_steps": steps,
                "pretrain_loss": loss,
                "parameters": model.num_parameters(),
                "digest": digest,
            }
        )
        + "\n"
    )
    return out


def make_base_model_for_wiki(
    out: Path,
    *,
    store_path: Path,
    general_path: Path | None,
    system_prompt: str,
    size: ModelSize = "tiny",
    seed: int = 0,
    pretrain_steps: int | None = None,
) -> dict[str, int]:
    """``make_base_model`` on a wiki's text: the tokenizer learns the store's pages and QA pairs
    (when the store exists) and the general set; the warm-up sees pages and general chat, not
    the QA pairs, which are what an adapter learns. Returns how many texts of each kind."""
    from wikitune.storage import Store
    from wikitune.tasks import dataset

    pages: list[str] = []
    pairs: list[str] = []
    if store_path.exists():
        with Store(store_path) as store:
            pages, pairs = store.corpus_texts()
    # Only the general training pool: the held-out general eval must stay unseen.
    pool, _ = dataset.split_general(dataset.load_general(general_path))
    general = [dataset.with_system(row["messages"], system_prompt) for row in pool]
    make_base_model(
        out,
        [*pages, *pairs, *(m["content"] for chat in general for m in chat)],
        pretrain_texts=pages,
        pretrain_chats=general,
        pretrain_steps=pretrain_steps,
        size=size,
        seed=seed,
    )
    return {"pages": len(pages), "QA pairs": len(pairs), "general chats": len(general)}


def _pretrain(
    model: Any, tokenizer: Any, texts: Sequence[str], *, steps: int, seed: int
) -> float | None:
    """Full-parameter next-token training on ``texts`` cut into blocks: a short warm-up that
    gives the random model a language model's structure. A plain loop: the model is tiny and
    the data a few thousand blocks, where a Trainer would add only set-up time."""
    import torch

    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        stream.append(tokenizer.pad_token_id)
    if len(stream) < 2 * PRETRAIN_BLOCK:
        log.warning("too little text to pre-train the base model (%d tokens)", len(stream))
        return None
    blocks = torch.tensor(stream[: len(stream) // PRETRAIN_BLOCK * PRETRAIN_BLOCK])
    blocks = blocks.view(-1, PRETRAIN_BLOCK)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    loss = torch.tensor(float("nan"))
    with progress.track("pre-training the base model", steps) as advance:
        for _ in range(steps):
            batch = blocks[torch.randint(0, len(blocks), (16,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            advance(1)
    model.eval()
    return float(loss.item())


def keep_4bit_layers_trainable(model: Any) -> None:
    """Keep every 4-bit layer of a model that will train on the training path.

    On CPUs with AVX512-BF16, bitsandbytes repacks a layer's 4-bit weights for fast inference
    the first time it runs in eval mode without grad (an evaluation before training), and never
    unpacks them: the next training step then fails ("a view of a leaf Variable that requires
    grad is being used in an in-place operation"). Training models never take that path."""
    import bitsandbytes as bnb

    for layer in model.modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu = False


def fourbit_available(device: str) -> bool:
    """Whether bitsandbytes can train a 4-bit NF4 layer on ``device`` ("cpu" or "cuda"): an
    eval pass without grad, then a training step, as a training with evaluation runs them."""
    try:
        import bitsandbytes as bnb
        import torch

        base = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        base = base.to(device)
        keep_4bit_layers_trainable(base)
        adapter = torch.nn.Linear(64, 64, bias=False, device=device)
        base.eval()
        with torch.no_grad():
            base(torch.randn(2, 64, device=device))
        base.train()
        x = torch.randn(2, 64, device=device)
        (base(x) + adapter(x)).sum().backward()
        if adapter.weight.grad is None:
            raise RuntimeError("no gradient reached the adapter")
    except Exception as error:  # any failure means "not here", whatever the library raises
        log.info("4-bit NF4 training is not available on %s: %s", device, error)
        return False
    return True


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body and the LM head of a causal LM (or of a PEFT model's base), so that
    only the positions that carry loss need go through the head."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(causal_lm, causal_lm.base_model_prefix), causal_lm.get_output_embeddings()


def pad_rows(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[dict[str, Any], Any]:
    """Rows of token ids and labels (-100 where no loss), right-padded into one batch: the
    model's inputs (ids and attention mask) and the labels."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = pad_sequence([torch.tensor(i) for i, _ in encoded], True, pad_id)
    mask = pad_sequence([torch.ones(len(i), dtype=torch.long) for i, _ in encoded], True)
    labels = pad_sequence([torch.tensor(lab) for _, lab in encoded], True, -100)
    return {"input_ids": ids, "attention_mask": mask}, labels


def answer_hidden(model: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any, Any]:
    """The last hidden states at the positions whose next token carries loss (its label is not
    -100), in the rows' order, the tokens they predict, and the LM head to project them with.

    Only those positions need go through the head: with a vocabulary of tens of thousands of
    tokens and answers a third of a row, projecting every position is most of a CPU step."""
    backbone, head = _backbone_and_head(model)
    hidden = backbone(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(hidden.device)
    positions = targets != -100
    return hidden[positions], targets[positions], head


def answer_loss_sum(model: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any]:
    """Summed cross-entropy of the tokens whose label is not -100, and how many there are."""
    import torch

    hidden, targets, head = answer_hidden(model, inputs, labels)
    total = torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="sum")
    return total, targets.numel()


def _top_and_rest(log_probs: Any, ids: Any) -> Any:
    """The log-probabilities of the tokens ``ids`` and, as one more column, of all others."""
    import torch

    rest = log_probs.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([log_probs.gather(-1, ids), rest], dim=-1)


def top_log_probs(logits: Any, k: int) -> tuple[Any, Any]:
    """The ``k`` likeliest tokens at each position and their log-probabilities, with the log of
    the probability left to all other tokens as one more column: a distribution over k + 1
    outcomes that ``top_k_kl`` compares another model's with."""
    log_probs = logits.float().log_softmax(-1)
    ids = log_probs.topk(k, dim=-1).indices
    return ids, _top_and_rest(log_probs, ids)


def top_k_kl(logits: Any, ids: Any, reference: Any) -> Any:
    """KL(reference || model) summed over positions, over the reference's top-k tokens (``ids``,
    their log-probabilities and the rest's in ``reference``, from ``top_log_probs``) and all
    other tokens as one outcome: the model's mass moved among the top tokens, or into or out
    of the rest, counts."""
    import torch

    tuned = _top_and_rest(logits.float().log_softmax(-1), ids)
    return torch.nn.functional.kl_div(tuned, reference, log_target=True, reduction="sum")


def base_top_log_probs(
    model: Any, encoded: list[tuple[list[int], list[int]]], *, k: int, pad_id: int
) -> list[tuple[Any, Any]]:
    """For each row (token ids and labels, -100 where no loss), the bare base's top-k tokens
    and log-probabilities at its answer positions (``top_log_probs``): the model with its
    adapter disabled, without gradients, in whatever precision the caller computes in."""
    import torch

    device = next(model.parameters()).device
    out: list[tuple[Any, Any]] = []
    with torch.no_grad(), model.disable_adapter():
        for start in range(0, len(encoded), 32):
            inputs, labels = pad_rows(encoded[start : start + 32], pad_id)
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            hidden, _, head = answer_hidden(model, inputs, labels)
            top_ids, top = top_log_probs(head(hidden), k)
            counts = (labels[:, 1:] != -100).sum(1).tolist()
            out += zip(top_ids.cpu().split(counts), top.cpu().split(counts), strict=True)
    return out


ANSWER_MAX_NEW_TOKENS = 256
"""The tokens an answer may run to unless the caller says otherwise: ``wikitune ask`` and
``wikitune serve`` alike, so that the two give the same answer where it runs on."""


def without_cut_character(text: str) -> str:
    """``text`` without the U+FFFD that decoding leaves where the token budget cut a character
    short: what the evaluation records and what the server sends end alike."""
    return text.rstrip("\ufffd")


Precision = Literal["bf16", "fp32"]
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def default_device() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str) -> tuple[Precision, str]:
    """The compute precision a run uses on ``device`` for the recipe's ``precision``
    (``auto``, ``bf16`` or ``fp32``), and a sentence saying why.

    ``auto`` picks bf16 on CUDA devices that support it and on CPUs with AVX512-BF16 or AMX
    instructions (oneDNN runs bf16 matmuls there at about 2.4x fp32 here); CPUs without them
    emulate bf16 30-50x slower than fp32, so they stay fp32."""
    import torch

    if requested == "fp32":
        return "fp32", "fp32: the recipe says precision: fp32"
    if device == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        where = "this GPU supports bf16" if fast else "this GPU has no bf16"
    else:
        found = sorted(_cpu_flags() & set(_BF16_CPU_FLAGS))
        fast = bool(found) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        where = (
            f"this CPU has {' and '.join(found)}"
            if fast
            else "this CPU has neither AVX512-BF16 nor AMX (bf16 would run 30-50x slower)"
        )
    if requested == "bf16":
        return "bf16", f"bf16: the recipe says precision: bf16 ({where})"
    return ("bf16" if fast else "fp32"), f"{'bf16' if fast else 'fp32'}: {where}"


def answer_precision(model: Any) -> Precision:
    """The precision a loaded model answers in: its weights' dtype (fp32 on a CPU, bf16 on CUDA).
    Answers never follow the training precision: under bf16, greedy answers change with what
    shares their batch, and the evaluation's recorded answers must be the ones served."""
    import torch

    return "bf16" if model.dtype == torch.bfloat16 else "fp32"


@contextmanager
def computing_in(precision: Precision, device: str) -> Iterator[None]:
    """Run forward passes inside the block in ``precision``: bf16 autocast (weights stay as
    loaded) or nothing for fp32."""
    import torch

    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16):
        yield


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a base model or adapter directory; left padding for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(path: str, *, device: str, quantize: bool) -> PreTrainedModel:
    """A base model on ``device``: 4-bit NF4 when ``quantize``, else fp32 on CPU and bf16 on
    CUDA (this CPU has no fast bf16)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute_dtype, "device_map": device}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


BARE_BASE = "__base__"
"""The name the evaluation gives the base model computing without any of its adapters."""


def merges_exactly(model: Any) -> bool:
    """Whether a LoRA adapter merged into ``model``'s adapted weights and unmerged again leaves
    them as they were, to fp32 rounding (1.2e-7 at most on SmolLM2): their weights are fp32. A
    bf16 weight would round each time, and a 4-bit one be quantized again."""
    import torch

    return all(
        module.weight.dtype == torch.float32
        for name, module in model.named_modules()
        if name.endswith(".base_layer") and hasattr(module, "weight")
    )


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    description: str = "answering",
) -> list[str]:
    """Greedy answers to the last user turn of each conversation (trailing assistant turns
    dropped), rendered as training rendered them (``chat.render_prompt``) and stopped at the
    template's end-of-turn token; ``batch_size`` at a time, left-padded, prompts of like length
    together (a batch pads to its longest prompt)."""
    import torch

    from wikitune.tasks import chat

    fmt = chat.chat_format(tokenizer)
    prompts = [chat.render_prompt(tokenizer, fmt, conv) for conv in conversations]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    prompts = [prompts[i] for i in order]
    stop = chat.stop_token_ids(tokenizer, fmt)
    tokenizer.padding_side = "left"
    answers: list[str] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = range(0, len(prompts), batch_size)
    try:
        with progress.track(description, len(batches)) as advance:
            for start in batches:
                batch = tokenizer(
                    prompts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                with torch.inference_mode():
                    output = model.generate(
                        **batch,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        eos_token_id=stop,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                answers += [
                    without_cut_character(text.strip()).rstrip()
                    for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                ]
                advance(1)
    finally:
        model.train(was_training)
    in_order = [""] * len(answers)
    for position, answer in zip(order, answers, strict=True):
        in_order[position] = answer
    return in_order
