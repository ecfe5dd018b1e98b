"""The MLflow model registry: one registered model per wiki source; every candidate a version
with its numbers and decision; the aliases `champion` and `challenger` (no stages)."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from wikitune.mlflow import tracking
from wikitune.mlflow.tracking import use_tracking

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "AliasMovedElsewhere",
    "LoggedModel",
    "RegistryLock",
    "VersionView",
    "champion",
    "describe_model",
    "download_logged_model",
    "file_lock",
    "list_versions",
    "move_champion",
    "register_candidate",
    "registered_model_name",
    "rollback",
    "set_version_tags",
    "version_adapter",
    "version_facts",
    "version_of_run",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
# Where mlflow.transformers keeps a PEFT adapter and the tokenizer inside a logged model.
_PEFT_DIR = "peft"
_TOKENIZER_DIR = "components/tokenizer"


def registered_model_name(source: str) -> str:
    """The registered model of a wiki source's adapters, named like its experiment."""
    return tracking.experiment_name(source)


def version_link(ui_url: str | None, source: str, version: str) -> str:
    """The version's page in the MLflow UI when its URL is known, else ``models:/<name>/<v>``."""
    name = registered_model_name(source)
    if not ui_url:
        return f"models:/{name}/{version}"
    return f"{ui_url.rstrip('/')}/#/models/{name}/versions/{version}{tracking.MODEL_TRAINING_VIEW}"


@dataclass(frozen=True)
class LoggedModel:
    """A logged adapter, downloaded: its PEFT directory and the tokenizer it trained with."""

    adapter_dir: str
    tokenizer_dir: str


@dataclass(frozen=True)
class VersionView:
    """A version as people and code read it: its few tags, and its training run's params and
    metrics (the numbers live on the run, where MLflow shows and compares numbers)."""

    version: str
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None
    created_ms: int
    description: str
    params: dict[str, str]
    metrics: dict[str, float]


def version_facts(tracking_uri: str, version: ModelVersion) -> dict[str, str]:
    """What the code needs to know about a version: its training run's params (base model,
    digest, method, mapping digest, delta streak...) overlaid with the version's own tags
    (snapshot, decision, verdict, parent version)."""
    run = _run_or_none(_client(tracking_uri), version.run_id)
    return {**(run.data.params if run else {}), **dict(version.tags)}


def _run_or_none(client: MlflowClient, run_id: str | None) -> Any:
    """The training run behind a version, or None when it has none or it is gone."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _client(tracking_uri: str) -> MlflowClient:
    use_tracking(tracking_uri)
    return MlflowClient()


def download_logged_model(tracking_uri: str, model_uri: str, dst: Path) -> LoggedModel:
    """Download a logged adapter (``models:/...``) into ``dst``."""
    use_tracking(tracking_uri)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    adapter, tokenizer = local / _PEFT_DIR, local / _TOKENIZER_DIR
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{model_uri} holds no PEFT adapter")
    return LoggedModel(str(adapter), str(tokenizer if tokenizer.is_dir() else adapter))


def champion(tracking_uri: str, source: str) -> ModelVersion | None:
    """The version the `champion` alias points at, or None."""
    try:
        return _client(tracking_uri).get_model_version_by_alias(
            registered_model_name(source), CHAMPION
        )
    except MlflowException:
        return None


def version_adapter(tracking_uri: str, source: str, version: str, dst: Path) -> str:
    """Download the adapter of version ``version`` of ``source`` into ``dst``; its directory."""
    name = registered_model_name(source)
    return download_logged_model(tracking_uri, f"models:/{name}/{version}", dst).adapter_dir


def version_of_run(tracking_uri: str, source: str, run_id: str) -> ModelVersion | None:
    """The version that already holds training run ``run_id``, if any (the oldest)."""
    name = registered_model_name(source)
    found = _client(tracking_uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def register_candidate(
    tracking_uri: str,
    source: str,
    *,
    run_id: str,
    model_uri: str,
    tags: Mapping[str, Any],
    description: str,
    lock: RegistryLock,
) -> str:
    """Register a candidate as a new version (creating the registered model on first use) and
    point `challenger` at it, under the promotions' lock: MLflow's SQL store inserts an alias
    it does not find, so two candidates setting it at once fail one of them. Returns the
    version number."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    try:
        client.create_registered_model(
            name, description=f"LoRA adapters trained by wikitune on the wiki source {source}."
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # A tracking server asks which logged model a `models:/m-...` source names.
    logged_model_id = (
        model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    )
    version = client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        model_id=logged_model_id,
        tags={k: str(v) for k, v in tags.items() if v is not None},
        description=description,
    )
    with lock():
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def describe_model(
    tracking_uri: str,
    source: str,
    description: str,
    tags: Mapping[str, Any],
    *,
    lock: RegistryLock,
) -> None:
    """Set the registered model's description and tags (what the models list shows), under
    the promotions' lock: MLflow's SQL store fails two concurrent writes of one model tag."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    with lock():
        client.update_registered_model(name, description=description)
        for key, value in tags.items():
            client.set_registered_model_tag(name, key, str(value))


def set_version_tags(
    tracking_uri: str,
    source: str,
    version: str,
    tags: Mapping[str, Any],
    *,
    description: str | None = None,
) -> None:
    """Set tags of a version, and its description when given."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if description is not None:
        client.update_model_version(name, version, description=description)


RegistryLock = Callable[[], AbstractContextManager[Any]]
"""What every move of an alias and every write of the registered model's tags runs under: a
file lock where the registry is a local file (one machine), the Prefect server's
``wikitune-promotions`` concurrency limit where it is a tracking server (any machine)."""


def file_lock(path: Path) -> RegistryLock:
    """The promotions' lock of a registry that only this machine reaches: ``flock`` on
    ``path``."""

    @contextmanager
    def held() -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return held


class AliasMovedElsewhere(RuntimeError):
    """An alias points elsewhere right after wikitune moved it: something moved it without the
    promotions' lock."""


def move_champion(
    tracking_uri: str,
    source: str,
    version: str,
    *,
    expected: str | None,
    lock: RegistryLock,
) -> bool:
    """Point `champion` at ``version`` if it still points at ``expected`` (None: no champion),
    re-read under the promotions' lock, and check it after the move; False when another
    promotion moved it first."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    with lock():
        current = champion(tracking_uri, source)
        if (str(current.version) if current else None) != expected:
            return False
        client.set_registered_model_alias(name, CHAMPION, version)
        after = champion(tracking_uri, source)
        if after is None or str(after.version) != str(version):
            raise AliasMovedElsewhere(
                f"{name}@{CHAMPION} points at version {after.version if after else '(none)'}"
                f" right after wikitune moved it to {version}: something moves it without the"
                " promotions' lock"
            )
    return True


def list_versions(tracking_uri: str, source: str) -> list[VersionView]:
    """Every version of the source's registered model, newest first."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name = '{name}'")
    views = []
    for v in versions:
        run = _run_or_none(client, v.run_id)
        views.append(
            VersionView(
                version=str(v.version),
                aliases=sorted(by_version.get(str(v.version), [])),
                tags=dict(v.tags),
                run_id=v.run_id,
                created_ms=v.creation_timestamp,
                description=v.description or "",
                params=dict(run.data.params) if run else {},
                metrics=dict(run.data.metrics) if run else {},
            )
        )
    return sorted(views, key=lambda v: int(v.version), reverse=True)


def rollback(
    tracking_uri: str, source: str, *, to: str | None, lock: RegistryLock
) -> tuple[str, str]:
    """Point `champion` at ``to``, or at the version the current champion replaced. Returns
    (from version, to version)."""
    client = _client(tracking_uri)
    name = registered_model_name(source)
    current = champion(tracking_uri, source)
    if current is None:
        raise LookupError(f"{name} has no champion to roll back")
    target = to or current.tags.get("parent_version")
    if not target or target == "base":
        raise ValueError(
            f"version {current.version} of {name} replaced the bare base model; name a version"
            " with --to"
        )
    try:
        client.get_model_version(name, target)
    except MlflowException as error:
        raise LookupError(f"{name} has no version {target}") from error
    if not move_champion(tracking_uri, source, target, expected=str(current.version), lock=lock):
        raise ValueError(f"the champion of {name} moved while rolling back; try again")
    client.set_model_version_tag(name, str(current.version), "rolled_back", "true")
    describe_model(
        tracking_uri,
        source,
        f"**Champion: version {target}** (alias `champion`), rolled back from version"
        f" {current.version}.",
        {"champion_version": target},
        lock=lock,
    )
    return str(current.version), str(target)
