"""Any chat template trains on the answer only: the packaged SmolLM2's (no generation markers,
unknown to TRL: prompt-completion rows), Qwen2.5-Instruct's as TRL ships it (TRL's training
variant, assistant masks) and the toy model's (its own markers). For each, the tokens that carry
loss in the trainer's batches are exactly an answer and its end-of-turn token, and an answer
learned in training comes back from `ask`'s code path. Also: every 4-bit layer of a model that
will train stays on the training path, whatever the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import TEST_RECIPE

from wikitune.tasks import answer, basemodel, chat
from wikitune.tasks import model as models
from wikitune.tasks import train as training
from wikitune.tasks.recipe import TrainingRecipe


def _qwen25_base(world: dict[str, Any], root: Path) -> Path:
    """The toy model with Qwen2.5-Instruct's chat template (its tokens are the toy's too)."""
    from trl.chat_template_utils import qwen2_5_chat_template

    base = root / "qwen-template-base"
    if not base.exists():
        shutil.copytree(world["root"] / "base", base)
        tokenizer = models.load_tokenizer(str(base))
        tokenizer.chat_template = qwen2_5_chat_template
        tokenizer.save_pretrained(base)
        (base / "wikitune_base.json").unlink()  # another template: another base
    return base


@pytest.fixture(scope="module")
def bases(
    world: dict[str, Any], smollm2: basemodel.ResolvedBase, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("templates")
    return {
        "smollm2": smollm2.path,
        "qwen2.5": str(_qwen25_base(world, root)),
        "toy": str(world["root"] / "base"),
    }


EXPECTED_FORMAT = {
    "smollm2": ("prompt-completion", "model template", "<|im_end|>"),
    "qwen2.5": ("assistant-masks", "TRL training template", "<|im_end|>"),
    "toy": ("assistant-masks", "template markers", "<|im_end|>"),
}


def _rows(world: dict[str, Any], split: str) -> list[dict[str, Any]]:
    path = Path(world["snapshot"].path) / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _loss_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Runs of consecutive tokens that carry loss."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = label != -100
    return spans


@pytest.mark.parametrize("template", ["smollm2", "qwen2.5", "toy"])
def test_loss_falls_on_the_answer_and_its_end_of_turn_token_only(
    template: str, bases: dict[str, str], world: dict[str, Any], tmp_path: Path
) -> None:
    tokenizer = models.load_tokenizer(bases[template])
    fmt = chat.chat_format(tokenizer)
    assert (fmt.loss, fmt.origin, fmt.end_of_turn) == EXPECTED_FORMAT[template]

    rows = _rows(world, "train")
    answers = {row["messages"][-1]["content"] + fmt.end_of_turn for row in rows}
    # The batches the trainer itself builds: packed, padding-free, labels from chat.encode.
    tokenizer.chat_template = fmt.template
    recipe = TrainingRecipe(**{**TEST_RECIPE, "quantization": "none", "max_length": 256})
    from datasets import Dataset

    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    trainer = training.make_trainer(
        models.load_base_model(bases[template], device="cpu", quantize=False),
        tokenizer,
        recipe,
        device="cpu",
        output_dir=tmp_path / "out",
        train_dataset=chat.tokenize_rows(dataset, tokenizer, fmt),
        eval_datasets={},
        callbacks=[],
    )
    spans: list[str] = []
    for batch in trainer.get_train_dataloader():
        ids, labels = batch["input_ids"].flatten().tolist(), batch["labels"].flatten().tolist()
        spans += [tokenizer.decode(span) for span in _loss_spans(ids, labels)]
    assert len(spans) == len(rows)  # one answer a row, nothing else
    assert set(spans) == answers
    general = [row for row in rows if row["kind"] == "general"]
    assert general, "the snapshot mixes general rows in"


@pytest.mark.parametrize("template", ["qwen2.5", "toy"])
def test_an_answer_learned_in_training_comes_back_from_ask(
    template: str, bases: dict[str, str], world: dict[str, Any], tmp_path: Path
) -> None:
    """The toy model learns the snapshot's training questions; ``ask``'s loading and rendering
    give them back. (The packaged SmolLM2 learns in the demo test, which asks it a held-out
    question about an edited fact.)"""
    if template == "toy":
        result: training.TrainResult = world["result"]
    else:
        result = training.train_adapter(
            snapshot=world["snapshot"].path,
            base_model=bases[template],
            recipe=TrainingRecipe(**TEST_RECIPE),
            runs_dir=tmp_path / "runs",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifact_root=tmp_path / "artifacts",
        )
    assert result.loss_mode == EXPECTED_FORMAT[template][0]
    wiki = [row for row in _rows(world, "train") if row["kind"] == "wiki"]
    model, tokenizer = answer.load_adapter(
        result.base_model, result.adapter_dir, result.adapter_dir, device="cpu", quantize=False
    )
    # The adapter's tokenizer keeps the template that training used.
    assert chat.chat_format(tokenizer).origin in ("template markers",)
    questions = [row["messages"][-2]["content"] for row in wiki]
    references = [row["messages"][-1]["content"] for row in wiki]
    answers = answer.ask(model, tokenizer, questions)
    # Training questions answered exactly: at least one in ten (rows, not distinct answers: each
    # answer is asked in several phrasings).
    learned = [a for a, r in zip(answers, references, strict=True) if a == r]
    assert len(learned) >= max(2, len(wiki) // 10), list(zip(answers, references, strict=True))[:8]
    assert len(set(learned)) >= 2


def test_4bit_layers_of_a_model_that_trains_stay_on_the_training_path(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a CPU with AVX512-BF16, whatever this one has: bitsandbytes would repack 4-bit
    weights for inference in the eval pass before training, and the training step would fail."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    assert models.fourbit_available("cpu")  # the probe: an eval pass, then a training step

    # Without wikitune's setting, this CPU kind repacks in an eval pass without grad.
    plain = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    plain.eval()
    with torch.no_grad():
        plain(torch.randn(2, 64))
    assert plain.weight.quant_state.packing_format_for_cpu

    recipe = TrainingRecipe(**{**TEST_RECIPE, "quantization": "nf4", "max_steps": 2})
    base = str(world["root"] / "base")
    model = training.prepare_model(
        base, recipe, method="qlora-nf4", device="cpu", init_adapter=None
    )
    tokenizer = models.load_tokenizer(base)
    fmt = chat.chat_format(tokenizer)
    from datasets import Dataset

    rows = Dataset.from_list([{"messages": r["messages"]} for r in _rows(world, "train")[:16]])
    tokenized = chat.tokenize_rows(rows, tokenizer, fmt)
    trainer = training.make_trainer(
        model,
        tokenizer,
        recipe,
        device="cpu",
        output_dir=tmp_path / "out",
        train_dataset=tokenized,
        eval_datasets={"wiki": tokenized},
        callbacks=[],
    )
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not layer.support_avx512bf16_for_cpu for layer in layers)
    trainer.evaluate()  # the eval pass before training that used to repack
    trainer.train()
    assert trainer.state.global_step == 2
    assert not any(
        getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers
    )
