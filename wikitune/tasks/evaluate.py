"""Score a candidate adapter and the champion (or the bare base) on the same eval questions, in
one process, decide (``tasks/decision``), and add the numbers to the candidate's MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from wikitune.tasks import basecache, basemodel, snapshots
from wikitune.tasks import model as models
from wikitune.tasks.decision import Decision, Margins, decide
from wikitune.tasks.scoring import (
    PROBE_TOKENS,
    answer_table,
    as_adapter,
    assistant_loss,
    probe_answers,
    score_models,
)

__all__ = ["Evaluation", "evaluate_run", "same_base"]

log = logging.getLogger(__name__)


def same_base(champion_facts: Mapping[str, str], run_params: Mapping[str, str]) -> bool:
    """Whether a champion version (its :func:`registry.version_facts`) and a training run share
    their base model: the same weights' digest (none recorded never matches)."""
    digest = champion_facts.get("base_model_digest")
    return bool(digest) and digest == run_params.get("base_model_digest")


class Evaluation(BaseModel):
    """A candidate run scored against the champion of its source on its snapshot."""

    run_id: str
    source: str
    model_uri: str
    snapshot_id: str
    snapshot_digest: str
    base_model: str
    base_model_spec: str = ""
    base_model_digest: str = ""
    method: str
    # How the candidate was trained: a full or delta retrain (read back by the next one).
    training_scope: str = "full"
    delta_streak: int = 0
    mapping_digest: str = ""
    champion_version: str | None
    decision: Decision
    run_link: str
    prefect_run_url: str = ""
    """The Prefect flow run that trained the candidate, when one did."""


def _snapshot_location(
    params: Mapping[str, str], source: str, tracking_uri: str, snapshots_dir: Path
) -> str:
    """Where this machine reads a training run's snapshot: where the run read it, when that is
    a URL or a directory here, else its copy published to the tracking server."""
    from wikitune.mlflow import exchange

    location = params["snapshot_location"]
    try:
        return snapshots.resolve_snapshot(location, snapshots_dir, tracking_uri)
    except snapshots.SnapshotUnavailable:
        published = exchange.published_snapshot(tracking_uri, source, params["snapshot_id"])
    if published is None:
        raise snapshots.SnapshotUnavailable(
            f"snapshot {params['snapshot_id']} is at {location} on the machine that trained on"
            f" it, and not published to {tracking_uri}"
        )
    return snapshots.resolve_snapshot(published, snapshots_dir, tracking_uri)


def _remembered_probe_answers(
    cache_dir: Path,
    key: str,
    adapter: str,
    name: str | None = None,
    *,
    model: Any,
    tokenizer: Any,
    probes: Sequence[dict[str, Any]],
    batch_size: int,
) -> list[str]:
    """The answers of ``adapter`` (of ``model``) to the probes: generated once per ``key`` (a
    training run and answering precision) and prompt, and kept in ``cache_dir``."""

    def generate(prompts: list[list[dict[str, str]]]) -> list[str]:
        with as_adapter(model, adapter):
            return probe_answers(name or adapter, model, tokenizer, prompts, batch_size=batch_size)

    return basecache.base_answers(
        cache_dir,
        key,
        tokenizer,
        [row["messages"] for row in probes],
        max_new_tokens=PROBE_TOKENS,
        generate=generate,
    )


def _remembered_general_loss(
    cache_dir: Path,
    key: str,
    adapter: str,
    name: str | None = None,
    *,
    model: Any,
    tokenizer: Any,
    general: Sequence[dict[str, Any]],
    batch_size: int,
) -> float:
    """The loss of ``adapter`` (of ``model``; ``BARE_BASE``: the bare base) on the general eval
    rows: computed once per ``key`` (a base or a training run, and the computing precision)
    and rows, and kept in ``cache_dir``."""

    def compute() -> float:
        with as_adapter(model, adapter):
            return assistant_loss(
                model,
                tokenizer,
                [row["messages"] for row in general],
                batch_size=batch_size,
                description=f"{name or adapter}: general loss",
            )

    return basecache.once_per_base(cache_dir, key, tokenizer, general, compute)


def evaluate_run(
    run_id: str,
    *,
    tracking_uri: str,
    workdir: Path,
    margins: Margins,
    device: str | None = None,
    batch_size: int = 32,
    answer_batch_size: int = 64,
    max_new_tokens: int = 64,
    ui_url: str | None = None,
    snapshots_dir: Path | None = None,
    models_dir: Path | None = None,
) -> Evaluation:
    """Score the adapter of training run ``run_id`` and the champion of its source (the bare base
    when there is none) on the run's snapshot, decide, and add the numbers to the run. A run
    trained on another machine reads its snapshot as published to the tracking server, fetched
    into ``snapshots_dir``, and its base as its spec resolves here (``models_dir``)."""
    from peft import PeftModel

    from wikitune.mlflow import registry, tracking

    run = tracking.get_run(tracking_uri, run_id)
    params, tags = run.data.params, run.data.tags
    if tracking.MODEL_URI_TAG not in tags or run.info.status != "FINISHED":
        raise ValueError(f"run {run_id} has no finished, logged adapter to evaluate")
    source = tags[tracking.SOURCE_TAG]
    data = snapshots.read_snapshot(
        _snapshot_location(params, source, tracking_uri, snapshots_dir or workdir / "snapshots")
    )
    device = device or models.default_device()
    quantize = params.get("method") == "qlora-nf4" and models.fourbit_available(device)
    current = registry.champion(tracking_uri, source)
    candidate = registry.download_logged_model(
        tracking_uri, tags[tracking.MODEL_URI_TAG], workdir / "candidate"
    )
    tokenizer = models.load_tokenizer(candidate.tokenizer_dir)
    models_dir = models_dir or workdir / "models"
    base = models.load_base_model(
        basemodel.base_of_run(params, models_dir, tracking_uri), device=device, quantize=quantize
    )
    model = PeftModel.from_pretrained(base, candidate.adapter_dir, adapter_name="candidate")
    general = list(data.splits.get("general_eval") or [])
    probes = list(data.splits.get("general_probe") or [])  # none in older snapshots
    # The probes in the languages the wiki's questions are asked in (all, when none matches).
    languages = {row["lang"] for row in data.splits["eval"]}
    probes = [row for row in probes if row["lang"] in languages] or probes
    # Both models answer in the weights' own dtype, whatever precision the candidate trained
    # in: the server answers that way, and bf16 answers change with what shares their batch.
    precision = models.answer_precision(base)
    log.info("evaluating %s, answering in %s", run_id, precision)
    base_digest = params.get("base_model_digest", "")
    cache_key = basecache.cache_key(base_digest, precision)
    base_answers = None
    if probes:
        with model.disable_adapter():
            base_answers = basecache.base_answers(
                workdir.parent / "base-probe-answers",
                cache_key,
                tokenizer,
                [row["messages"] for row in probes],
                max_new_tokens=PROBE_TOKENS,
                generate=lambda prompts: probe_answers(
                    "base", model, tokenizer, prompts, batch_size=answer_batch_size
                ),
            )
    loss_of = partial(
        _remembered_general_loss,
        model=model,
        tokenizer=tokenizer,
        general=general,
        batch_size=batch_size,
    )
    base_general_loss = (
        loss_of(workdir.parent / "base-general-loss", cache_key, models.BARE_BASE, "base")
        if general
        else None
    )

    # An adapter's probe answers and general loss are kept per training run: a champion's were
    # worked out when it was the candidate.
    def run_key(training_run: str) -> str:
        return f"run:{training_run}+{precision}"

    remembered = partial(
        _remembered_probe_answers,
        workdir.parent / "adapter-probe-answers",
        model=model,
        tokenizer=tokenizer,
        probes=probes,
        batch_size=answer_batch_size,
    )
    remembered_loss = partial(loss_of, workdir.parent / "adapter-general-loss")
    known = (
        {"candidate": remembered(run_key(run_id), "candidate")} if base_answers is not None else {}
    )
    known_losses = {"candidate": remembered_loss(run_key(run_id), "candidate")} if general else {}
    # Both models answer the same questions with the same settings; where they share the
    # base, the champion as a second adapter of the loaded base.
    eval_rows = list(data.splits["eval"])
    score = partial(
        score_models,
        eval_rows=eval_rows,
        general_rows=general,
        probe_rows=probes,
        base_probe_answers=base_answers,
        known_probe_answers=known,
        known_general_losses=known_losses,
        base_general_loss=base_general_loss,
        batch_size=batch_size,
        answer_batch_size=answer_batch_size,
        max_new_tokens=max_new_tokens,
    )
    if current is None:
        candidate_scores, champion_scores = score(
            {"candidate": "candidate", "base": models.BARE_BASE}, model, tokenizer
        )
    else:
        name = registry.registered_model_name(source)
        held = registry.download_logged_model(
            tracking_uri, f"models:/{name}/{current.version}", workdir / "champion"
        )
        champion_name = f"version {current.version}"
        facts = registry.version_facts(tracking_uri, current)
        if same_base(facts, params):
            model.load_adapter(held.adapter_dir, adapter_name="champion")
            if base_answers is not None and current.run_id:
                known[champion_name] = remembered(
                    run_key(current.run_id), "champion", champion_name
                )
            if general and current.run_id:
                known_losses[champion_name] = remembered_loss(
                    run_key(current.run_id), "champion", champion_name
                )
            candidate_scores, champion_scores = score(
                {"candidate": "candidate", champion_name: "champion"}, model, tokenizer
            )
        else:
            # A champion on another base answers with its own base, tokenizer and template.
            (candidate_scores,) = score({"candidate": None}, model, tokenizer)
            other = models.load_base_model(
                basemodel.base_of_run(facts, models_dir, tracking_uri),
                device=device,
                quantize=quantize,
            )
            (champion_scores,) = score(
                {champion_name: None},
                PeftModel.from_pretrained(other, held.adapter_dir),
                models.load_tokenizer(held.tokenizer_dir),
            )
    decision = decide(
        candidate_scores, champion_scores, margins, base_general_loss=base_general_loss
    )
    evaluation = Evaluation(
        run_id=run_id,
        source=source,
        model_uri=tags[tracking.MODEL_URI_TAG],
        snapshot_id=params["snapshot_id"],
        snapshot_digest=params["snapshot_digest"],
        base_model=params["base_model"],
        base_model_spec=params.get("base_model_spec", params["base_model"]),
        base_model_digest=base_digest,
        method=params.get("method", "lora"),
        training_scope=params.get("training_scope", "full"),
        delta_streak=int(params.get("delta_streak", 0)),
        mapping_digest=params.get("mapping_digest", ""),
        champion_version=str(current.version) if current else None,
        decision=decision,
        run_link=tracking.run_link(ui_url, run),
        prefect_run_url=tags.get("prefect.flow_run_url", ""),
    )
    tracking.log_evaluation(
        tracking_uri,
        run_id,
        metrics={
            **{f"candidate_{k}": v for k, v in decision.candidate.items()},
            **{f"champion_{k}": v for k, v in decision.champion.items()},
            "fact_gain": decision.gain,
            "fact_gain_ci_low": decision.ci_low,
            "fact_gain_ci_high": decision.ci_high,
            **({"base_general_loss": base_general_loss} if base_general_loss is not None else {}),
        },
        table=decision.table(),
        answers=answer_table(eval_rows, candidate_scores, champion_scores),
        report=(
            f"Adapter of {evaluation.base_model_spec or evaluation.base_model} trained on snapshot"
            f" {evaluation.snapshot_id}, evaluated against {decision.champion_name} on the same"
            f" held-out questions.\n\n{decision.markdown()}"
        ),
        tags={
            "wikitune.compared_against": decision.champion_name,
            "wikitune.decision": "promote" if decision.promote else "reject",
        },
    )
    return evaluation
