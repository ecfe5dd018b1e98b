"""Which snapshot the champion was trained on: the registry knows the champion, the store needs
its snapshot, because "changed" means changed since what the champion learned. A candidate that
lost or failed moves nothing here, so its changes stay due."""

from __future__ import annotations

from wikitune.mlflow import registry
from wikitune.storage import Store

__all__ = ["follow_champion"]


def follow_champion(store: Store, tracking_uri: str, source: str) -> str | None:
    """Record in the store the snapshot of the registry's current champion (a promotion, a
    rollback, or an alias moved by hand in the MLflow UI); returns its id, None without a
    champion. A champion trained on a snapshot this store never made changes nothing."""
    current = registry.champion(tracking_uri, source)
    snapshot_id = current.tags.get("snapshot_id") if current is not None else None
    if snapshot_id and store.snapshot(snapshot_id) is not None:
        store.mark_champion(snapshot_id)
    return snapshot_id
