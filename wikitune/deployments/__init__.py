"""Work pools, deployments, schedules and the data-ready automation, applied to a Prefect server
by ``wikitune deploy``. Applying twice changes nothing: pools are updated, deployments replaced
by name, and each deployment's automation is recreated from its trigger."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from wikitune.config import source_slug
from wikitune.deployments import locks
from wikitune.tasks.source import WikiSource

__all__ = [
    "GPU_RETRAIN",
    "POOLS",
    "RETRAIN_CYCLE",
    "SYNC",
    "Applied",
    "DeployOptions",
    "apply",
]

POOLS: dict[str, tuple[int | None, str]] = {
    "cpu": (None, "wikitune's bookkeeping: sync the wiki, build QA pairs, snapshot, orchestrate."),
    "gpu": (1, "wikitune's training and evaluation; one run at a time per pool."),
}
SYNC = "pipeline/sync-every-15-minutes"
RETRAIN_CYCLE = "pipeline/retrain"
GPU_RETRAIN = "retrain/gpu"


class DeployOptions(BaseModel):
    """What ``wikitune deploy`` lets a user choose."""

    timezone: str = "UTC"
    sync_minutes: float = 15
    nightly_cron: str = "0 2 * * *"
    nightly_retrain_when: str = "new-data"
    base_model: str | None = None
    base_published_from: str | None = None
    """The local base (a directory or ``.gguf`` file) that ``base_model`` (``runs:/...``) was
    published from, for workers on other machines (``basemodel.shareable_spec``)."""
    recipe: dict[str, Any] | None = None
    """The training recipe's fields, shown and editable as the deployments' parameter."""
    recipe_origin: str = ""
    """Which recipe that is, in words (the deployments' descriptions and `up` say it)."""
    retrain_threshold: int | None = None
    """Pairs changed since the champion's snapshot that make a retrain due."""
    margins: dict[str, float] | None = None
    """The promotion margins (``decision.Margins``) the retrains decide with."""
    tracking_uri: str | None = None
    """The MLflow tracking server the cycles and retrains use (a URL; none for a local file)."""
    device: str | None = None
    """What the gpu pool's retrains train on (``cuda`` or ``cpu``; none: each worker's own)."""


class Applied(BaseModel):
    """What was applied: pool limits, deployment names and ids, the saved source block, and
    the global concurrency limit that promotions hold."""

    pools: dict[str, int | None]
    deployments: dict[str, str]
    source_block: str | None
    promotions_limit: str


def _ensure_pools() -> dict[str, int | None]:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        for name, (limit, description) in POOLS.items():
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type=ProcessWorker.type,
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
            client.update_work_pool(
                name, WorkPoolUpdate(concurrency_limit=limit, description=description)
            )
        return {name: client.read_work_pool(name).concurrency_limit for name in POOLS}


def _source_parameter(source: WikiSource | None) -> tuple[dict[str, Any], str | None]:
    """The flows' ``source`` parameter: a reference to the saved block, which the UI shows and
    lets a person edit; without a source, the flows use the one the store recorded."""
    if source is None:
        return {}, None
    from wikitune.blocks.source import WikiSourceBlock

    block_name = source_slug(source.name)
    WikiSourceBlock(**source.model_dump()).save(block_name, overwrite=True)
    return {"source": block_name}, block_name


def _trains_with(options: DeployOptions) -> str:
    if not options.base_model:
        return ""
    origin = f" with {options.recipe_origin}" if options.recipe_origin else ""
    base = f"`{options.base_model}`"
    if options.base_published_from:
        base = f"`{options.base_published_from}` (published to MLflow as {base})"
    return f" Trains {base}{origin}; the `recipe` parameter holds its fields."


def apply(source: WikiSource | None, options: DeployOptions | None = None) -> Applied:
    """Create or update the work pools and deployments on the server in PREFECT_API_URL."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron, Interval

    from wikitune.flows.pipeline import DATASET_READY, pipeline
    from wikitune.flows.retrain import retrain

    options = options or DeployOptions()
    pools = _ensure_pools()
    locks.ensure_promotions_limit()
    source_parameter, block_name = _source_parameter(source)
    # What will train, and what decides, is on the deployments' pages, editable, not hidden in
    # a worker's environment.
    model = {k: v for k, v in (("base_model", options.base_model), ("recipe", options.recipe)) if v}
    decides = {"margins": options.margins} if options.margins else {}
    tracks = {"tracking_uri": options.tracking_uri} if options.tracking_uri else {}
    on = {"device": options.device} if options.device else {}
    due = (
        {"retrain_threshold": options.retrain_threshold}
        if options.retrain_threshold is not None
        else {}
    )
    resource = f"wikitune.source.{source_slug(source.name)}" if source else "wikitune.*"
    cycle = {
        **source_parameter,
        "retrain_deployment": GPU_RETRAIN,
        **model,
        **due,
        **decides,
        **tracks,
    }
    deployments = [
        pipeline.to_deployment(
            SYNC.split("/")[1],
            work_pool_name="cpu",
            schedules=[
                Interval(timedelta(minutes=options.sync_minutes), timezone=options.timezone)
            ],
            parameters={**source_parameter, "retrain_when": "never", **due},
            description=(
                f"Every {options.sync_minutes:g} minutes: sync the wiki's recent changes and build"
                f" QA pairs. When the pairs changed since the champion's snapshot reach"
                f" `retrain_threshold`, emit `{DATASET_READY}`, which starts"
                f" `{RETRAIN_CYCLE}`."
            ),
            tags=["wikitune", "sync"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        pipeline.to_deployment(
            RETRAIN_CYCLE.split("/")[1],
            work_pool_name="cpu",
            schedules=[Cron(options.nightly_cron, timezone=options.timezone)],
            triggers=[
                DeploymentEventTrigger(
                    name="retrain-when-dataset-ready",
                    description=f"A sync emitted {DATASET_READY}: enough new QA pairs.",
                    expect={DATASET_READY},
                    match={"prefect.resource.id": resource},
                    parameters={**cycle, "retrain_when": "threshold"},
                )
            ],
            parameters={**cycle, "retrain_when": options.nightly_retrain_when},
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            description=(
                f"Nightly at `{options.nightly_cron}` ({options.timezone}), retraining only when"
                f" there is new data (`retrain_when: {options.nightly_retrain_when}`), and"
                f" whenever a sync emits `{DATASET_READY}`. Syncs, builds and snapshots here,"
                f" then runs `{GPU_RETRAIN}` (train, evaluate, promote) on the gpu pool. One at a"
                " time: a run that starts while another is active waits for it (and finds the"
                " changes already trained)." + _trains_with(options)
            ),
            tags=["wikitune", "retrain"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        retrain.to_deployment(
            GPU_RETRAIN.split("/")[1],
            work_pool_name="gpu",
            parameters={**model, **decides, **tracks, **on},
            description=(
                "Train a QLoRA adapter on a snapshot (its directory or URL), evaluate it against"
                " the champion on the same held-out questions, register it in MLflow and move"
                " the champion alias if it wins. Started by `pipeline/retrain`."
                + _trains_with(options)
            ),
            tags=["wikitune", "train"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]
    ids = {}
    for deployment in deployments:
        # The flows are imported from the installed package wherever a worker runs.
        deployment._path = None
        ids[f"{deployment.flow_name}/{deployment.name}"] = str(deployment.apply())
    return Applied(
        pools=pools,
        deployments=ids,
        source_block=block_name,
        promotions_limit=locks.PROMOTIONS_LIMIT,
    )
