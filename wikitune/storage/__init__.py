"""The DuckDB store: schema, migrations and the Store class (the only code that speaks SQL)."""

from wikitune.storage.store import (
    BuildResult,
    BuildTodo,
    PageChange,
    PageFailure,
    QaPair,
    SnapshotAnswer,
    SnapshotRecord,
    Store,
    StoredPage,
    SyncBatch,
    SyncState,
    ValueRejection,
)

__all__ = [
    "BuildResult",
    "BuildTodo",
    "PageChange",
    "PageFailure",
    "QaPair",
    "SnapshotAnswer",
    "SnapshotRecord",
    "Store",
    "StoredPage",
    "SyncBatch",
    "SyncState",
    "ValueRejection",
]
