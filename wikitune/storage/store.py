"""The DuckDB store: the only code that speaks SQL. Every write that must not be split (pages and
the cursor that covers them) happens in one transaction here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from wikitune.storage.schema import MIGRATIONS

__all__ = ["PageFailure", "Store", "StoredPage", "SyncBatch", "SyncState"]


@dataclass(frozen=True)
class StoredPage:
    """A page as the store keeps it. ``revid``/``wikitext`` None on upsert means keep the old."""

    pageid: int
    ns: int
    title: str
    in_scope: bool
    is_redirect: bool = False
    deleted: bool = False
    categories: tuple[str, ...] = ()
    revid: int | None = None
    rev_timestamp: str | None = None
    sha1: str | None = None
    wikitext: str | None = None


@dataclass(frozen=True)
class SyncState:
    """Where the sync stands: the recent-changes cursor and any full listing in progress."""

    cursor_timestamp: str | None = None
    cursor_rcid: int | None = None
    listed_through_rcid: int = 0
    listing_timestamp: str | None = None
    listing_rcid: int | None = None
    last_sync_at: str | None = None

    @property
    def has_cursor(self) -> bool:
        return self.cursor_timestamp is not None


@dataclass(frozen=True)
class PageFailure:
    pageid: int
    title: str
    reason: str


@dataclass
class SyncBatch:
    """Everything one step of a sync writes, committed together or not at all."""

    pages: list[StoredPage] = field(default_factory=list)
    failures: list[PageFailure] = field(default_factory=list)
    resolved_failures: list[int] = field(default_factory=list)
    seen: list[tuple[int, str]] = field(default_factory=list)  # (rcid, timestamp)
    state: SyncState | None = None  # the new sync state, when it moves


_PAGE_COLUMNS = (
    "pageid, ns, title, revid, rev_timestamp, sha1, wikitext, categories, in_scope,"
    " is_redirect, deleted"
)


def _page_values(page: StoredPage) -> tuple[object, ...]:
    return (
        page.pageid,
        page.ns,
        page.title,
        page.revid,
        page.rev_timestamp,
        page.sha1,
        page.wikitext,
        list(page.categories),
        page.in_scope,
        page.is_redirect,
        page.deleted,
    )


class Store:
    """One DuckDB file holding the pages, the sync cursor and (later) QA pairs and snapshots.

    DuckDB allows one writing process: open the store in the process that syncs and builds;
    the training side reads snapshot files instead.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect(str(self.path))
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            with self.transaction():
                self.db.execute(sql)
                self.db.execute("INSERT INTO schema_version VALUES (?)", [version])

    @property
    def schema_version(self) -> int:
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- sources ---------------------------------------------------------------------------

    def record_source(self, name: str, spec: dict[str, Any]) -> None:
        """Remember a source's settings (the caller leaves secrets out)."""
        self.db.execute(
            """INSERT INTO sources (name, spec) VALUES (?, ?)
               ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
                   updated_at = now()""",
            [name, json.dumps(spec, sort_keys=True)],
        )

    def source_spec(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT spec FROM sources WHERE name = ?", [name]).fetchone()
        return json.loads(row[0]) if row else None

    def source_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM sources ORDER BY name").fetchall()]

    # -- sync state ------------------------------------------------------------------------

    def sync_state(self, source: str) -> SyncState:
        row = self.db.execute(
            """SELECT cursor_timestamp, cursor_rcid, listed_through_rcid, listing_timestamp,
                      listing_rcid, CAST(last_sync_at AS VARCHAR)
               FROM sync_state WHERE source = ?""",
            [source],
        ).fetchone()
        if row is None:
            return SyncState()
        return SyncState(row[0], row[1], row[2] or 0, row[3], row[4], row[5])

    def _write_state(self, source: str, state: SyncState) -> None:
        self.db.execute(
            """INSERT INTO sync_state VALUES (?, ?, ?, ?, ?, ?, current_timestamp)
               ON CONFLICT (source) DO UPDATE SET
                   cursor_timestamp = excluded.cursor_timestamp,
                   cursor_rcid = excluded.cursor_rcid,
                   listed_through_rcid = excluded.listed_through_rcid,
                   listing_timestamp = excluded.listing_timestamp,
                   listing_rcid = excluded.listing_rcid,
                   last_sync_at = excluded.last_sync_at""",
            [
                source,
                state.cursor_timestamp,
                state.cursor_rcid,
                state.listed_through_rcid,
                state.listing_timestamp,
                state.listing_rcid,
            ],
        )

    def save_sync_state(self, source: str, state: SyncState) -> None:
        with self.transaction():
            self._write_state(source, state)

    def seen_rcids(self, source: str, since: str) -> set[int]:
        """rcids already applied whose rows are at or after ``since`` (the overlap window)."""
        rows = self.db.execute(
            "SELECT rcid FROM seen_changes WHERE source = ? AND timestamp >= ?", [source, since]
        ).fetchall()
        return {r[0] for r in rows}

    def forget_seen_before(self, source: str, before: str) -> None:
        with self.transaction():
            self.db.execute(
                "DELETE FROM seen_changes WHERE source = ? AND timestamp < ?", [source, before]
            )

    # -- pages -----------------------------------------------------------------------------

    def apply(self, source: str, batch: SyncBatch) -> None:
        """Write a sync step's pages, failures, seen rcids and new cursor in one transaction."""
        with self.transaction():
            if batch.pages:
                # One statement over column lists: executemany costs ~3 ms a row in DuckDB.
                columns = list(zip(*(_page_values(p) for p in batch.pages), strict=True))
                self.db.execute(
                    f"""INSERT INTO pages ({_PAGE_COLUMNS}, source)
                        SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), unnest(?),
                               unnest(?), unnest(?::VARCHAR[][]), unnest(?), unnest(?),
                               unnest(?), ?
                        ON CONFLICT (source, pageid) DO UPDATE SET
                            ns = excluded.ns, title = excluded.title,
                            revid = coalesce(excluded.revid, pages.revid),
                            rev_timestamp = coalesce(excluded.rev_timestamp, pages.rev_timestamp),
                            sha1 = coalesce(excluded.sha1, pages.sha1),
                            wikitext = coalesce(excluded.wikitext, pages.wikitext),
                            categories = excluded.categories, in_scope = excluded.in_scope,
                            is_redirect = excluded.is_redirect, deleted = excluded.deleted,
                            updated_at = now()""",
                    [*(list(column) for column in columns), source],
                )
            if batch.failures:
                self.db.executemany(
                    """INSERT INTO page_failures (source, pageid, title, reason) VALUES (?, ?, ?, ?)
                       ON CONFLICT (source, pageid) DO UPDATE SET title = excluded.title,
                           reason = excluded.reason, failed_at = now()""",
                    [[source, f.pageid, f.title, f.reason] for f in batch.failures],
                )
            if batch.resolved_failures:
                self.db.execute(
                    "DELETE FROM page_failures WHERE source = ? AND list_contains(?, pageid)",
                    [source, batch.resolved_failures],
                )
            if batch.seen:
                rcids, timestamps = zip(*batch.seen, strict=True)
                self.db.execute(
                    """INSERT OR IGNORE INTO seen_changes
                       SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[])""",
                    [source, list(rcids), list(timestamps)],
                )
            if batch.state is not None:
                self._write_state(source, batch.state)

    def pages_by_id(self, source: str, pageids: Iterable[int]) -> dict[int, StoredPage]:
        """Stored rows (without wikitext) for these pageids."""
        ids = sorted(set(pageids))
        if not ids:
            return {}
        rows = self.db.execute(
            """SELECT pageid, ns, title, in_scope, is_redirect, deleted, categories, revid,
                       rev_timestamp, sha1
                FROM pages WHERE source = ? AND list_contains(?, pageid)""",
            [source, ids],
        ).fetchall()
        return {
            r[0]: StoredPage(
                pageid=r[0],
                ns=r[1],
                title=r[2],
                in_scope=r[3],
                is_redirect=r[4],
                deleted=r[5],
                categories=tuple(r[6]),
                revid=r[7],
                rev_timestamp=r[8],
                sha1=r[9],
            )
            for r in rows
        }

    def pageids_by_title(self, source: str, titles: Iterable[str]) -> dict[str, int]:
        """Pageids of live stored pages with these titles."""
        wanted = sorted(set(titles))
        if not wanted:
            return {}
        rows = self.db.execute(
            """SELECT title, pageid FROM pages
               WHERE source = ? AND NOT deleted AND list_contains(?, title)""",
            [source, wanted],
        ).fetchall()
        return {title: pageid for title, pageid in rows}

    def live_pageids(self, source: str) -> set[int]:
        """Pageids of stored pages that are in scope (what a full listing must account for)."""
        rows = self.db.execute(
            "SELECT pageid FROM pages WHERE source = ? AND in_scope", [source]
        ).fetchall()
        return {r[0] for r in rows}

    def failed_pageids(self, source: str) -> set[int]:
        rows = self.db.execute(
            "SELECT pageid FROM page_failures WHERE source = ?", [source]
        ).fetchall()
        return {r[0] for r in rows}

    def failures(self, source: str) -> list[PageFailure]:
        rows = self.db.execute(
            "SELECT pageid, title, reason FROM page_failures WHERE source = ? ORDER BY pageid",
            [source],
        ).fetchall()
        return [PageFailure(*r) for r in rows]

    def in_scope_pages(self, source: str) -> Iterator[tuple[int, str, int]]:
        """(pageid, title, revid) of every in-scope page, by pageid."""
        cursor = self.db.execute(
            """SELECT pageid, title, revid FROM pages WHERE source = ? AND in_scope
               ORDER BY pageid""",
            [source],
        )
        while rows := cursor.fetchmany(1000):
            yield from rows

    def wikitext(self, source: str, pageid: int) -> str | None:
        row = self.db.execute(
            "SELECT wikitext FROM pages WHERE source = ? AND pageid = ?", [source, pageid]
        ).fetchone()
        return row[0] if row else None

    # -- runs and status -------------------------------------------------------------------

    def record_run(self, source: str, mode: str, counts: dict[str, int], requests: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO sync_runs (source, mode, counts, requests) VALUES (?, ?, ?, ?)",
                [source, mode, json.dumps(counts), requests],
            )

    def page_counts(self, source: str) -> dict[str, int]:
        row = self.db.execute(
            """SELECT count(*) FILTER (WHERE in_scope),
                      count(*) FILTER (WHERE is_redirect AND NOT deleted),
                      count(*) FILTER (WHERE deleted),
                      count(*) FILTER (WHERE NOT in_scope AND NOT deleted AND NOT is_redirect),
                      count(*)
               FROM pages WHERE source = ?""",
            [source],
        ).fetchone()
        assert row is not None
        failures = self.db.execute(
            "SELECT count(*) FROM page_failures WHERE source = ?", [source]
        ).fetchone()
        return {
            "in_scope": row[0],
            "redirects": row[1],
            "deleted": row[2],
            "out_of_scope": row[3],
            "stored": row[4],
            "failed": failures[0] if failures else 0,
        }

    def last_run(self, source: str) -> dict[str, Any] | None:
        row = self.db.execute(
            """SELECT mode, counts, requests, CAST(finished_at AS VARCHAR) FROM sync_runs
               WHERE source = ? ORDER BY id DESC LIMIT 1""",
            [source],
        ).fetchone()
        if row is None:
            return None
        return {
            "mode": row[0],
            "counts": json.loads(row[1]),
            "requests": row[2],
            "finished_at": row[3],
        }
