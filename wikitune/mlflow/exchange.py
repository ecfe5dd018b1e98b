"""What the machines of one deployment hand each other through the MLflow server they all reach
(it proxies artifacts): a snapshot's files, published by the machine that made it and fetched by
the worker that trains on it; a base model that only the first machine has (a directory or a
``.gguf`` file of its own), published once per digest; and a retrain's outcome, logged by the
worker and read by the flow run that started it. Nothing here needs a disk the machines share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from wikitune.mlflow.tracking import experiment_name, use_tracking
from wikitune.tasks.snapshots import MANIFEST_FILE, SnapshotManifest

__all__ = [
    "ARTIFACT_SCHEMES",
    "fetch_base",
    "fetch_snapshot",
    "log_outcome",
    "outcome_of",
    "publish_base",
    "publish_snapshot",
    "published_snapshot",
]

ARTIFACT_SCHEMES = ("runs:/", "mlflow-artifacts:/")
"""Snapshot references a worker resolves through the tracking server."""
SNAPSHOT_TAG = "wikitune.snapshot_id"
OUTCOME_ARTIFACT = "retrain_outcome.json"
BASES_EXPERIMENT = "wikitune-bases"
BASE_DIGEST_TAG = "wikitune.base_digest"
BASE_SPEC_TAG = "wikitune.base_spec"
BASE_ARTIFACT = "base"


def _experiment(name: str) -> str:
    """The id of the experiment ``name``, created when there is none."""
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _publish(
    experiment: str, run_name: str, tags: Mapping[str, str], directory: Path, artifact_path: str
) -> str:
    """``directory``'s files as the artifacts of a new finished run (failed if the upload
    fails, so that no search finds it); their ``runs:/`` URI."""
    client = MlflowClient()
    run = client.create_run(experiment, run_name=run_name, tags=dict(tags))
    try:
        client.log_artifacts(run.info.run_id, str(directory), artifact_path)
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/{artifact_path}"


def publish_snapshot(tracking_uri: str, source: str, snapshot_id: str, directory: Path) -> str:
    """The snapshot's files as the artifacts of a run named after it, once per snapshot; the
    ``runs:/`` URI a worker on another machine fetches them by."""
    published = published_snapshot(tracking_uri, source, snapshot_id)
    if published:
        return published
    return _publish(
        _experiment(f"{experiment_name(source)}-snapshots"),
        f"snapshot-{snapshot_id}",
        {SNAPSHOT_TAG: snapshot_id},
        directory,
        snapshot_id,
    )


def published_snapshot(tracking_uri: str, source: str, snapshot_id: str) -> str | None:
    """The ``runs:/`` URI of a snapshot published to the tracking server, or None."""
    use_tracking(tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"{experiment_name(source)}-snapshots")
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{SNAPSHOT_TAG}` = '{snapshot_id}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    # The URI ends in the snapshot's id, as a directory's path does: runs are named after it.
    return f"runs:/{found[0].info.run_id}/{snapshot_id}" if found else None


def fetch_snapshot(tracking_uri: str, uri: str, snapshots_dir: Path) -> Path:
    """The snapshot at ``uri`` in ``snapshots_dir``, under its id: downloaded from the tracking
    server unless a complete copy with the same digest is there already."""
    use_tracking(tracking_uri)
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=snapshots_dir))
    try:
        manifest_file = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/{MANIFEST_FILE}", dst_path=str(staging / "manifest")
        )
        manifest = SnapshotManifest.model_validate_json(Path(manifest_file).read_text("utf-8"))
        target = snapshots_dir / manifest.id
        if _same_snapshot(target, manifest):
            return target
        files = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(staging / "files")))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(files, target)
        except OSError:  # another run fetched it first
            if not _same_snapshot(target, manifest):
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _same_snapshot(directory: Path, manifest: SnapshotManifest) -> bool:
    try:
        held = SnapshotManifest.model_validate_json((directory / MANIFEST_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return held.digest == manifest.digest and all(
        (directory / name).is_file() for name in manifest.files.values()
    )


def publish_base(tracking_uri: str, spec: str, directory: Path, digest: str) -> str:
    """A base model's directory as the artifacts of a run in ``wikitune-bases``, once per
    digest (every source and cycle shares it); the ``runs:/`` URI another machine fetches it
    by, which is what the retrain is then given as its base."""
    use_tracking(tracking_uri)
    experiment = _experiment(BASES_EXPERIMENT)
    published = MlflowClient().search_runs(
        [experiment],
        filter_string=f"tags.`{BASE_DIGEST_TAG}` = '{digest}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if published:
        return f"runs:/{published[0].info.run_id}/{BASE_ARTIFACT}"
    return _publish(
        experiment,
        f"base-{Path(spec).name}-{digest.split(':')[-1][:12]}",
        {BASE_DIGEST_TAG: digest, BASE_SPEC_TAG: spec},
        directory,
        BASE_ARTIFACT,
    )


def fetch_base(tracking_uri: str, uri: str, models_dir: Path) -> tuple[Path, str]:
    """The base published at ``uri`` (``runs:/<run>/base``) and its digest: a directory under
    ``models_dir/published``, named by the digest, downloaded and checked against it once."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    from wikitune.tasks.basemodel import directory_digest

    use_tracking(tracking_uri)
    if not uri.startswith("runs:/"):
        raise ValueError(f"a published base is a runs:/ URI, not {uri!r}")
    run_id, _ = RunsArtifactRepository.parse_runs_uri(uri)
    digest = MlflowClient().get_run(run_id).data.tags.get(BASE_DIGEST_TAG)
    if not digest:
        raise ValueError(f"run {run_id} of {uri} records no base digest ({BASE_DIGEST_TAG})")
    published = models_dir / "published"
    target = published / digest.replace(":", "-")
    if target.is_dir():  # only ever made by the rename below, so complete and checked
        return target, digest
    published.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetching-", dir=published))
    try:
        files = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(staging)))
        if (held := directory_digest(files)) != digest:
            raise ValueError(f"the files of {uri} have digest {held}, not the {digest} published")
        try:
            os.replace(files, target)
        except OSError:  # another run fetched it first
            if not target.is_dir():
                raise
        return target, digest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def log_outcome(
    tracking_uri: str, run_id: str, flow_run_id: str, outcome: Mapping[str, Any]
) -> None:
    """Keep a retrain's outcome with its training run, marked with the flow run that retrained
    (a retrain that finds its run finished already returns that run again)."""
    use_tracking(tracking_uri)
    MlflowClient().log_dict(run_id, {"flow_run_id": flow_run_id, **outcome}, OUTCOME_ARTIFACT)


def outcome_of(
    tracking_uri: str, source: str, snapshot_id: str, flow_run_id: str
) -> dict[str, Any] | None:
    """The outcome the retrain flow run ``flow_run_id`` logged with its training run on
    ``snapshot_id``; None when it logged none."""
    use_tracking(tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name(source))
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"params.snapshot_id = '{snapshot_id}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        try:
            outcome = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{OUTCOME_ARTIFACT}")
        except Exception:  # MLflow raises several kinds for a missing artifact
            continue
        if outcome.pop("flow_run_id", None) == flow_run_id:
            return outcome
    return None
