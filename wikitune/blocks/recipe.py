"""The training recipe as a Prefect Block: LoRA shape, optimiser and schedule, batching, and
where training starts from. Defaults suit a 7B model on one 24–32 GB GPU; loaded from a YAML or
JSON file with ``TrainingRecipe.from_file`` or from a saved block with ``TrainingRecipe.load``."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect.blocks.core import Block
from pydantic import Field, ValidationError

__all__ = [
    "CPU_RECIPE",
    "TrainingRecipe",
    "chosen_recipe",
    "default_recipe",
    "packaged_recipes",
    "recipe_origin",
]

# The recipe a base model trains with when none is given.
_DEFAULT_RECIPES = {"smollm2-135m-instruct": "smollm2-135m-cpu"}
# The recipe of a base with none of its own on a CPU: the 7B GPU defaults (4-bit, 4x4 rows of
# 1024 tokens) would need gigabytes and minutes a step there.
CPU_RECIPE = "cpu"


def packaged_recipes() -> list[str]:
    """Names of the recipes that ship with wikitune (``wikitune/recipes/*.yaml``)."""
    folder = resources.files("wikitune.recipes")
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


class TrainingRecipe(Block):
    """How to train an adapter on a snapshot.

    Examples:
        >>> recipe = TrainingRecipe(lora_r=8, num_train_epochs=1)
        >>> recipe = TrainingRecipe.from_file("recipe.yaml")
    """

    _block_type_name = "wikitune training recipe"
    _description = "LoRA/QLoRA hyper-parameters for wikitune's retrain (defaults: 7B on one GPU)."

    quantization: Literal["auto", "nf4", "none"] = Field(
        default="auto",
        description="auto: 4-bit NF4 (QLoRA) where bitsandbytes runs on the device, else LoRA;"
        " nf4: require 4-bit; none: plain LoRA.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Compute precision. auto: bf16 where the device runs it fast (CUDA with"
        " bf16, or a CPU with AVX512-BF16 or AMX), fp32 elsewhere (on CUDA without bf16: fp16);"
        " bf16 or fp32 force it. The adapter's master weights stay fp32 on CPU either way.",
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Modules that get LoRA: a list of names or all-linear.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field(default="cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    num_train_epochs: float = Field(default=3.0, gt=0, description="Epochs over the snapshot.")
    max_steps: int = Field(default=-1, description="Optimiser steps; overrides epochs when > 0.")
    per_device_train_batch_size: int = Field(default=4, ge=1, description="Packed rows a step.")
    per_device_eval_batch_size: int = Field(default=8, ge=1, description="Eval rows a step.")
    gradient_accumulation_steps: int = Field(default=4, ge=1, description="Steps per update.")
    max_length: int = Field(default=1024, ge=16, description="Tokens per packed training row.")
    gradient_checkpointing: bool | None = Field(
        default=None, description="Activation checkpointing; default: on for CUDA, off on CPU."
    )
    seed: int = Field(default=42, description="Seed of initialisation, data order and dropout.")
    warm_start: Literal["champion", "base"] = Field(
        default="champion",
        description="Start from the champion adapter when there is one, or from the bare base.",
    )
    full_retrain_every: int = Field(
        default=1,
        ge=0,
        description="Make every Nth retrain on a champion a full one: 1, every one (delta"
        " retrains off; benchmarks/learning_bench.py); 0, only when needed (no champion,"
        " another base, a changed mapping, --full).",
    )
    delta_replay_share: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="In a delta retrain, the share of the wiki rows that replay stable pairs"
        " (sampled) beside the fresh ones.",
    )
    delta_general_share: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="In a delta retrain, the share of general rows in the result (default: the"
        " snapshot's general share).",
    )
    delta_num_train_epochs: float | None = Field(
        default=None,
        gt=0,
        description="Epochs of a delta retrain, which starts from the champion's adapter"
        " (default: num_train_epochs).",
    )
    general_answers: Literal["bundled", "base"] = Field(
        default="bundled",
        description="Answers of the general rows trained on: the bundled references, or the base"
        " model's own greedy answers to their prompts (self-distilled replay, generated once per"
        " base and cached), which keep the base's own way of answering.",
    )
    general_distillation: float = Field(
        default=0.0,
        ge=0,
        description="Weight of a distillation term that keeps the model's next-token"
        " distribution on general conversations (the snapshot's general pool: every general"
        " example not held out) close to the bare base's (the model with its adapter disabled:"
        " one extra forward pass, no extra weights): KL(base || model) per answer token, added"
        " to the loss each step. 0: off.",
    )
    distillation_rows: int = Field(
        default=2,
        ge=1,
        description="General conversations distilled each training step (cycling through them).",
    )
    checkpoint_on: Literal["wiki", "fresh"] = Field(
        default="wiki",
        description="The eval loss that picks the checkpoint kept and stops training early: over"
        " all held-out wiki questions, or over those about facts fresh to the champion (the same"
        " questions when there is no champion, or every fact is fresh).",
    )
    eval_steps: int = Field(default=50, ge=1, description="Evaluate (and checkpoint) this often.")
    logging_steps: int = Field(default=10, ge=1, description="Log loss and speed this often.")
    early_stopping_patience: int = Field(
        default=3,
        ge=0,
        description="Evaluations without a better eval loss before stopping (0: never stop early).",
    )
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept on disk.")
    sample_generations: int = Field(
        default=16, ge=0, description="Eval questions answered after training, logged to MLflow."
    )
    max_new_tokens: int = Field(default=48, ge=1, description="Length of a sample answer.")

    def for_scope(self, scope: Literal["full", "delta"]) -> TrainingRecipe:
        """The recipe a retrain of ``scope`` runs: a delta's own epochs where set."""
        if scope == "delta" and self.delta_num_train_epochs is not None:
            return self.model_copy(update={"num_train_epochs": self.delta_num_train_epochs})
        return self

    def fingerprint(self) -> str:
        """A short hash of the settings (the run directory of a resumable training uses it)."""
        settings = self.model_dump(mode="json", exclude={"block_type_slug"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    def params(self) -> dict[str, Any]:
        """The settings, flat, as run parameters."""
        settings = self.model_dump(mode="json", exclude={"block_type_slug"})
        return {
            k: ",".join(v) if isinstance(v, list) else v
            for k, v in settings.items()
            if v is not None
        }

    @classmethod
    def from_file(cls, path: Path | str) -> TrainingRecipe:
        """A recipe from a YAML or JSON file of field: value (unknown fields are an error), or
        one that ships with wikitune, by name (``smollm2-135m-cpu``)."""
        path = Path(path)
        if not path.exists() and str(path) in packaged_recipes():
            path = Path(str(resources.files("wikitune.recipes").joinpath(f"{path}.yaml")))
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read the recipe {path}: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"the recipe {path} must be a mapping of field: value")
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"the recipe {path} has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**values)
        except ValidationError as error:
            raise ValueError(f"invalid recipe {path}: {error}") from error


def _default_for(base_model: str, device: str | None) -> tuple[str | None, str]:
    """The packaged recipe a base trains with when none is given (None: the defaults), and
    that choice in words. The base is recognised by its digest, not its spelling: the packaged
    SmolLM2 given by its ``.gguf`` path gets its own recipe."""
    from wikitune.tasks.basemodel import packaged_name
    from wikitune.tasks.model import default_device

    name = _DEFAULT_RECIPES.get(packaged_name(base_model) or "")
    if name:
        return name, f"the packaged recipe {name} (the base's own)"
    choose = f"pick one with --recipe FILE or a packaged name ({', '.join(packaged_recipes())})"
    if (device or default_device()) != "cuda":
        return CPU_RECIPE, (
            f"the CPU recipe {CPU_RECIPE} (plain LoRA, bf16 where the CPU has it): {base_model}"
            f" has no packaged recipe and trains on a CPU; {choose}"
        )
    return None, (
        f"the default recipe (QLoRA for a 7B model on one GPU): {base_model} has no packaged"
        f" recipe; {choose}"
    )


def recipe_origin(base_model: str, path: Path | str | None, device: str | None = None) -> str:
    """Which recipe a retrain of ``base_model`` on ``device`` (default: this machine's) uses,
    in words: the given file, the base's packaged recipe, the CPU recipe or the defaults (said
    plainly, with how to pick another)."""
    return f"the recipe {path}" if path else _default_for(base_model, device)[1]


def chosen_recipe(
    base_model: str, path: Path | str | None, device: str | None = None
) -> TrainingRecipe:
    """The recipe a retrain of ``base_model`` uses: the file at ``path`` when given (a packaged
    name or a YAML file), else :func:`default_recipe`."""
    return TrainingRecipe.from_file(path) if path else default_recipe(base_model, device)


def default_recipe(base_model: str, device: str | None = None) -> TrainingRecipe:
    """The recipe for ``base_model`` when none is given: its packaged recipe if it has one
    (the packaged SmolLM2, by name, file or digest: ``smollm2-135m-cpu``), else on a CPU the
    CPU recipe, else the defaults (a 7B model, one GPU)."""
    name, _ = _default_for(base_model, device)
    return TrainingRecipe.from_file(name) if name else TrainingRecipe()
