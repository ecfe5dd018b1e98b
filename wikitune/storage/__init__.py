"""The DuckDB store: schema, migrations and the Store class (the only code that speaks SQL)."""

from wikitune.storage.store import PageFailure, Store, StoredPage, SyncBatch, SyncState

__all__ = ["PageFailure", "Store", "StoredPage", "SyncBatch", "SyncState"]
