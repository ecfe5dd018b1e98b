"""The whole cycle: sync, build, and when enough has changed (or when asked) snapshot, retrain,
evaluate and promote. Runs whole in one process (Prefect's ephemeral mode too), or hands the
retrain to a deployment on the ``gpu`` work pool."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import BaseModel

from wikitune.blocks.recipe import TrainingRecipe
from wikitune.blocks.source import WikiSource
from wikitune.config import load_settings
from wikitune.flows.build import build, snapshot
from wikitune.flows.naming import artifact_key, source_name
from wikitune.flows.retrain import RetrainResult, retrain
from wikitune.flows.sync import sync
from wikitune.storage import Store

__all__ = [
    "DATASET_READY",
    "CycleSummary",
    "RetrainDeploymentFailed",
    "RetrainWhen",
    "pipeline",
]

DATASET_READY = "wikitune.dataset.ready"
"""The event a cycle emits when the retrain threshold is reached and it does not retrain itself."""

RetrainWhen = Literal["threshold", "new-data", "always", "never"]


class CycleSummary(BaseModel):
    """What one cycle did: the sync and build counts, and the retrain if there was one."""

    source: str
    sync_counts: dict[str, int]
    build_counts: dict[str, int]
    changed_since_trained: int
    threshold: int
    retrained: bool
    dataset_ready_emitted: bool = False
    snapshot_id: str | None = None
    retrain: RetrainResult | None = None


class RetrainDeploymentFailed(RuntimeError):
    """The retrain deployment's run ended in a state other than Completed."""


def _retrain_due(when: RetrainWhen, changed: int, threshold: int) -> bool:
    return {
        "threshold": changed >= threshold,
        "new-data": changed > 0,
        "always": True,
        "never": False,
    }[when]


def _pipeline_run_name() -> str:
    mode = flow_run.parameters.get("retrain_when", "threshold")
    prefix = "poll" if mode == "never" else "cycle"
    return f"{prefix}-{source_name(flow_run.parameters.get('source'))}"


def _retrain_on_deployment(
    deployment: str, parameters: dict[str, object], snapshot_id: str
) -> RetrainResult:
    """Run the retrain deployment as a child of this flow run and read its persisted result."""
    child = run_deployment(
        deployment,
        parameters=parameters,
        flow_run_name=f"retrain-{snapshot_id}",
        as_subflow=True,
        timeout=None,
    )
    state = child.state
    if state is None or not state.is_completed():
        message = state.message if state is not None else "no state"
        raise RetrainDeploymentFailed(
            f"retrain run {child.name} on {deployment} ended"
            f" {state.name if state else 'unknown'}: {message}"
        )
    result = state.result()
    return result if isinstance(result, RetrainResult) else RetrainResult.model_validate(result)


@flow(name="pipeline", flow_run_name=_pipeline_run_name)
def pipeline(
    source: WikiSource | None = None,
    retrain_when: RetrainWhen = "threshold",
    base_model: str | None = None,
    recipe: TrainingRecipe | None = None,
    retrain_deployment: str | None = None,
    home: str | None = None,
) -> CycleSummary:
    """One cycle: sync the wiki, build QA pairs, then retrain according to ``retrain_when``:

    - ``threshold``: when the pairs added or changed since the last trained snapshot reach
      WIKITUNE_RETRAIN_THRESHOLD;
    - ``new-data``: when any pair was added or changed since then (the nightly retrain);
    - ``always``: whatever changed (``wikitune run --force``);
    - ``never``: sync and build only; at the threshold, emit ``wikitune.dataset.ready`` so the
      data-ready automation starts a retrain cycle.

    With ``retrain_deployment`` (e.g. ``retrain/gpu``) the training, evaluation and promotion
    run as that deployment on its work pool; otherwise in this process.
    """
    logger = get_run_logger()
    settings = load_settings(home)
    home = str(settings.home)
    synced = sync(source=source, home=home)
    built = build(source=synced.source, home=home)
    summary = CycleSummary(
        source=synced.source,
        sync_counts=synced.counts,
        build_counts=built.counts,
        changed_since_trained=built.changed_since_trained,
        threshold=built.threshold,
        retrained=False,
    )
    if retrain_when == "never":
        if built.retrain_due:
            emit_event(
                event=DATASET_READY,
                resource={
                    "prefect.resource.id": f"wikitune.source.{artifact_key('wiki', synced.source)}",
                    "prefect.resource.name": synced.source,
                },
                payload={
                    "changed_since_trained": built.changed_since_trained,
                    "threshold": built.threshold,
                    "active_pairs": built.active_pairs,
                },
            )
            logger.info(
                "%d pairs changed since the last trained snapshot (threshold %d): emitted %s",
                built.changed_since_trained,
                built.threshold,
                DATASET_READY,
            )
            summary.dataset_ready_emitted = True
        return summary
    if not _retrain_due(retrain_when, built.changed_since_trained, built.threshold):
        logger.info(
            "%d pairs changed since the last trained snapshot (threshold %d, retrain when %s):"
            " no retrain",
            built.changed_since_trained,
            built.threshold,
            retrain_when,
        )
        return summary
    frozen = snapshot(source=synced.source, home=home)
    if retrain_deployment:
        # The worker may be on another machine: it gets the snapshot's files, not the store.
        parameters: dict[str, object] = {"snapshot": frozen.path}
        if base_model:
            parameters["base_model"] = base_model
        if recipe is not None:
            parameters["recipe"] = recipe
        result = _retrain_on_deployment(retrain_deployment, parameters, frozen.id)
    else:
        result = retrain(snapshot=frozen.id, base_model=base_model, recipe=recipe, home=home)
    with Store(settings.store_path) as store:
        store.mark_trained(frozen.id)
    return summary.model_copy(
        update={"retrained": True, "snapshot_id": frozen.id, "retrain": result}
    )
