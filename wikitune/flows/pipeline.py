"""The whole cycle: sync, build, and when enough has changed (or when forced) snapshot, retrain,
evaluate and promote. Runs whole in one process, in Prefect's ephemeral mode too."""

from __future__ import annotations

from functools import partial

from prefect import flow, get_run_logger
from pydantic import BaseModel

from wikitune.blocks.recipe import TrainingRecipe
from wikitune.blocks.source import WikiSource
from wikitune.config import load_settings
from wikitune.flows.build import build, snapshot
from wikitune.flows.naming import run_name
from wikitune.flows.retrain import RetrainResult, retrain
from wikitune.flows.sync import sync
from wikitune.storage import Store

__all__ = ["CycleSummary", "pipeline"]


class CycleSummary(BaseModel):
    """What one cycle did: the sync and build counts, and the retrain if there was one."""

    source: str
    sync_counts: dict[str, int]
    build_counts: dict[str, int]
    changed_since_trained: int
    threshold: int
    retrained: bool
    snapshot_id: str | None = None
    retrain: RetrainResult | None = None


@flow(name="pipeline", flow_run_name=partial(run_name, "pipeline"))
def pipeline(
    source: WikiSource | None = None,
    force: bool = False,
    base_model: str | None = None,
    recipe: TrainingRecipe | None = None,
    home: str | None = None,
) -> CycleSummary:
    """One cycle. Retrains when the pairs added or changed since the last trained snapshot reach
    the threshold, or with ``force``."""
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
    if not (built.retrain_due or force):
        logger.info(
            "%d pairs changed since the last trained snapshot, below the threshold %d: no retrain",
            built.changed_since_trained,
            built.threshold,
        )
        return summary
    frozen = snapshot(source=synced.source, home=home)
    result = retrain(snapshot=frozen.id, base_model=base_model, recipe=recipe, home=home)
    with Store(settings.store_path) as store:
        store.mark_trained(frozen.id)
    return summary.model_copy(
        update={"retrained": True, "snapshot_id": frozen.id, "retrain": result}
    )
