"""The build flow (pages to QA pairs) and the snapshot flow (pairs to an immutable dataset)."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from wikitune.config import load_settings
from wikitune.flows.naming import artifact_key, counts_table, name_run_after, run_name
from wikitune.flows.runtime import markdown_artifact, run_logger, step
from wikitune.storage import Store, ValueRejection
from wikitune.tasks import dataset, qa
from wikitune.tasks import plan as plans

__all__ = ["BuildSummary", "SnapshotSummary", "build", "snapshot"]

build_pairs = task(qa.build_pairs, name="build-qa-pairs", cache_policy=NO_CACHE)
make_snapshot = task(dataset.make_snapshot, name="make-snapshot", cache_policy=NO_CACHE)
REJECTIONS_SHOWN = 50


class BuildSummary(BaseModel):
    """What a build did, and whether enough has changed since the snapshot the champion was
    trained on. ``changed_since_last_retrain`` counts what no retrain has seen yet (it differs
    after a candidate lost); ``rejected`` counts the values the quality gate refuses now."""

    source: str
    counts: dict[str, int]
    active_pairs: int
    changed_since_champion: int
    changed_since_last_retrain: int
    threshold: int
    rejected: dict[str, int] = {}

    @property
    def retrain_due(self) -> bool:
        return plans.retrain_due(self.changed_since_champion, self.threshold)

    @property
    def changed(self) -> bool:
        return any(self.counts.get(k) for k in ("new", "changed", "retired"))


class SnapshotSummary(BaseModel):
    id: str
    digest: str
    path: str
    counts: dict[str, int]


@flow(name="build", flow_run_name=partial(run_name, "build"))
def build(
    source: str | None = None, threshold: int | None = None, home: str | None = None
) -> BuildSummary:
    """Parse the pages that changed since the last build into QA pairs; retire stale pairs.
    The summary says whether the pairs changed since the champion reach ``threshold`` (default
    WIKITUNE_RETRAIN_THRESHOLD)."""
    settings = load_settings(home)
    mapping = qa.load_mapping(settings.mapping_path)
    with Store(settings.store_path) as store:
        name = store.source_name(source)
        name_run_after(name)
        counts = step(build_pairs, store, name, mapping)
        rejections = store.value_rejections(name)
        summary = BuildSummary(
            source=name,
            counts=asdict(counts),
            active_pairs=store.qa_counts(name)["active"],
            changed_since_champion=store.pairs_changed_since_champion(name),
            changed_since_last_retrain=store.pairs_changed_since(
                name, store.latest_snapshot(name, trained=True)
            ),
            threshold=settings.retrain_threshold if threshold is None else threshold,
            rejected=qa.count_by_reason(rejections),
        )
    logger = run_logger()
    logger.info(
        "built %s: %s; %d active pairs, %d added or changed since the champion's snapshot",
        name,
        ", ".join(f"{k}={v}" for k, v in summary.counts.items()),
        summary.active_pairs,
        summary.changed_since_champion,
    )
    if rejections:
        logger.warning(
            "%d values refused by the quality gate (%s): `wikitune status` lists them",
            len(rejections),
            ", ".join(f"{k}={v}" for k, v in summary.rejected.items()),
        )
    if not summary.changed:
        # The last build that changed something stays the artifact a person reads.
        return summary
    markdown_artifact(
        key=artifact_key("build", name),
        markdown=_build_markdown(summary, rejections),
        description=(
            f"QA pairs built from {name}: {counts.new} new, {counts.changed} changed,"
            f" {counts.retired} retired; {len(rejections)} values refused"
        ),
    )
    return summary


def _build_markdown(summary: BuildSummary, rejections: list[ValueRejection]) -> str:
    counts = {
        **summary.counts,
        "active_pairs": summary.active_pairs,
        "changed_since_champion": summary.changed_since_champion,
    }
    lines = [f"## Build of `{summary.source}`", "", *counts_table("measure", "count", counts)]
    if not rejections:
        return "\n".join([*lines, "", "No value was refused by the quality gate."])
    lines += [
        "",
        f"### {len(rejections)} values refused by the quality gate",
        "",
        "| reason | values | pages |",
        "| --- | ---: | ---: |",
    ]
    for reason, count in summary.rejected.items():
        pages = len({r.pageid for r in rejections if r.reason == reason})
        lines.append(f"| {reason} | {count} | {pages} |")
    lines += ["", "| page | field | reason | value |", "| --- | --- | --- | --- |"]
    for rejection in rejections[:REJECTIONS_SHOWN]:
        value = rejection.value.replace("|", "\\|").replace("`", "'")
        lines.append(f"| {rejection.title} | {rejection.field} | {rejection.reason} | `{value}` |")
    if len(rejections) > REJECTIONS_SHOWN:
        hidden = len(rejections) - REJECTIONS_SHOWN
        lines.append(f"\n…and {hidden} more (`wikitune status --json` lists them all).")
    return "\n".join(lines)


@flow(name="snapshot", flow_run_name=partial(run_name, "snapshot"))
def snapshot(source: str | None = None, home: str | None = None) -> SnapshotSummary:
    """Freeze the active pairs into an immutable snapshot with the general-data mix."""
    settings = load_settings(home)
    with Store(settings.store_path) as store:
        name = store.source_name(source)
        name_run_after(name)
        record = step(
            make_snapshot,
            store,
            name,
            snapshots_dir=settings.snapshots_dir,
            system_prompt=settings.system_prompt,
            general_share=settings.general_share,
            general_path=settings.general_data_path,
            seed=settings.snapshot_seed,
        )
    lines = [
        f"## Snapshot `{record.id}` of `{name}`",
        "",
        *counts_table("rows", "count", record.counts),
        "",
        f"Digest `{record.digest}`; files in `{record.path}`.",
    ]
    markdown_artifact(
        key=artifact_key("snapshot", name), markdown="\n".join(lines), description="Latest snapshot"
    )
    return SnapshotSummary(
        id=record.id, digest=record.digest, path=record.path, counts=record.counts
    )
