"""The retrain flow: train an adapter on a snapshot, on a machine of the ``gpu`` work pool.

It reads only the snapshot's files and writes the adapter and the MLflow run; it never opens the
store. Its result (the MLflow run id and the adapter's location) is persisted, so a parent flow
that starts it with ``run_deployment`` can read it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from wikitune.blocks.recipe import TrainingRecipe, default_recipe
from wikitune.config import Settings, load_settings
from wikitune.flows.naming import artifact_key
from wikitune.mlflow import registry
from wikitune.tasks import basemodel
from wikitune.tasks import evaluate as evaluation
from wikitune.tasks import train as training

__all__ = ["RetrainResult", "evaluate_candidate", "promote_candidate", "retrain"]

train_adapter = task(training.train_adapter, name="train-adapter", cache_policy=NO_CACHE)


class RetrainResult(training.TrainResult):
    """The training's result, and what the registry made of it (None when not promoted)."""

    promotion: evaluation.Promotion | None = None


def _margins(settings: Settings) -> evaluation.Margins:
    return evaluation.Margins(
        min_gain=settings.promote_min_gain,
        stable_tolerance=settings.promote_stable_tolerance,
        general_loss_tolerance=settings.promote_general_loss_tolerance,
    )


@task(name="evaluate-candidate", cache_policy=NO_CACHE)
def evaluate_task(run_id: str, home: str) -> evaluation.Evaluation:
    """Score the candidate and the champion on the same questions; publish the table."""
    settings = load_settings(home)
    result = evaluation.evaluate_run(
        run_id,
        tracking_uri=settings.tracking_uri,
        workdir=settings.runs_dir / "evaluations" / run_id,
        margins=_margins(settings),
        device=settings.device,
        ui_url=settings.mlflow_ui_url,
    )
    decision = result.decision
    verdict = "promote" if decision.promote else "reject"
    create_table_artifact(
        key=artifact_key("evaluation", result.source),
        table=decision.table(),
        description=(
            f"**{verdict}** candidate run [{run_id}]({result.run_link}) against"
            f" {decision.champion_name}: F1 gain {decision.f1_gain:+.4f}, 95% interval"
            f" [{decision.ci_low:+.4f}, {decision.ci_high:+.4f}]. "
            + " ".join(f"{reason}." for reason in decision.reasons)
        ),
    )
    get_run_logger().info("evaluation of %s: %s", run_id, "; ".join(decision.reasons))
    return result


@task(name="promote-candidate", cache_policy=NO_CACHE)
def promote_task(result: evaluation.Evaluation, home: str) -> evaluation.Promotion:
    """Register the candidate; move the champion alias if it won and nobody moved it first."""
    settings = load_settings(home)
    promotion = evaluation.promote(
        result, tracking_uri=settings.tracking_uri, lock_path=settings.registry_lock
    )
    get_run_logger().info(
        "version %s of %s: %s", promotion.version, result.source, promotion.outcome
    )
    link = registry.version_link(settings.mlflow_ui_url, result.source, promotion.version)
    decision = result.decision
    create_markdown_artifact(
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
def evaluate_candidate(run_id: str, home: str | None = None) -> evaluation.Evaluation:
    """Score a trained adapter against the champion; the registry is not changed."""
    return evaluate_task(run_id, str(load_settings(home).home))


@flow(name="promote", flow_run_name="promote-{run_id}")
def promote_candidate(run_id: str, home: str | None = None) -> evaluation.Promotion:
    """Evaluate a trained adapter, register it, and make it champion if it wins."""
    home = str(load_settings(home).home)
    return promote_task(evaluate_task(run_id, home), home)


def _starting_point(
    settings: Settings,
    recipe: TrainingRecipe,
    base: basemodel.ResolvedBase,
    source: str,
    snapshot_id: str,
) -> tuple[str | None, str]:
    """The adapter to warm-start from (the champion's, when it was trained on this very base)
    and a sentence saying why training starts where it does."""
    if recipe.warm_start == "base":
        return None, "the bare base model (the recipe says warm_start: base)"
    current = registry.champion(settings.tracking_uri, source)
    if current is None:
        return None, "the bare base model (no champion yet)"
    if not evaluation.same_base(current.tags, base.params()):
        theirs = current.tags.get("base_model_spec") or current.tags.get("base_model", "?")
        digest = current.tags.get("base_model_digest", "no recorded digest")[:23]
        return None, (
            f"the bare base model: champion version {current.version} was trained on"
            f" {theirs} ({digest}), not on {base.spec} ({base.digest[:23]})"
        )
    # The version just checked, not the alias: it may move before the download.
    adapter = registry.version_adapter(
        settings.tracking_uri,
        source,
        str(current.version),
        settings.runs_dir / "champions" / snapshot_id,
    )
    return adapter, f"champion version {current.version} (same base, {base.digest[:23]})"


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
    home: str | None = None,
) -> RetrainResult:
    """Train a LoRA adapter (QLoRA where 4-bit runs) on ``snapshot`` (an id under the snapshots
    directory, a directory, or a URL); then, with ``promote``, evaluate it against the champion
    and register it. Returns the MLflow run id, where the adapter is, and the promotion."""
    settings = load_settings(home)
    logger = get_run_logger()
    base_spec = base_model or settings.base_model
    if recipe is None:
        path = recipe_file or settings.recipe_path
        recipe = TrainingRecipe.from_file(path) if path else default_recipe(base_spec)
    location = training.resolve_snapshot(snapshot, settings.snapshots_dir)
    manifest = training.read_manifest(location)
    base = basemodel.resolve_base_model(base_spec, settings.models_dir)
    init_adapter, warm_start = _starting_point(
        settings, recipe, base, manifest.get("source", "wiki"), manifest["id"]
    )
    logger.info("training on snapshot %s from %s", manifest["id"], warm_start)
    result = train_adapter(
        snapshot=location,
        base_model=base,
        recipe=recipe,
        runs_dir=settings.runs_dir,
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifacts_dir,
        init_adapter=init_adapter,
        warm_start=warm_start,
        device=device or settings.device,
    )
    lines = [
        f"## Adapter trained on snapshot `{result.snapshot_id}`",
        "",
        f"- method: **{result.method}** on `{result.base_model_spec}`"
        f" ({result.base_model_digest[:23]}), {result.loss_mode} loss",
        f"- started from: {result.warm_start}",
        f"- MLflow run: `{result.run_id}` (model `{result.model_uri}`)",
        f"- adapter: `{result.adapter_dir}`",
        f"- steps: {result.global_step}" + (" (resumed)" if result.resumed_from else ""),
        "",
        "| eval loss at the kept checkpoint | value |",
        "| --- | ---: |",
    ]
    after = result.metrics.get("final_eval_wiki_loss")
    if after is not None:
        lines.append(f"| wiki | {after:.4f} |")
    create_markdown_artifact(
        key=artifact_key("retrain", result.source),
        markdown="\n".join(lines),
        description="Latest trained adapter",
    )
    promotion = None
    if promote:
        home = str(settings.home)
        promotion = promote_task(evaluate_task(result.run_id, home), home)
    return RetrainResult(**result.model_dump(), promotion=promotion)
