"""Reading snapshots: the immutable files a training and an evaluation read (written by
``tasks.dataset.snapshot``), found by id, directory, URL or the ``runs:/`` URI of a copy published
to the tracking server, with their typed manifest. Nothing here opens the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "MANIFEST_FILE",
    "SnapshotData",
    "SnapshotManifest",
    "SnapshotUnavailable",
    "read_manifest",
    "read_snapshot",
    "resolve_snapshot",
]

MANIFEST_FILE = "manifest.json"


class SnapshotUnavailable(RuntimeError):
    """A snapshot cannot be found, fetched or read; the message says which and why."""


class SnapshotManifest(BaseModel):
    """``manifest.json``: what a snapshot holds and what it was made against."""

    model_config = ConfigDict(extra="ignore")

    id: str
    digest: str
    """Of the files' contents: two snapshots with the same digest hold the same rows."""
    files: dict[str, str]
    """Split name (train, eval, general_eval, general_probe, general_pool) -> file name."""
    source: str = "wiki"
    created_at: str = ""
    counts: dict[str, int] = {}
    general_share: float = 0.10
    seed: int = 0
    system_prompt: str = ""
    fresh_against: str | None = None
    """The snapshot the champion was trained on when this one was made: fresh rows are new to
    it."""
    mapping_digest: str = ""
    """Of the question mapping the pairs were built with."""


@dataclass
class SnapshotData:
    """A snapshot's location, manifest and splits as ``datasets`` loaded them."""

    location: str
    manifest: SnapshotManifest
    splits: dict[str, Dataset]

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def digest(self) -> str:
        return self.manifest.digest


def resolve_snapshot(ref: str, snapshots_dir: Path, tracking_uri: str | None = None) -> str:
    """A snapshot's location: one published to the tracking server (``runs:/...``, fetched
    into ``snapshots_dir``), a URL or directory as given, or an id under ``snapshots_dir``."""
    from wikitune.mlflow import exchange

    if ref.startswith(exchange.ARTIFACT_SCHEMES):
        if not tracking_uri:
            raise SnapshotUnavailable(f"snapshot {ref} is on a tracking server, and none is set")
        try:
            return str(exchange.fetch_snapshot(tracking_uri, ref, snapshots_dir))
        except Exception as error:  # MLflow raises several kinds for an unreachable artifact
            raise SnapshotUnavailable(
                f"cannot fetch snapshot {ref} from {tracking_uri}: {type(error).__name__}: {error}"
            ) from error
    if "://" in ref or Path(ref).is_dir():
        return ref if "://" in ref else str(Path(ref).resolve())
    candidate = snapshots_dir / ref
    if candidate.is_dir():
        return str(candidate)
    raise SnapshotUnavailable(
        f"no snapshot {ref!r}: not a URL, a directory, or an id in {snapshots_dir}"
    )


def read_manifest(location: str) -> SnapshotManifest:
    """A snapshot's manifest, by path or URL."""
    import fsspec

    path = f"{location.rstrip('/')}/{MANIFEST_FILE}"
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise SnapshotUnavailable(
            f"cannot read the snapshot manifest at {location}: {error}"
        ) from error
    try:
        return SnapshotManifest.model_validate_json(text)
    except ValidationError as error:
        raise SnapshotUnavailable(f"{path} is not a wikitune snapshot manifest: {error}") from error


def read_snapshot(location: str) -> SnapshotData:
    """The manifest and the splits (train, eval, general_eval, general_probe, general_pool) of a
    snapshot."""
    from datasets import load_dataset

    manifest = read_manifest(location)
    base = location.rstrip("/")
    files = {split: f"{base}/{name}" for split, name in manifest.files.items()}
    try:
        splits = load_dataset("json", data_files=files)
    except (OSError, ValueError) as error:
        raise SnapshotUnavailable(
            f"cannot read the snapshot files at {location}: {error}"
        ) from error
    return SnapshotData(location=location, manifest=manifest, splits=dict(splits))
