"""The whole cycle: sync, build, and when enough has changed (or when asked) snapshot, retrain,
evaluate and promote. Runs whole in one process (as Prefect runs, or as plain calls without a
Prefect server), or hands the retrain to a deployment on the ``gpu`` work pool."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.events import emit_event
from prefect.runtime import flow_run
from pydantic import BaseModel

from wikitune.config import is_tracking_server, load_settings, source_slug
from wikitune.flows.build import BuildSummary, SnapshotSummary, build, snapshot
from wikitune.flows.naming import (
    STORED_SOURCE,
    artifact_key,
    counts_table,
    name_run_after,
    pages_table,
    source_name,
)
from wikitune.flows.retrain import RetrainResult, retrain
from wikitune.flows.runtime import finished, in_prefect_run, markdown_artifact, run_logger, step
from wikitune.flows.sync import SyncSummary, sync
from wikitune.mlflow import exchange, registry
from wikitune.storage import PageChange, Store
from wikitune.tasks import basemodel
from wikitune.tasks.champion import follow_champion
from wikitune.tasks.decision import Margins
from wikitune.tasks.recipe import TrainingRecipe
from wikitune.tasks.source import WikiSource

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
    """What one cycle did: the sync and build counts, the retrain if there was one, and one line
    (``message``) that says the outcome, also the run's final state message."""

    source: str
    sync_counts: dict[str, int]
    build_counts: dict[str, int]
    changed_since_champion: int
    threshold: int
    retrained: bool
    message: str = ""
    dataset_ready_emitted: bool = False
    snapshot_id: str | None = None
    retrain: RetrainResult | None = None
    went_live: str | None = None
    """When the promoted version went live on `wikitune serve`, or why not (markdown)."""


class RetrainDeploymentFailed(RuntimeError):
    """The retrain deployment's run ended in a state other than Completed."""


def _retrain_due(when: RetrainWhen, built: BuildSummary) -> bool:
    """Whether this cycle retrains: the build says whether the threshold is reached."""
    return {
        "threshold": built.retrain_due,
        "new-data": built.changed_since_champion > 0,
        "always": True,
        "never": False,
    }[when]


def _pipeline_run_name() -> str:
    mode = flow_run.parameters.get("retrain_when", "threshold")
    prefix = "poll" if mode == "never" else "cycle"
    return f"{prefix}-{source_name(flow_run.parameters.get('source'))}"


def _retrain_on_deployment(
    deployment: str,
    parameters: dict[str, object],
    snapshot_id: str,
    *,
    source: str,
    tracking_uri: str,
) -> RetrainResult:
    """Run the retrain deployment as a child of this flow run and read its outcome: from the
    tracking server, which the worker (maybe on another machine) logged it to, else from the
    child's persisted result."""
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
    if is_tracking_server(tracking_uri):
        logged = exchange.outcome_of(tracking_uri, source, snapshot_id, str(child.id))
        if logged is None:
            raise RetrainDeploymentFailed(
                f"retrain run {child.name} on {deployment} completed but logged no outcome"
                f" with its training run in {tracking_uri}"
            )
        return RetrainResult.model_validate(logged)
    result = state.result()
    return result if isinstance(result, RetrainResult) else RetrainResult.model_validate(result)


@task(name="publish-snapshot", cache_policy=NO_CACHE)
def publish_snapshot(tracking_uri: str, source: str, frozen: SnapshotSummary) -> str:
    """Where a retrain worker reads the snapshot: its files published to the tracking server
    (``runs:/...``) when there is one, else its path on this machine."""
    if not is_tracking_server(tracking_uri):
        return frozen.path
    return exchange.publish_snapshot(tracking_uri, source, frozen.id, Path(frozen.path))


@task(name="publish-base", cache_policy=NO_CACHE)
def publish_base(tracking_uri: str, base_model: str, models_dir: Path) -> str:
    """How a retrain worker finds the base: a local directory or ``.gguf`` file published to
    the tracking server once per digest (the worker may not see this machine's disk); a
    packaged name or hub id as it is."""
    if not is_tracking_server(tracking_uri):
        return base_model
    return basemodel.shareable_spec(base_model, models_dir, tracking_uri)


def _cycle_in_flight(source: str) -> str | None:
    """The name of a retrain cycle of ``source`` that is running, pending or due to start now,
    if any, as the Prefect API lists runs."""
    from datetime import UTC, datetime

    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterId,
        FlowRunFilterName,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    active = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                # A cycle started without a source carries the stored-source name until its
                # sync has read the store's.
                name=FlowRunFilterName(
                    any_=[f"cycle-{source_slug(source)}", f"cycle-{STORED_SOURCE}"]
                ),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active)),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
                id=FlowRunFilterId(not_any_=[flow_run.id] if flow_run.id else []),
            ),
            limit=1,
        )
    return runs[0].name if runs else None


def _emit_dataset_ready(source: str, built: BuildSummary) -> None:
    changed = built.changed_since_champion
    # The count and the threshold as resource labels and a related resource: the event feed's
    # card shows those, where the payload is only in the raw JSON.
    emit_event(
        event=DATASET_READY,
        resource={
            "prefect.resource.id": f"wikitune.source.{source_slug(source)}",
            "prefect.resource.name": source,
            "wikitune.changed-pairs": str(changed),
            "wikitune.threshold": str(built.threshold),
        },
        related=[
            {
                "prefect.resource.id": f"wikitune.changed-pairs.{source_slug(source)}",
                "prefect.resource.role": "changed-pairs",
                "prefect.resource.name": (
                    f"{changed} QA pairs changed since the champion (threshold {built.threshold})"
                ),
            }
        ],
        payload={
            "changed_since_champion": built.changed_since_champion,
            "changed_since_last_retrain": built.changed_since_last_retrain,
            "threshold": built.threshold,
            "active_pairs": built.active_pairs,
        },
    )


def _poll_outcome(source: str, built: BuildSummary) -> tuple[str, bool]:
    """What a poll does at the end: emit ``wikitune.dataset.ready`` when a retrain is due, no
    cycle is already on it, and something arrived that no retrain has seen (after a candidate
    lost, its changes wait for the next edit or the nightly run instead of retraining on the
    same data every poll). Returns the message and whether it emitted."""
    changed = f"{built.changed_since_champion} pairs changed since the champion's snapshot"
    if not built.retrain_due:
        return f"{changed} (threshold {built.threshold}): not due", False
    if not built.changed_since_last_retrain:
        return (
            f"{changed}, all of them seen by the last retrain, whose candidate lost: waiting for"
            " new edits or the nightly run",
            False,
        )
    if not in_prefect_run():
        return (
            f"{changed} (threshold {built.threshold}): a retrain is due; without a Prefect server"
            f" nothing hears {DATASET_READY}: `wikitune run` retrains now",
            False,
        )
    running = _cycle_in_flight(source)
    if running:
        return f"{changed}: {running} is in flight and will be followed by the next poll", False
    _emit_dataset_ready(source, built)
    return f"{changed} (threshold {built.threshold}): emitted {DATASET_READY}", True


def _cycle_markdown(
    summary: CycleSummary,
    synced: SyncSummary,
    built: BuildSummary,
    since_champion: tuple[int, list[PageChange]],
    frozen: SnapshotSummary | None,
    ui_url: str | None,
) -> str:
    """The cycle artifact: what changed since the champion, what was trained, what was decided."""
    syncs, pages = since_champion
    kinds = Counter(page.kind for page in pages)
    lines = [
        f"## Cycle of `{summary.source}`: {summary.message}",
        "",
        f"This cycle's sync ({synced.mode}) changed {synced.pages_changed} pages. The"
        f" {syncs} syncs since the champion's snapshot changed **{len(pages)} distinct pages**"
        " (each counted once, however often it changed):",
        "",
        *counts_table("change", "pages", kinds or {"none": 0}),
        "",
        *(pages_table(synced.api_url, pages) if pages else []),
        "",
        f"QA pairs: {built.active_pairs} active; {summary.changed_since_champion} added or changed"
        f" since the champion's snapshot (threshold {summary.threshold}); this build:"
        f" {built.counts.get('new', 0)} new, {built.counts.get('changed', 0)} changed,"
        f" {built.counts.get('retired', 0)} retired.",
    ]
    if frozen is not None:
        lines += [
            "",
            f"Snapshot `{frozen.id}`: {frozen.counts.get('wiki_train_rows', 0)} wiki and"
            f" {frozen.counts.get('general_train_rows', 0)} general training rows,"
            f" {frozen.counts.get('eval_fresh', 0)} fresh and"
            f" {frozen.counts.get('eval_stable', 0)} stable evaluation questions.",
        ]
    result = summary.retrain
    promotion = result.promotion if result else None
    if result is not None:
        url = (
            promotion.evaluation.run_link
            if promotion and promotion.evaluation
            else f"runs:/{result.run_id}"
        )
        lines += ["", f"MLflow run [{result.run_id}]({url})."]
    if promotion is not None:
        link = registry.version_link(ui_url, summary.source, promotion.version)
        lines += [
            "",
            f"### Version [{promotion.version}]({link}): **{promotion.outcome}**; the champion is"
            f" version {promotion.champion_version or '(none)'}",
            "",
            promotion.evaluation.decision.markdown()
            if promotion.evaluation
            else "The run was already this version: nothing was evaluated or registered again.",
        ]
        if summary.went_live:
            lines += ["", summary.went_live]
    return "\n".join(lines)


@task(name="wait-until-served", cache_policy=NO_CACHE)
def _wait_until_served(url: str, version: str, timeout: float) -> str:
    """Wait for the server following the champion to answer with the promoted version."""
    from wikitune.serving.api import wait_live

    said = wait_live(url, version, timeout=timeout).markdown()
    run_logger().info(said)
    return said


def _outcome_state(summary: CycleSummary, poll: bool) -> tuple[str, list[str]]:
    """The run's state name and tags: what the runs list and dashboard show of its outcome."""
    promotion = summary.retrain.promotion if summary.retrain else None
    if promotion is not None and promotion.already_registered:
        return "Unchanged", [f"v{promotion.version}"]
    if promotion is not None:
        name = "Promoted" if promotion.outcome == "promoted" else "Rejected"
        return name, [name.lower(), f"v{promotion.version}"]
    if summary.retrained:
        return "Trained", ["trained"]
    if poll:
        return ("Data ready", ["data-ready"]) if summary.dataset_ready_emitted else ("Polled", [])
    return "No retrain", ["no-retrain"]


def _retrain_message(result: RetrainResult) -> str:
    promotion = result.promotion
    if promotion is None:
        return f"trained run {result.run_id} (not evaluated)"
    if promotion.already_registered:
        return (
            f"no new version: run {result.run_id} is already version {promotion.version}"
            f" ({promotion.outcome}); nothing changed since it was trained"
        )
    assert promotion.evaluation is not None
    decision = promotion.evaluation.decision
    if promotion.outcome == "promoted":
        return f"promoted v{promotion.version}: {decision.verdict()}"
    if promotion.outcome == "lost-race":
        return (
            f"rejected v{promotion.version}: another promotion moved the champion to"
            f" v{promotion.champion_version} first"
        )
    return f"rejected v{promotion.version}: {decision.verdict()}"


@flow(name="pipeline", flow_run_name=_pipeline_run_name)
def pipeline(
    source: WikiSource | str | None = None,
    retrain_when: RetrainWhen = "threshold",
    base_model: str | None = None,
    recipe: TrainingRecipe | None = None,
    retrain_deployment: str | None = None,
    full: bool = False,
    retrain_threshold: int | None = None,
    margins: Margins | None = None,
    tracking_uri: str | None = None,
    home: str | None = None,
) -> CycleSummary:
    """One cycle: sync the wiki, build QA pairs, then retrain according to ``retrain_when``,
    counting the pairs added or changed since the snapshot the champion was trained on:

    - ``threshold``: when they reach ``retrain_threshold`` (default WIKITUNE_RETRAIN_THRESHOLD);
    - ``new-data``: when there is any (the nightly retrain);
    - ``always``: whatever changed (``wikitune run --force``);
    - ``never``: sync and build only (the poll); at the threshold, emit
      ``wikitune.dataset.ready`` so the data-ready automation starts a retrain cycle, unless a
      cycle is already in flight or the last retrain already saw every change.

    With ``retrain_deployment`` (e.g. ``retrain/gpu``) the training, evaluation and promotion
    run as that deployment on its work pool; otherwise in this process. A retrain on the
    champion trains on what is fresh to it (a delta) unless ``full`` is set; the candidate is
    promoted by ``margins`` (default WIKITUNE_PROMOTE_*). The run ends Completed
    with the outcome as its message (``promoted v3: ...``, ``rejected v3: ...``, ``not due``)
    and the cycle's markdown artifact; a failed retrain fails the run and changes nothing.
    ``tracking_uri`` (a deployment's parameter) names the MLflow tracking server over the
    worker's WIKITUNE_MLFLOW_TRACKING_URI, and goes to the retrain.
    """
    logger = run_logger()
    settings = load_settings(home, mlflow_tracking_uri=tracking_uri)
    home = str(settings.home)
    synced = step(sync, source=source, home=home)
    name_run_after(synced.source)
    if retrain_when != "never":
        # The champion may have moved since the last cycle (a rollback, the MLflow UI); before
        # the first retrain there is none to follow.
        with Store(settings.store_path) as store:
            if store.latest_snapshot(synced.source, trained=True) is not None:
                follow_champion(store, settings.tracking_uri, synced.source)
    built = step(build, source=synced.source, threshold=retrain_threshold, home=home)
    # The report counts changes since the champion's snapshot as of now, before a promotion.
    with Store(settings.store_path) as store:
        anchor = store.champion_snapshot(synced.source)
    since_time = anchor.created_at if anchor else None
    summary = CycleSummary(
        source=synced.source,
        sync_counts=synced.counts,
        build_counts=built.counts,
        changed_since_champion=built.changed_since_champion,
        threshold=built.threshold,
        retrained=False,
    )
    frozen = None
    if retrain_when == "never":
        summary.message, summary.dataset_ready_emitted = _poll_outcome(synced.source, built)
    elif not _retrain_due(retrain_when, built):
        summary.message = (
            f"no retrain: {built.changed_since_champion} pairs changed since the champion's"
            f" snapshot (threshold {built.threshold}, retrain when {retrain_when})"
        )
    else:
        frozen = step(snapshot, source=synced.source, home=home)
        if retrain_deployment:
            # The worker may be on another machine: it gets the snapshot's files, not the store,
            # through the tracking server when there is one.
            parameters: dict[str, object] = {
                "snapshot": step(
                    publish_snapshot,
                    tracking_uri=settings.tracking_uri,
                    source=synced.source,
                    frozen=frozen,
                )
            }
            if base_model:
                parameters["base_model"] = step(
                    publish_base,
                    tracking_uri=settings.tracking_uri,
                    base_model=base_model,
                    models_dir=settings.models_dir,
                )
            if recipe is not None:
                parameters["recipe"] = recipe
            if full:
                parameters["full"] = True
            if margins is not None:
                parameters["margins"] = margins
            if is_tracking_server(settings.tracking_uri):
                parameters["tracking_uri"] = settings.tracking_uri
            result = _retrain_on_deployment(
                retrain_deployment,
                parameters,
                frozen.id,
                source=synced.source,
                tracking_uri=settings.tracking_uri,
            )
        else:
            result = step(
                retrain,
                snapshot=frozen.id,
                base_model=base_model,
                recipe=recipe,
                full=full,
                margins=margins,
                tracking_uri=tracking_uri,
                home=home,
            )
        with Store(settings.store_path) as store:
            store.mark_trained(frozen.id)
            follow_champion(store, settings.tracking_uri, synced.source)
        summary.retrained, summary.snapshot_id, summary.retrain = True, frozen.id, result
        summary.message = _retrain_message(result)
        promotion = result.promotion
        if settings.serve_url and promotion and promotion.outcome == "promoted":
            summary.went_live = step(
                _wait_until_served,
                url=settings.serve_url,
                version=str(promotion.version),
                timeout=settings.serve_live_timeout_s,
            )
    # A poll reports when it found changes (and what became of them: not due, a cycle in
    # flight, the event); one that found nothing leaves the last report in view.
    if retrain_when != "never" or summary.dataset_ready_emitted or synced.pages_changed:
        # What this cycle learned from: the syncs since that snapshot, through this one.
        with Store(settings.store_path) as store:
            since = store.changes_since(synced.source, since_time, through_run=synced.sync_run)
        markdown = _cycle_markdown(summary, synced, built, since, frozen, settings.mlflow_ui_url)
        # A poll's report has its own key: the cycle card keeps the last decision in view.
        markdown_artifact(
            key=artifact_key("poll" if retrain_when == "never" else "cycle", synced.source),
            markdown=markdown,
            description=f"{summary.source}: {summary.message}",
        )
    logger.info("%s: %s", summary.source, summary.message)
    # In a Prefect run, the message becomes the run's final state message.
    state_name, tags = _outcome_state(summary, poll=retrain_when == "never")
    return finished(summary, summary.message, state_name=state_name, tags=tags)  # type: ignore[no-any-return]
