"""The retrain flow: train an adapter on a snapshot, on a machine of the ``gpu`` work pool.

It reads only the snapshot's files and writes the adapter and the MLflow run; it never opens the
store. Its result (the MLflow run id and the adapter's location) is persisted, so a parent flow
that starts it with ``run_deployment`` can read it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from wikitune.blocks.recipe import TrainingRecipe
from wikitune.config import load_settings
from wikitune.flows.naming import artifact_key
from wikitune.mlflow import registry
from wikitune.tasks import train as training

__all__ = ["retrain"]

train_adapter = task(training.train_adapter, name="train-adapter", cache_policy=NO_CACHE)


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
    home: str | None = None,
) -> training.TrainResult:
    """Train a LoRA adapter (QLoRA where 4-bit runs) on ``snapshot`` (an id under the snapshots
    directory, a directory, or a URL); return the MLflow run id and where the adapter is."""
    settings = load_settings(home)
    logger = get_run_logger()
    if recipe is None:
        path = recipe_file or settings.recipe_path
        recipe = TrainingRecipe.from_file(path) if path else TrainingRecipe()
    location = training.resolve_snapshot(snapshot, settings.snapshots_dir)
    manifest = training.read_manifest(location)
    init_adapter = None
    if recipe.warm_start == "champion":
        init_adapter = registry.champion_adapter(
            settings.tracking_uri,
            manifest.get("source", "wiki"),
            settings.runs_dir / "champions" / manifest["id"],
        )
    logger.info(
        "training on snapshot %s from %s", manifest["id"], init_adapter or "the bare base model"
    )
    result = train_adapter(
        snapshot=location,
        base_model=base_model or settings.base_model,
        recipe=recipe,
        runs_dir=settings.runs_dir,
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.mlflow_artifacts_dir,
        init_adapter=init_adapter,
        device=device or settings.device,
    )
    lines = [
        f"## Adapter trained on snapshot `{result.snapshot_id}`",
        "",
        f"- method: **{result.method}** on `{result.base_model}`",
        f"- MLflow run: `{result.run_id}` (model `{result.model_uri}`)",
        f"- adapter: `{result.adapter_dir}`",
        f"- steps: {result.global_step}" + (" (resumed)" if result.resumed_from else ""),
        "",
        "| loss | before | after |",
        "| --- | ---: | ---: |",
    ]
    for name in ("wiki", "general"):
        before = result.metrics.get(f"base_eval_{name}_loss")
        after = result.metrics.get(f"final_eval_{name}_loss")
        if before is not None and after is not None:
            lines.append(f"| {name} eval | {before:.4f} | {after:.4f} |")
    create_markdown_artifact(
        key=artifact_key("retrain", result.source),
        markdown="\n".join(lines),
        description="Latest trained adapter",
    )
    return result
