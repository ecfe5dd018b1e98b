"""Train a LoRA adapter on a snapshot with TRL's SFTTrainer: QLoRA (4-bit NF4 base) where
bitsandbytes runs on the device, plain LoRA otherwise; assistant-only loss, packed rows without
padding, eval loss on the snapshot's eval files, early stopping, resumable checkpoints, and one
MLflow run per training.

This task reads only the snapshot's files (a path or URL) and writes under its run directory:
it never opens the DuckDB store, so it runs on any machine of the ``gpu`` pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from wikitune import __version__, progress
from wikitune.mlflow import tracking
from wikitune.tasks import basecache, basemodel, chat
from wikitune.tasks import model as models
from wikitune.tasks.plan import TrainingPlan, training_rows
from wikitune.tasks.recipe import TrainingRecipe
from wikitune.tasks.snapshots import SnapshotData, SnapshotUnavailable, read_snapshot

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainerCallback

__all__ = [
    "Method",
    "TrainResult",
    "TrainingFailed",
    "choose_method",
    "make_trainer",
    "prepare_model",
    "run_directory",
    "train_adapter",
]

log = logging.getLogger(__name__)

Method = Literal["qlora-nf4", "lora"]
RESULT_FILE = "result.json"
MLFLOW_RUN_FILE = "mlflow_run_id"
# What an MLflow model of the adapter needs to be served; pinned loosely to what trained it.
ADAPTER_REQUIREMENTS = ["torch", "transformers", "peft", "accelerate", "tokenizers"]


class TrainingFailed(RuntimeError):
    """Training could not run or did not finish; the message says why."""


class TrainResult(BaseModel):
    """Where the adapter is and how it was trained; what the retrain flow returns."""

    run_id: str
    model_uri: str
    adapter_dir: str
    method: Method
    base_model: str
    base_model_spec: str = ""
    base_model_digest: str = ""
    loss_mode: str = ""
    snapshot_id: str
    snapshot_digest: str
    source: str
    global_step: int
    resumed_from: str | None = None
    init_adapter: str | None = None
    warm_start: str = ""
    plan: TrainingPlan = Field(default_factory=TrainingPlan)
    train_counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


def choose_method(recipe: TrainingRecipe, device: str) -> Method:
    """QLoRA when the recipe allows it and 4-bit runs on ``device``; LoRA otherwise."""
    if recipe.quantization == "none":
        return "lora"
    if models.fourbit_available(device):
        return "qlora-nf4"
    if recipe.quantization == "nf4":
        raise TrainingFailed(
            f"the recipe requires 4-bit NF4 but bitsandbytes cannot run it on {device}"
        )
    log.warning("4-bit NF4 is not available on %s: training plain LoRA instead of QLoRA", device)
    return "lora"


def run_directory(
    runs_dir: Path,
    snapshot: SnapshotData,
    base_digest: str,
    recipe: TrainingRecipe,
    init: str | None,
    scope: str = "full",
) -> Path:
    """One directory per (snapshot, base, recipe, starting adapter, scope): a re-run resumes
    there."""
    parts: list[Any] = [snapshot.digest, base_digest, recipe.fingerprint(), init]
    if scope != "full":  # full runs keep the directories they had before deltas existed
        parts.append(scope)
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:10]
    return runs_dir / f"{snapshot.id}-{key}"


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint that was written whole (its trainer state is saved last)."""
    candidates = sorted(
        (p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return candidate
    return None


def _metrics_callback() -> TrainerCallback:
    """Per-step loss, learning rate and tokens per second to the active MLflow run."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def __init__(self) -> None:
            self.last: tuple[float, float] | None = None

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            values = {
                k: float(v)
                for k, v in (logs or {}).items()
                if isinstance(v, int | float) and math.isfinite(v)
            }
            tokens = values.get("num_tokens")
            now = time.perf_counter()
            if tokens is not None and "loss" in values:
                if self.last is not None and now > self.last[1] and tokens > self.last[0]:
                    values["tokens_per_second"] = (tokens - self.last[0]) / (now - self.last[1])
                self.last = (tokens, now)
            if values:
                tracking.log_metrics(values, step=state.global_step)
                shown = ("loss", "eval_wiki_loss", "eval_fresh_loss", "tokens_per_second")
                log.info(
                    "step %d: %s",
                    state.global_step,
                    ", ".join(f"{k}={values[k]:.4g}" for k in shown if k in values),
                )

    return MlflowMetrics()


def _early_stopping(patience: int) -> TrainerCallback:
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=patience)


def make_trainer(
    model: Any,
    tokenizer: Any,
    recipe: TrainingRecipe,
    *,
    device: str,
    output_dir: Path,
    train_dataset: Dataset,
    eval_datasets: dict[str, Dataset],
    callbacks: list[TrainerCallback],
    batching: Literal["packed", "padded"] = "packed",
    precision: models.Precision = "fp32",
    distillation: Distillation | None = None,
) -> Any:
    """TRL's SFTTrainer for ``recipe`` on ``device`` on rows tokenized by ``chat.tokenize_rows``
    (their labels say which tokens carry loss), packed without padding ("padded" pads every row
    to ``max_length``: the benchmark's baseline); with ``distillation``, each training step
    adds its term to the loss."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    trainer_class = SFTTrainer if device == "cuda" else _answer_positions_trainer()
    if distillation is not None:
        trainer_class = _distilling(trainer_class, distillation, precision)
    trainer = trainer_class(
        model=model,
        args=_sft_config(recipe, device, output_dir, eval_datasets, batching, precision),
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our callback logs instead of printing dicts
    if device == "cpu":
        # TRL casts trainable weights of quantized models to bf16: keep fp32 master weights.
        for parameter in trainer.model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    return trainer


DISTILLATION_TOP_K = 128
"""The base's likeliest tokens the distillation term compares at each answer position (the rest
as one outcome). On the demo's general pool the base leaves 3% of its probability outside its
top 128 tokens on average, 5% outside 64 and 8% outside 32."""


class Distillation:
    """General rows (tokenized prompt and answer) with the bare base's top-k log-probabilities
    at their answer positions, a few for each training step, reshuffled on each pass: what the
    distillation term keeps the model's distribution close to."""

    def __init__(
        self,
        encoded: list[tuple[list[int], list[int]]],
        base: list[tuple[Any, Any]],
        *,
        weight: float,
        rows: int,
        pad_id: int,
        seed: int,
        every: int = 1,
    ) -> None:
        if not encoded:
            raise ValueError("distillation needs general rows, and the training mix has none")
        self.every = every
        self.weight = weight * every  # applied on one step in ``every``: the same on average
        self._encoded, self._base = encoded, base
        self._rows, self._pad_id = rows, pad_id
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def _next_rows(self) -> list[int]:
        picked = []
        while len(picked) < self._rows:
            if not self._order:
                self._order = list(range(len(self._encoded)))
                self._rng.shuffle(self._order)
            picked.append(self._order.pop())
        return picked

    def _reference(self, picked: list[int], device: Any) -> tuple[Any, Any]:
        import torch

        ids = torch.cat([self._base[i][0] for i in picked]).to(device)
        return ids, torch.cat([self._base[i][1] for i in picked]).to(device)

    def next_batch(self, device: Any) -> tuple[dict[str, Any], Any, tuple[Any, Any]]:
        """The next rows, right-padded: (inputs, labels, the base's top-k ids and
        log-probabilities at their answer positions) on ``device``."""
        picked = self._next_rows()
        inputs, labels = models.pad_rows([self._encoded[i] for i in picked], self._pad_id)
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        return inputs, labels.to(device), self._reference(picked, device)

    def log_kl(self, trainer: Any, head: Any, hidden: Any, reference: tuple[Any, Any]) -> Any:
        """The term's mean KL(base || model) over the answer positions ``hidden`` (logged to
        the trainer's metrics as ``distillation_kl``), weighted."""
        ids, base = reference
        kl = models.top_k_kl(head(hidden), ids, base) / max(len(ids), 1)
        trainer._metrics["train"]["distillation_kl"].append(float(kl.detach()))
        return self.weight * kl


def _distilling(
    trainer_class: type, distillation: Distillation, precision: models.Precision
) -> type:
    """``trainer_class`` whose training loss adds the distillation term: a forward pass over
    the term's rows, their KL to the base's kept log-probabilities (``distillation_kl``).

    Packing the rows into the training batch's own pass instead was measured to cost the same
    on a CPU (1.48x a step without the term both ways, 2 cores): that pass's attention grows
    with the square of its one longer row."""

    class DistillingTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not model.training or self.state.global_step % distillation.every:
                return result
            loss = result[0] if return_outputs else result
            rows, labels, reference = distillation.next_batch(loss.device)
            with models.computing_in(precision, loss.device.type):
                hidden, _, head = models.answer_hidden(model, rows, labels)
                loss = loss + distillation.log_kl(self, head, hidden, reference)
            return (loss, result[1]) if return_outputs else loss

    return DistillingTrainer


def _answer_positions_trainer() -> type:
    """SFTTrainer whose loss projects only the positions that carry loss through the LM head.

    TRL does that on GPUs (a Triton kernel); elsewhere its fused head scores every position in
    chunks. With SmolLM2's 49k-token vocabulary and answers a third of each row, that doubles a
    CPU step: measured here, 156 real tokens/s with this loss against 80 with TRL's (LoRA fp32,
    2 cores)."""
    import torch
    from trl import SFTTrainer

    class AnswerPositionsSFTTrainer(SFTTrainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            # The backbone is called directly, past the forward that accelerate wraps in its
            # bf16 autocast: enter it here (the loss itself is computed in fp32).
            with models.computing_in("bf16" if self.args.bf16 else "fp32", "cpu"):
                total, positions = models.answer_loss_sum(model, inputs, labels)
            count = positions if num_items_in_batch is None else num_items_in_batch
            loss = total / torch.as_tensor(count).clamp(min=1)
            if model.training and "position_ids" in inputs:  # TRL's token count, for tokens/s
                self._total_train_tokens += int(inputs["position_ids"].size(1))
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return (loss, {"loss": loss}) if return_outputs else loss

    return AnswerPositionsSFTTrainer


def _sft_config(
    recipe: TrainingRecipe,
    device: str,
    output_dir: Path,
    eval_datasets: dict[str, Any],
    batching: Literal["packed", "padded"],
    precision: models.Precision = "fp32",
) -> Any:
    from trl import SFTConfig

    cuda = device == "cuda"
    # bf16 is autocast: the adapter's master weights stay fp32 (cast back below on CPU).
    bf16 = precision == "bf16"
    eval_strategy = "steps" if "wiki" in eval_datasets else "no"
    packed = batching == "packed"
    chosen = {k: v for k, v in recipe.sft.items() if k != "gradient_checkpointing"}
    return SFTConfig(
        **chosen,
        output_dir=str(output_dir),
        packing=packed,
        padding_free=packed,
        pad_to_multiple_of=None if packed else recipe.sft["max_length"],
        use_cpu=not cuda,
        # TRL turns bf16 on by default, which CPUs without bf16 instructions emulate 30-50x
        # slower: the resolved precision decides (models.resolve_precision).
        bf16=bf16,
        fp16=cuda and not bf16 and recipe.precision != "fp32",
        gradient_checkpointing=_checkpointing(recipe, device),
        # Rows arrive tokenized with their labels (chat.tokenize_rows): answers only.
        assistant_only_loss=False,
        completion_only_loss=False,
        packing_strategy="bfd",
        data_seed=recipe.sft["seed"],
        eval_strategy=eval_strategy,
        save_strategy=eval_strategy,
        save_steps=recipe.sft["eval_steps"],
        load_best_model_at_end=eval_strategy != "no",
        metric_for_best_model=f"eval_{_checkpoint_split(eval_datasets)}_loss",
        greater_is_better=False,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _checkpoint_split(eval_datasets: dict[str, Any]) -> str:
    """The eval split whose loss picks the checkpoint: the fresh questions where they were
    evaluated apart (``checkpoint_on: fresh``), else all wiki questions."""
    return "fresh" if "fresh" in eval_datasets else "wiki"


def _eval_splits(wiki_eval: Dataset, recipe: TrainingRecipe, tokenize: Any) -> dict[str, Any]:
    """The eval splits training scores: all held-out wiki questions, and the fresh ones apart
    when the recipe keeps its checkpoint on them and they are not all the questions."""
    splits = {"wiki": tokenize(wiki_eval)}
    if recipe.checkpoint_on == "fresh":
        fresh = wiki_eval.filter(lambda row: bool(row["fresh"]))
        if 0 < len(fresh) < len(wiki_eval):
            splits["fresh"] = tokenize(fresh)
    return splits


def _checkpointing(recipe: TrainingRecipe, device: str) -> bool:
    """Activation checkpointing saves GPU memory; on CPU it only costs time (1.6-3x here)."""
    chosen = recipe.sft.get("gradient_checkpointing")
    return bool(chosen) if chosen is not None else device == "cuda"


def prepare_model(
    base_model: str,
    recipe: TrainingRecipe,
    *,
    method: Method,
    device: str,
    init_adapter: str | None,
) -> Any:
    """The base model (4-bit for QLoRA) with a new LoRA adapter, or ``init_adapter`` to go on
    training."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    base = models.load_base_model(base_model, device=device, quantize=method == "qlora-nf4")
    if method == "qlora-nf4":
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=_checkpointing(recipe, device)
        )
        models.keep_4bit_layers_trainable(base)
    if init_adapter:
        return PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
    config = LoraConfig(**recipe.lora, task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def _sample_rows(eval_split: Dataset, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` eval rows, fresh facts first, in a stable order."""
    rows = sorted(eval_split, key=lambda r: (not r.get("fresh"), str(r["id"])))
    return rows[:count]


def train_adapter(
    *,
    snapshot: str,
    base_model: str | basemodel.ResolvedBase,
    recipe: TrainingRecipe,
    runs_dir: Path,
    tracking_uri: str,
    artifact_root: Path | None = None,
    init_adapter: str | None = None,
    warm_start: str = "",
    plan: TrainingPlan | None = None,
    models_dir: Path | None = None,
    device: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    on_run_started: Callable[[str], None] | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train an adapter of ``base_model`` (resolved under ``models_dir`` when given by name) on
    the snapshot at ``snapshot`` (path or URL); log the run to MLflow and return where the
    adapter is. ``warm_start`` says why training starts where it does, ``plan`` what it trains
    on (default: the whole snapshot); ``run_tags`` (e.g. the
    orchestrator's run id and URL) are set on the MLflow run. Re-running with the same inputs
    resumes from the last checkpoint, or returns the finished result."""
    import torch
    from datasets import disable_progress_bars

    disable_progress_bars()
    try:
        data = read_snapshot(snapshot)
    except SnapshotUnavailable as error:
        raise TrainingFailed(str(error)) from error
    if isinstance(base_model, str):
        try:
            base_model = basemodel.resolve_base_model(
                base_model, models_dir or runs_dir.parent / "models"
            )
        except basemodel.BaseModelError as error:
            raise TrainingFailed(str(error)) from error
    base = base_model
    plan = plan or TrainingPlan()
    if plan.scope == "delta" and not init_adapter:
        raise TrainingFailed("a delta retrain needs the champion's adapter to start from")
    recipe = recipe.for_scope(plan.scope)
    run_dir = run_directory(runs_dir, data, base.digest, recipe, init_adapter, plan.scope)
    if (run_dir / RESULT_FILE).exists():
        log.info("training of snapshot %s already finished in %s", data.id, run_dir)
        return TrainResult.model_validate_json((run_dir / RESULT_FILE).read_text())

    device = device or models.default_device()
    method = choose_method(recipe, device)
    precision, precision_reason = models.resolve_precision(recipe.precision, device)
    log.info(
        "training %s on snapshot %s with %s on %s, computing in %s",
        basemodel.describe(base),
        data.id,
        "QLoRA (4-bit NF4 base)" if method == "qlora-nf4" else "plain LoRA (16/32-bit base)",
        device,
        precision_reason,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id_file = run_dir / MLFLOW_RUN_FILE
    previous_run = run_id_file.read_text().strip() if run_id_file.exists() else None
    source = data.manifest.source

    with tracking.training_run(
        tracking_uri=tracking_uri,
        experiment=tracking.experiment_name(source),
        artifact_root=artifact_root,
        run_name=f"train-{data.id}",
        run_id=previous_run,
        tags={tracking.SOURCE_TAG: source, "wikitune.snapshot": data.id},
    ) as run_id:
        run_id_file.write_text(run_id + "\n")
        tracking.set_tags(
            {
                **(run_tags or {}),
                tracking.DESCRIPTION_TAG: (
                    f"LoRA adapter of {base.spec} trained on snapshot {data.id} of {source},"
                    f" from {warm_start or 'the bare base model'}, {plan.scope} retrain"
                    f" ({plan.reason}); the evaluation replaces this text with its decision."
                ),
                **({"wikitune.warm_start": warm_start} if warm_start else {}),
                "wikitune.training_scope": plan.scope,
                "wikitune.training_scope_reason": plan.reason,
                "wikitune.precision_reason": precision_reason,
            }
        )
        if on_run_started:
            on_run_started(run_id)
        try:
            return _train_in_run(
                data=data,
                base=base,
                recipe=recipe,
                method=method,
                precision=precision,
                device=device,
                run_dir=run_dir,
                run_id=run_id,
                init_adapter=init_adapter,
                warm_start=warm_start,
                plan=plan,
                callbacks=callbacks or [],
            )
        except torch.OutOfMemoryError as error:
            raise TrainingFailed(
                f"out of memory on {device} training snapshot {data.id}: lower"
                " per_device_train_batch_size or max_length, or use 4-bit (quantization: auto)"
            ) from error


SELF_DISTILLED_TOKENS = 96
"""Longest base answer a self-distilled general row trains on."""


def _answered_by_base(
    rows: Dataset,
    model: Any,
    tokenizer: Any,
    *,
    cache_dir: Path,
    base: basemodel.ResolvedBase,
    precision: models.Precision,
) -> Dataset:
    """``rows`` with each general row's answer replaced by the bare base's own greedy answer to
    its prompt (self-distilled replay), generated once per base and precision and kept under
    ``cache_dir``; a row the base answers with nothing keeps its bundled answer."""
    general = [i for i, kind in enumerate(rows["kind"]) if kind != "wiki"]
    if not general:
        return rows
    with model.disable_adapter():
        answers = basecache.base_answers(
            cache_dir,
            basecache.cache_key(base.digest, precision),
            tokenizer,
            [rows[i]["messages"] for i in general],
            max_new_tokens=SELF_DISTILLED_TOKENS,
            generate=lambda prompts: models.generate_answers(
                model,
                tokenizer,
                prompts,
                batch_size=64,  # generation pays per step: one wide batch of short rows
                max_new_tokens=SELF_DISTILLED_TOKENS,
                description="base: answering the general prompts",
            ),
        )
    replaced = {i: answer for i, answer in zip(general, answers, strict=True) if answer}
    log.info("%d general rows answered by the base itself (self-distilled)", len(replaced))

    def answer(row: dict[str, Any], index: int) -> dict[str, Any]:
        if index in replaced:
            turns = row["messages"][:-1]
            row["messages"] = [*turns, {"role": "assistant", "content": replaced[index]}]
        return row

    return rows.map(answer, with_indices=True)


def _best_eval(state: Any) -> dict[str, float]:
    """The eval losses at the checkpoint training kept (the best eval loss of the recipe's
    ``checkpoint_on`` split), read from the trainer's log instead of evaluating again."""
    evals: dict[int, dict[str, float]] = {}
    for entry in state.log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and key.endswith("_loss"):
                evals.setdefault(entry["step"], {})[key] = float(value)
    if not evals:
        return {}
    step = state.best_global_step if state.best_global_step in evals else max(evals)
    return {f"final_{k}": v for k, v in evals[step].items()}


def _train_in_run(
    *,
    data: SnapshotData,
    base: basemodel.ResolvedBase,
    recipe: TrainingRecipe,
    method: Method,
    precision: models.Precision,
    device: str,
    run_dir: Path,
    run_id: str,
    init_adapter: str | None,
    warm_start: str,
    plan: TrainingPlan,
    callbacks: list[TrainerCallback],
) -> TrainResult:
    """Inside the active MLflow run: load, choose the rows, log what trains on what, train,
    save and log the adapter, and write the result beside it."""
    model, tokenizer, fmt = _load_for_training(base, recipe, method, device, init_adapter)
    base_cache = run_dir.parent / "base-answers"
    rows, train_counts = _training_mix(
        data,
        plan,
        recipe,
        model,
        tokenizer,
        base=base,
        precision=precision,
        device=device,
        cache_dir=base_cache,
    )
    tracking.log_params(
        {
            **recipe.params(),
            "method": method,
            "device": device,
            "compute_precision": precision,
            **base.params(),
            **fmt.params(),
            "init_adapter": init_adapter or "base",
            "warm_start": warm_start or ("champion" if init_adapter else "base"),
            **_snapshot_params(data, plan),
            **train_counts,
            "wikitune_version": __version__,
            "trainable_parameters": model.get_nb_trainable_parameters()[0],
        }
    )
    tracking.log_snapshot_inputs(
        data.splits, location=data.location, snapshot_id=data.id, digest=data.digest
    )
    checkpoints = run_dir / "checkpoints"
    resume = _last_checkpoint(checkpoints)
    trainer = _trainer_for(
        data,
        rows,
        model,
        tokenizer,
        fmt,
        recipe,
        base=base,
        base_cache=base_cache,
        device=device,
        precision=precision,
        output_dir=checkpoints,
        callbacks=callbacks,
    )
    if resume is not None:
        log.info("resuming training from %s", resume)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {k if k.startswith("train") else f"train_{k}": v for k, v in output.metrics.items()}
    metrics |= _best_eval(trainer.state)
    tracking.log_metrics(metrics, step=trainer.state.global_step)

    adapter_dir = run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    _log_samples(data, trainer.model, tokenizer, recipe, precision=precision, device=device)
    model_uri = tracking.log_adapter(
        trainer.model,
        tokenizer,
        base=base.params(),
        pip_requirements=[f"{name}=={_version(name)}" for name in ADAPTER_REQUIREMENTS],
    )
    result = TrainResult(
        run_id=run_id,
        model_uri=model_uri,
        adapter_dir=str(adapter_dir),
        method=method,
        base_model=base.path,
        base_model_spec=base.spec,
        base_model_digest=base.digest,
        loss_mode=fmt.loss,
        snapshot_id=data.id,
        snapshot_digest=data.digest,
        source=data.manifest.source,
        global_step=trainer.state.global_step,
        resumed_from=str(resume) if resume else None,
        init_adapter=init_adapter,
        warm_start=warm_start,
        plan=plan,
        train_counts=train_counts,
        metrics={k: float(v) for k, v in metrics.items()},
    )
    (run_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2) + "\n")
    return result


def _load_for_training(
    base: basemodel.ResolvedBase,
    recipe: TrainingRecipe,
    method: Method,
    device: str,
    init_adapter: str | None,
) -> tuple[Any, Any, chat.ChatFormat]:
    """The model with its adapter, the tokenizer with the template that training, evaluation
    and inference all render with (saved with the adapter), and that chat format."""
    try:
        tokenizer = models.load_tokenizer(base.path)
        fmt = chat.chat_format(tokenizer)
        model = prepare_model(
            base.path, recipe, method=method, device=device, init_adapter=init_adapter
        )
    except Exception as error:  # transformers and safetensors raise many kinds here
        start = f"adapter {init_adapter} on " if init_adapter else ""
        raise TrainingFailed(
            f"cannot load the {start}base model {base.spec}: {type(error).__name__}: {error}"
        ) from error
    tokenizer.chat_template = fmt.template
    log.info("chat template: %s", fmt.describe())
    return model, tokenizer, fmt


def _training_mix(
    data: SnapshotData,
    plan: TrainingPlan,
    recipe: TrainingRecipe,
    model: Any,
    tokenizer: Any,
    *,
    base: basemodel.ResolvedBase,
    precision: models.Precision,
    device: str,
    cache_dir: Path,
) -> tuple[Dataset, dict[str, int]]:
    """The rows this training runs on (the plan's mix, general rows answered by the base where
    the recipe says so) and how many of each kind."""
    rows, counts = training_rows(data.splits["train"], plan, recipe, data.manifest.general_share)
    if recipe.general_answers == "base":
        with models.computing_in(precision, device):
            rows = _answered_by_base(
                rows, model, tokenizer, cache_dir=cache_dir, base=base, precision=precision
            )
    log.info(
        "%s retrain (%s): %s",
        plan.scope,
        plan.reason,
        ", ".join(f"{n} {k.split('_')[1]}" for k, n in counts.items()),
    )
    return rows, counts


def _snapshot_params(data: SnapshotData, plan: TrainingPlan) -> dict[str, Any]:
    """The run's params that say what it trained on: the snapshot, and the plan's scope."""
    return {
        "snapshot_id": data.id,
        "snapshot_digest": data.digest,
        "snapshot_location": data.location,
        "mapping_digest": data.manifest.mapping_digest,
        "training_scope": plan.scope,
        "training_scope_reason": plan.reason,
        "delta_streak": plan.delta_streak,
        **{f"snapshot_{k}": v for k, v in data.manifest.counts.items()},
    }


def _trainer_for(
    data: SnapshotData,
    rows: Dataset,
    model: Any,
    tokenizer: Any,
    fmt: chat.ChatFormat,
    recipe: TrainingRecipe,
    *,
    base: basemodel.ResolvedBase,
    base_cache: Path,
    device: str,
    precision: models.Precision,
    output_dir: Path,
    callbacks: list[TrainerCallback],
) -> Any:
    """The trainer: the rows tokenized, the wiki eval loss picking the checkpoint and stopping
    early (the general loss is the evaluation's to measure, once, on the kept adapter), and the
    distillation term where the recipe has one."""

    def tokenize(split: Dataset) -> Any:
        return chat.tokenize_rows(split.select_columns(["messages"]), tokenizer, fmt)

    train_split = tokenize(rows)
    wiki_eval = data.splits.get("eval")
    has_eval = wiki_eval is not None and len(wiki_eval) > 0
    eval_splits = _eval_splits(wiki_eval, recipe, tokenize) if has_eval else {}
    trainer_callbacks = [
        _metrics_callback(),
        progress.trainer_callback(f"training on {data.id}"),
        *callbacks,
    ]
    if has_eval and recipe.early_stopping_patience:
        trainer_callbacks.append(_early_stopping(recipe.early_stopping_patience))
    distillation = None
    if recipe.general_distillation > 0:
        distillation = _distillation(
            data.splits.get("general_pool") or rows.filter(lambda r: r["kind"] != "wiki"),
            model,
            tokenizer,
            fmt,
            recipe,
            base=base,
            precision=precision,
            device=device,
            cache_dir=base_cache,
        )
    return make_trainer(
        model,
        tokenizer,
        recipe,
        device=device,
        output_dir=output_dir,
        train_dataset=train_split,
        eval_datasets=eval_splits,
        callbacks=trainer_callbacks,
        precision=precision,
        distillation=distillation,
    )


def _distillation(
    general: Dataset,
    model: Any,
    tokenizer: Any,
    fmt: chat.ChatFormat,
    recipe: TrainingRecipe,
    *,
    base: basemodel.ResolvedBase,
    precision: models.Precision,
    device: str,
    cache_dir: Path,
) -> Distillation:
    """The recipe's distillation term over ``general`` (the snapshot's whole general pool where
    it has one, else the mix's general rows) with their bundled answers, since the term
    compares distributions and any fluent answer does; the bare base's top-k log-probabilities
    there are computed once per base, precision and rows and kept under ``cache_dir``."""
    import torch

    encoded = [chat.encode(tokenizer, fmt, row["messages"]) for row in general]

    def compute() -> dict[str, Any]:
        with models.computing_in(precision, device):
            top = models.base_top_log_probs(
                model, encoded, k=DISTILLATION_TOP_K, pad_id=tokenizer.pad_token_id
            )
        log.info("base: top-%d log-probabilities of %d general rows", DISTILLATION_TOP_K, len(top))
        return {
            "ids": torch.cat([ids for ids, _ in top]).to(torch.int32),
            "log_probs": torch.cat([log_probs for _, log_probs in top]),
            "counts": torch.tensor([len(ids) for ids, _ in top]),
        }

    kept = basecache.base_tensors(
        cache_dir,
        basecache.cache_key(base.digest, precision),
        [fmt.template, encoded, DISTILLATION_TOP_K],
        compute,
    )
    counts = kept["counts"].tolist()
    reference = list(
        zip(
            kept["ids"].long().split(counts),
            kept["log_probs"].float().split(counts),
            strict=True,
        )
    )
    return Distillation(
        encoded,
        reference,
        weight=recipe.general_distillation,
        rows=recipe.distillation_rows,
        every=recipe.distillation_every,
        pad_id=tokenizer.pad_token_id,
        seed=recipe.sft["seed"],
    )


def _log_samples(
    data: SnapshotData,
    model: Any,
    tokenizer: Any,
    recipe: TrainingRecipe,
    *,
    precision: models.Precision,
    device: str,
) -> None:
    """A few eval questions (fresh facts first) answered by the trained adapter, logged to the
    run as a table."""
    eval_split = data.splits.get("eval")
    if eval_split is None or not len(eval_split) or not recipe.sample_generations:
        return
    samples = _sample_rows(eval_split, recipe.sample_generations)
    with models.computing_in(precision, device):
        answers = models.generate_answers(
            model,
            tokenizer,
            [row["messages"] for row in samples],
            max_new_tokens=recipe.max_new_tokens,
        )
    tracking.log_sample_generations(
        [
            {
                "question": row["messages"][-2]["content"],
                "reference": row["messages"][-1]["content"],
                "answer": answer,
                "fresh": bool(row.get("fresh")),
                "exact": answer == row["messages"][-1]["content"],
            }
            for row, answer in zip(samples, answers, strict=True)
        ]
    )


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
