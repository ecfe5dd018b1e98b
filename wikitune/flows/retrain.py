"""The retrain flow: train an adapter on a snapshot, on a machine of the ``gpu`` work pool.

It reads only the snapshot's files (fetched from the MLflow server when it was published there)
and writes the adapter and the MLflow run; it never opens the store. Its result (the MLflow run
id, the adapter's location and the promotion) is persisted, and, with a tracking server, logged
with the training run, so a parent flow on another machine that starts it with
``run_deployment`` can read it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from wikitune.config import Machine, Settings, is_tracking_server, load_settings
from wikitune.deployments.locks import promotions_lock
from wikitune.flows.naming import artifact_key
from wikitune.flows.runtime import (
    markdown_artifact,
    progress_artifact,
    run_logger,
    step,
    table_artifact,
    update_progress_artifact,
)
from wikitune.mlflow import exchange, registry, tracking
from wikitune.tasks import basemodel, snapshots
from wikitune.tasks import evaluate as evaluation
from wikitune.tasks import promotion as promotions
from wikitune.tasks import train as training
from wikitune.tasks.decision import Margins
from wikitune.tasks.plan import plan_training
from wikitune.tasks.recipe import TrainingRecipe, chosen_recipe, recipe_origin

__all__ = ["RetrainResult", "evaluate_candidate", "promote_candidate", "retrain"]

train_adapter = task(training.train_adapter, name="train-adapter", cache_policy=NO_CACHE)


class RetrainResult(training.TrainResult):
    """The training's result, and what the registry made of it (None when not promoted)."""

    promotion: promotions.Promotion | None = None


@task(name="evaluate-candidate", cache_policy=NO_CACHE)
def evaluate_task(run_id: str, machine: Machine, margins: Margins) -> evaluation.Evaluation:
    """Score the candidate and the champion on the same questions; publish the table."""
    result = evaluation.evaluate_run(
        run_id,
        tracking_uri=machine.tracking_uri,
        workdir=machine.runs_dir / "evaluations" / run_id,
        margins=margins,
        device=machine.device,
        ui_url=machine.mlflow_ui_url,
        snapshots_dir=machine.snapshots_dir,
        models_dir=machine.models_dir,
    )
    decision = result.decision
    verdict = "promote" if decision.promote else "reject"
    table_artifact(
        key=artifact_key("evaluation", result.source),
        table=decision.table(),
        description=(
            f"**{verdict}** candidate run [{run_id}]({result.run_link}) against"
            f" {decision.champion_name}: {decision.gain_label()} gain {decision.gain:+.4f},"
            f" 95% interval"
            f" [{decision.ci_low:+.4f}, {decision.ci_high:+.4f}]. "
            + " ".join(f"{reason}." for reason in decision.reasons)
        ),
    )
    run_logger().info("evaluation of %s: %s", run_id, "; ".join(decision.reasons))
    return result


@task(name="promote-candidate", cache_policy=NO_CACHE)
def promote_task(result: evaluation.Evaluation, machine: Machine) -> promotions.Promotion:
    """Register the candidate; move the champion alias if it won and nobody moved it first."""
    promotion = promotions.promote(
        result,
        tracking_uri=machine.tracking_uri,
        lock=promotions_lock(machine.tracking_uri, machine.registry_lock),
    )
    run_logger().info("version %s of %s: %s", promotion.version, result.source, promotion.outcome)
    link = registry.version_link(machine.mlflow_ui_url, result.source, promotion.version)
    decision = result.decision
    markdown_artifact(
        key=artifact_key("promotion", result.source),
        markdown="\n".join(
            [
                f"## Version [{promotion.version}]({link}) of"
                f" `{registry.registered_model_name(result.source)}`: **{promotion.outcome}**",
                "",
                f"Candidate run [{result.run_id}]({result.run_link}) against"
                f" {decision.champion_name}; the champion is now version"
                f" {promotion.champion_version or '(none)'}.",
                "",
                decision.markdown(),
            ]
        ),
        description=f"Latest registry decision for {result.source}",
    )
    return promotion


@flow(name="evaluate", flow_run_name="evaluate-{run_id}")
def evaluate_candidate(
    run_id: str, margins: Margins | None = None, home: str | None = None
) -> evaluation.Evaluation:
    """Score a trained adapter against the champion; the registry is not changed."""
    settings = load_settings(home)
    return step(evaluate_task, run_id, settings.machine(), margins or settings.margins())


def _evaluate_and_promote(
    run_id: str, settings: Settings, margins: Margins | None = None
) -> promotions.Promotion:
    """Evaluate and promote a trained adapter, unless its run is already a decided version:
    then that decision, with nothing evaluated or registered again."""
    try:
        run = tracking.get_run(settings.tracking_uri, run_id)
    except LookupError:
        run = None  # the evaluation says so
    source = run.data.tags.get(tracking.SOURCE_TAG) if run is not None else None
    known = promotions.already_decided(settings.tracking_uri, source, run_id) if source else None
    if known is not None:
        run_logger().info(
            "run %s is already version %s of %s (%s): nothing evaluated or registered",
            run_id,
            known.version,
            source,
            known.outcome,
        )
        return known
    machine = settings.machine()
    evaluated = step(evaluate_task, run_id, machine, margins or settings.margins())
    return step(promote_task, evaluated, machine)  # type: ignore[no-any-return]


@flow(name="promote", flow_run_name="promote-{run_id}")
def promote_candidate(
    run_id: str, margins: Margins | None = None, home: str | None = None
) -> promotions.Promotion:
    """Evaluate a trained adapter, register it, and make it champion if it wins (a run that
    is already a version keeps its decision). ``margins`` default to WIKITUNE_PROMOTE_*."""
    return _evaluate_and_promote(run_id, load_settings(home), margins)


def _starting_point(
    settings: Settings,
    recipe: TrainingRecipe,
    base: basemodel.ResolvedBase,
    source: str,
    snapshot_id: str,
) -> tuple[str | None, str, Mapping[str, str] | None]:
    """The adapter to warm-start from (the champion's, when it was trained on this very base),
    a sentence saying why training starts where it does, and that champion's facts (its run's
    params and its version's tags)."""
    if recipe.warm_start == "base":
        return None, "the bare base model (the recipe says warm_start: base)", None
    current = registry.champion(settings.tracking_uri, source)
    if current is None:
        return None, "the bare base model (no champion yet)", None
    facts = registry.version_facts(settings.tracking_uri, current)
    if not evaluation.same_base(facts, base.params()):
        theirs = facts.get("base_model_spec") or facts.get("base_model", "?")
        digest = facts.get("base_model_digest", "no recorded digest")[:23]
        reason = (
            f"the bare base model: champion version {current.version} was trained on"
            f" {theirs} ({digest}), not on {base.spec} ({base.digest[:23]})"
        )
        return None, reason, None
    # The version just checked, not the alias: it may move before the download.
    adapter = registry.version_adapter(
        settings.tracking_uri,
        source,
        str(current.version),
        settings.runs_dir / "champions" / snapshot_id,
    )
    reason = f"champion version {current.version} (same base, {base.digest[:23]})"
    return adapter, reason, facts


def _prefect_run_tags() -> dict[str, str]:
    """Tags that lead from the MLflow run to the Prefect run that trained it."""
    from prefect.settings import PREFECT_UI_URL

    ui_url = PREFECT_UI_URL.value()
    tags = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        # The run's page, as Prefect's own "View at" log line links it.
        "prefect.flow_run_url": f"{ui_url}/runs/flow-run/{flow_run.id}" if ui_url else "",
        "mlflow.source.name": f"prefect flow {flow_run.flow_name or 'retrain'}",
        "mlflow.source.type": "JOB",
    }
    return {k: v for k, v in tags.items() if v}


def _training_progress(source: str, tracking_uri: str, ui_url: str | None) -> Any:
    """A trainer callback that keeps a Prefect progress artifact (steps, loss, ETA, the MLflow
    run's link) and logs the same line to the run, at most every 15 seconds."""
    from transformers import TrainerCallback

    logger = run_logger()

    class PrefectProgress(TrainerCallback):
        def __init__(self) -> None:
            self.artifact: Any = None
            self.run = ""
            self.loss: float | None = None
            self.started = self.shown = 0.0

        def run_started(self, run_id: str) -> None:
            link = tracking.run_link(ui_url, tracking.get_run(tracking_uri, run_id))
            self.run = f"MLflow run [{run_id}]({link})"

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.started = time.monotonic()
            self.artifact = progress_artifact(
                progress=0.0,
                key=artifact_key("training", source),
                description=f"training started; {self.run}",
            )

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            now, total = time.monotonic(), max(state.max_steps, 1)
            if now - self.shown < 15 and state.global_step < total:
                return
            self.shown = now
            left = (now - self.started) / max(state.global_step, 1) * (total - state.global_step)
            loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
            line = f"step {state.global_step}/{total}{loss}, about {left / 60:.1f} min left"
            logger.info("training: %s", line)
            update_progress_artifact(
                self.artifact,
                progress=100.0 * state.global_step / total,
                description=f"{line}; {self.run}",
            )

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # Early stopping ends a training before its last step: it is done all the same.
            total = max(state.max_steps, 1)
            early = f", stopped early of {total}" if state.global_step < total else ""
            loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
            line = f"trained {state.global_step} steps{early}{loss}"
            logger.info("training: %s", line)
            update_progress_artifact(
                self.artifact, progress=100.0, description=f"{line}; {self.run}"
            )

    return PrefectProgress()


def _retrain_run_name() -> str:
    snapshot = str(flow_run.parameters.get("snapshot", "snapshot"))
    return f"retrain-{snapshot.rstrip('/').rsplit('/', 1)[-1]}"


@flow(name="retrain", flow_run_name=_retrain_run_name, persist_result=True)
def retrain(
    snapshot: str,
    base_model: str | None = None,
    recipe: TrainingRecipe | None = None,
    recipe_file: str | None = None,
    device: str | None = None,
    promote: bool = True,
    margins: Margins | None = None,
    full: bool = False,
    tracking_uri: str | None = None,
    home: str | None = None,
) -> RetrainResult:
    """Train a LoRA adapter (QLoRA where 4-bit runs) on ``snapshot`` (an id under the snapshots
    directory, a directory, or a URL); then, with ``promote``, evaluate it against the champion
    and register it, deciding with ``margins`` (default: WIKITUNE_PROMOTE_*). Returns the MLflow
    run id, where the adapter is, and the promotion.

    On the champion's adapter it trains on the pairs fresh to the champion, a replay sample of
    stable pairs and general rows (a delta retrain); on the whole snapshot when there is no
    champion on this base, the mapping changed, ``full`` is set, or the recipe's
    ``full_retrain_every`` says so. ``tracking_uri`` (a deployment's parameter) names the
    MLflow tracking server over the worker's WIKITUNE_MLFLOW_TRACKING_URI."""
    settings = load_settings(home, mlflow_tracking_uri=tracking_uri)
    logger = run_logger()
    base_spec = base_model or settings.base_model
    if deployment.id and not is_tracking_server(settings.tracking_uri):
        # A worker's own SQLite file would hide the run, the adapter and the outcome from the
        # flow run that started it and from every other machine.
        raise training.TrainingFailed(
            f"a deployed retrain needs an MLflow tracking server, and this worker's is"
            f" {settings.tracking_uri}: set WIKITUNE_MLFLOW_TRACKING_URI to the server's URL"
            " (the one `wikitune up` started) in the worker's environment"
        )
    location = snapshots.resolve_snapshot(snapshot, settings.snapshots_dir, settings.tracking_uri)
    manifest = snapshots.read_manifest(location)
    base = basemodel.resolve_base_model(base_spec, settings.models_dir, settings.tracking_uri)
    if recipe is None:
        # By what the base is, not how it is spelt: a published base is a directory here.
        path, on = recipe_file or settings.recipe_path, device or settings.device
        recipe = chosen_recipe(base.path, path, on)
        logger.info("training %s with %s", base_spec, recipe_origin(base.path, path, on))
    init_adapter, warm_start, champion_tags = _starting_point(
        settings, recipe, base, manifest.source, manifest.id
    )
    plan = plan_training(manifest, recipe, champion_tags, full=full)
    logger.info(
        "training on snapshot %s from %s: %s retrain (%s)",
        manifest.id,
        warm_start,
        plan.scope,
        plan.reason,
    )
    shown = _training_progress(manifest.source, settings.tracking_uri, settings.mlflow_ui_url)
    result = step(
        train_adapter,
        snapshot=location,
        base_model=base,
        recipe=recipe,
        runs_dir=settings.runs_dir,
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifacts_dir,
        init_adapter=init_adapter,
        warm_start=warm_start,
        plan=plan,
        device=device or settings.device,
        callbacks=[shown],
        on_run_started=shown.run_started,
        run_tags=_prefect_run_tags(),
    )
    lines = [
        f"## Adapter trained on snapshot `{result.snapshot_id}`",
        "",
        f"- method: **{result.method}** on `{result.base_model_spec}`"
        f" ({result.base_model_digest[:23]}), {result.loss_mode} loss",
        f"- started from: {result.warm_start}",
        f"- trained on: {result.plan.scope} ({result.plan.reason}):"
        f" {result.train_counts.get('train_fresh_rows', 0)} fresh,"
        f" {result.train_counts.get('train_stable_rows', 0)} stable and"
        f" {result.train_counts.get('train_general_rows', 0)} general rows",
        f"- MLflow run: `{result.run_id}` (model `{result.model_uri}`)",
        f"- adapter: `{result.adapter_dir}`",
        f"- steps: {result.global_step}" + (" (resumed)" if result.resumed_from else ""),
        "",
        "| eval loss at the kept checkpoint | value |",
        "| --- | ---: |",
    ]
    for split in ("wiki", "fresh"):
        after = result.metrics.get(f"final_eval_{split}_loss")
        if after is not None:
            lines.append(f"| {split} | {after:.4f} |")
    markdown_artifact(
        key=artifact_key("retrain", result.source),
        markdown="\n".join(lines),
        description="Latest trained adapter",
    )
    promotion = None
    if promote:
        promotion = _evaluate_and_promote(result.run_id, settings, margins)
    outcome = RetrainResult(**result.model_dump(), promotion=promotion)
    if flow_run.id and is_tracking_server(settings.tracking_uri):
        # For a parent flow run on another machine, which cannot read this worker's results.
        exchange.log_outcome(
            settings.tracking_uri, result.run_id, str(flow_run.id), outcome.model_dump(mode="json")
        )
    return outcome
