"""The build flow (pages to QA pairs) and the snapshot flow (pairs to an immutable dataset)."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from wikitune.config import load_settings
from wikitune.flows.naming import artifact_key, run_name
from wikitune.storage import Store
from wikitune.tasks import dataset, qa

__all__ = ["BuildSummary", "SnapshotSummary", "build", "snapshot"]

build_pairs = task(qa.build_pairs, name="build-qa-pairs", cache_policy=NO_CACHE)
make_snapshot = task(dataset.make_snapshot, name="make-snapshot", cache_policy=NO_CACHE)


class BuildSummary(BaseModel):
    """What a build did, and whether enough has changed since the last trained snapshot."""

    source: str
    counts: dict[str, int]
    active_pairs: int
    changed_since_trained: int
    threshold: int

    @property
    def retrain_due(self) -> bool:
        return self.changed_since_trained >= self.threshold


class SnapshotSummary(BaseModel):
    id: str
    digest: str
    path: str
    counts: dict[str, int]


@flow(name="build", flow_run_name=partial(run_name, "build"))
def build(source: str | None = None, home: str | None = None) -> BuildSummary:
    """Parse the pages that changed since the last build into QA pairs; retire stale pairs."""
    settings = load_settings(home)
    mapping = qa.load_mapping(settings.mapping_path)
    with Store(settings.store_path) as store:
        name = store.source_name(source)
        counts = build_pairs(store, name, mapping)
        summary = BuildSummary(
            source=name,
            counts=asdict(counts),
            active_pairs=store.qa_counts(name)["active"],
            changed_since_trained=store.pairs_new_since_trained(name),
            threshold=settings.retrain_threshold,
        )
    get_run_logger().info(
        "built %s: %s; %d active pairs, %d added or changed since the last trained snapshot",
        name,
        ", ".join(f"{k}={v}" for k, v in summary.counts.items()),
        summary.active_pairs,
        summary.changed_since_trained,
    )
    create_table_artifact(
        key=artifact_key("build", name),
        table=[{"measure": k.replace("_", " "), "count": v} for k, v in summary.counts.items()],
        description=f"QA pairs built from {name}",
    )
    return summary


@flow(name="snapshot", flow_run_name=partial(run_name, "snapshot"))
def snapshot(source: str | None = None, home: str | None = None) -> SnapshotSummary:
    """Freeze the active pairs into an immutable snapshot with the general-data mix."""
    settings = load_settings(home)
    with Store(settings.store_path) as store:
        name = store.source_name(source)
        record = make_snapshot(
            store,
            name,
            snapshots_dir=settings.snapshots_dir,
            system_prompt=settings.system_prompt,
            general_share=settings.general_share,
            general_path=settings.general_data_path,
            seed=settings.snapshot_seed,
        )
    lines = [f"## Snapshot `{record.id}` of `{name}`", "", "| rows | count |", "| --- | ---: |"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in record.counts.items()]
    lines += ["", f"Digest `{record.digest}`; files in `{record.path}`."]
    create_markdown_artifact(
        key=artifact_key("snapshot", name), markdown="\n".join(lines), description="Latest snapshot"
    )
    return SnapshotSummary(
        id=record.id, digest=record.digest, path=record.path, counts=record.counts
    )
