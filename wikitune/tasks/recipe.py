"""The training recipe: wikitune's own choices, and the ``sft:`` and ``lora:`` sections that go as
they are to TRL's ``SFTConfig`` and PEFT's ``LoraConfig``. Defaults suit a 7B model on one
24–32 GB GPU; loaded from a YAML or JSON file with ``TrainingRecipe.from_file``. A plain model:
training code does not import Prefect (``blocks.recipe`` wraps it as a Block)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

__all__ = [
    "CPU_RECIPE",
    "LORA_DEFAULTS",
    "SFT_DEFAULTS",
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


SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    # transformers 5 has no warmup_ratio: a warmup_steps below 1 is the share of all steps.
    "warmup_steps": 0.03,
    "weight_decay": 0.0,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 4,
    "max_length": 1024,
    "seed": 42,
    "eval_steps": 50,
    "logging_steps": 10,
    "save_total_limit": 2,
}
"""The ``sft:`` section's defaults (7B on one GPU); a recipe's own keys override them."""

LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": "all-linear",
}
"""The ``lora:`` section's defaults."""

# What wikitune decides itself: the device and precision, how rows are batched and their loss
# masked, when it evaluates and saves (with its eval sets and early stopping), where it writes.
SFT_SET_BY_WIKITUNE = frozenset(
    {
        *("output_dir", "use_cpu", "bf16", "fp16", "packing", "padding_free"),
        *("pad_to_multiple_of", "packing_strategy", "assistant_only_loss"),
        *("completion_only_loss", "eval_strategy", "save_strategy", "save_steps"),
        *("load_best_model_at_end", "metric_for_best_model", "greater_is_better"),
        *("report_to", "data_seed", "disable_tqdm", "dataloader_num_workers"),
    }
)
LORA_SET_BY_WIKITUNE = frozenset({"task_type"})

# Recipes before the sft:/lora: sections named these at the top level; they are still read.
_FLAT_NAMES: dict[str, tuple[str, str]] = {
    "lora_r": ("lora", "r"),
    "lora_alpha": ("lora", "lora_alpha"),
    "lora_dropout": ("lora", "lora_dropout"),
    "target_modules": ("lora", "target_modules"),
    "warmup_ratio": ("sft", "warmup_steps"),
    **{name: ("sft", name) for name in (*SFT_DEFAULTS, "gradient_checkpointing")},
}


class TrainingRecipe(BaseModel):
    """How to train an adapter on a snapshot: wikitune's own choices (quantization, precision,
    where training starts, full or delta retrains, the general replay, the checkpoint kept),
    and two sections passed as they are to the libraries that train: ``sft:`` to TRL's
    ``SFTConfig`` and ``lora:`` to PEFT's ``LoraConfig`` (alignment-handbook's way), each over
    wikitune's defaults and validated by that class.

    Examples:
        >>> recipe = TrainingRecipe(lora={"r": 8}, sft={"num_train_epochs": 1})
        >>> recipe = TrainingRecipe.from_file("recipe.yaml")
        >>> recipe.replace(max_steps=10).sft["max_steps"]
        10
    """

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
    sft: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of TRL's SFTConfig (learning_rate, num_train_epochs,"
        " max_steps, per_device_train_batch_size, max_length, seed, eval_steps, ...) over"
        " wikitune's defaults; device, precision, batching, evaluation and saving are"
        " wikitune's.",
    )
    lora: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of PEFT's LoraConfig (r, lora_alpha, lora_dropout,"
        " target_modules, ...) over wikitune's defaults.",
    )
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
        " (default: sft.num_train_epochs).",
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
        " example not held out) close to the bare base's (the model with its adapter disabled,"
        " whose top-128 log-probabilities there are computed once per base and kept; no extra"
        " weights): KL(base || model) per answer token, added to the loss. 0: off.",
    )
    distillation_rows: int = Field(
        default=2,
        ge=1,
        description="General conversations distilled each time the term is applied (cycling"
        " through them).",
    )
    distillation_every: int = Field(
        default=1,
        ge=1,
        description="Apply the distillation term on every Nth training step only, at N times its"
        " weight: the same term on average, its forward pass paid once in N steps.",
    )
    checkpoint_on: Literal["wiki", "fresh"] = Field(
        default="wiki",
        description="The eval loss that picks the checkpoint kept and stops training early: over"
        " all held-out wiki questions, or over those about facts fresh to the champion (the same"
        " questions when there is no champion, or every fact is fresh).",
    )
    early_stopping_patience: int = Field(
        default=3,
        ge=0,
        description="Evaluations without a better eval loss before stopping (0: never stop early).",
    )
    sample_generations: int = Field(
        default=16, ge=0, description="Eval questions answered after training, logged to MLflow."
    )
    max_new_tokens: int = Field(default=48, ge=1, description="Length of a sample answer.")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, values: Any) -> Any:
        """Fill the sections over their defaults; read the flat names of older recipes (a flat
        name wins over its section, so ``replace(max_steps=...)`` works)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        sections: dict[str, dict[str, Any]] = {
            "sft": {**SFT_DEFAULTS, **(values.get("sft") or {})},
            "lora": {**LORA_DEFAULTS, **(values.get("lora") or {})},
        }
        for flat, (section, key) in _FLAT_NAMES.items():
            if flat in values:
                value = values.pop(flat)
                if value is not None:
                    sections[section][key] = value
        for section, reserved in (("sft", SFT_SET_BY_WIKITUNE), ("lora", LORA_SET_BY_WIKITUNE)):
            taken = sorted(reserved & set(sections[section]))
            if taken:
                raise ValueError(
                    f"{section}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by"
                    " wikitune (device, precision, batching, evaluation and saving)"
                )
        return {**values, **sections}

    def replace(self, **changes: Any) -> TrainingRecipe:
        """This recipe with ``changes``: fields, or keys of its sections by their flat names
        (``max_steps=10``, ``lora_r=8``), validated again."""
        return TrainingRecipe(**{**self.model_dump(include=_FIELDS), **changes})

    def plain(self) -> TrainingRecipe:
        """This recipe as the plain model (a Block that wraps it adds fields of its own)."""
        return self.replace()

    def for_scope(self, scope: Literal["full", "delta"]) -> TrainingRecipe:
        """The recipe a retrain of ``scope`` runs: a delta's own epochs where set."""
        if scope == "delta" and self.delta_num_train_epochs is not None:
            return self.replace(num_train_epochs=self.delta_num_train_epochs)
        return self

    def check(self, origin: str = "the recipe") -> None:
        """Validate the sections with the classes they go to: TRL's ``SFTConfig`` and PEFT's
        ``LoraConfig`` (an unknown key or a bad value is a ValueError naming it)."""
        import tempfile

        from peft import LoraConfig
        from trl import SFTConfig

        try:
            LoraConfig(task_type="CAUSAL_LM", **self.lora)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{origin}: lora: {error}") from None
        with tempfile.TemporaryDirectory() as scratch:
            try:
                SFTConfig(
                    output_dir=scratch, use_cpu=True, bf16=False, report_to="none", **self.sft
                )
            except (TypeError, ValueError) as error:
                raise ValueError(f"{origin}: sft: {error}") from None

    def fingerprint(self) -> str:
        """A short hash of the settings (the run directory of a resumable training uses it)."""
        settings = self.model_dump(mode="json", include=_FIELDS)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]

    def params(self) -> dict[str, Any]:
        """The settings, flat, as run parameters: the ``sft:`` keys by their own names, the
        ``lora:`` keys with a ``lora_`` prefix (``lora_r``, ``lora_target_modules``)."""
        settings = self.model_dump(mode="json", include=_FIELDS - {"sft", "lora"})
        settings |= self.sft
        settings |= {k if k.startswith("lora_") else f"lora_{k}": v for k, v in self.lora.items()}
        return {
            k: ",".join(map(str, v)) if isinstance(v, list) else v
            for k, v in settings.items()
            if v is not None
        }

    @classmethod
    def from_file(cls, path: Path | str) -> TrainingRecipe:
        """A recipe from a YAML or JSON file (unknown fields are an error, and the ``sft:`` and
        ``lora:`` sections are validated by ``SFTConfig`` and ``LoraConfig``), or one that ships
        with wikitune, by name (``smollm2-135m-cpu``)."""
        path = Path(path)
        packaged = not path.exists() and str(path) in packaged_recipes()
        if packaged:  # checked by the tests, not on every load
            path = Path(str(resources.files("wikitune.recipes").joinpath(f"{path}.yaml")))
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read the recipe {path}: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"the recipe {path} must be a mapping of field: value")
        unknown = sorted(set(values) - set(cls.model_fields) - set(_FLAT_NAMES))
        if unknown:
            raise ValueError(f"the recipe {path} has unknown fields: {', '.join(unknown)}")
        for section in ("sft", "lora"):
            if not isinstance(values.get(section) or {}, dict):
                raise ValueError(f"the recipe {path}: {section}: must be a mapping of key: value")
        try:
            recipe = cls(**values)
        except ValidationError as error:
            raise ValueError(f"invalid recipe {path}: {error}") from error
        if not packaged:
            recipe.check(f"the recipe {path}")
        return recipe


_FIELDS = set(TrainingRecipe.model_fields)  # a Block that wraps a recipe adds its own


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
