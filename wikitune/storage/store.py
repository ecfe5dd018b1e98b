"""The DuckDB store: the only code that speaks SQL. Every write that must not be split (pages and
the cursor that covers them) happens in one transaction here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
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
class PageChange:
    """One change a sync applied to a page: its kind (new, edited, moved, deleted, restored,
    entered_scope, left_scope), the page and the revision it now has (None when unknown)."""

    kind: str
    pageid: int
    title: str
    revid: int | None = None


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


@dataclass(frozen=True)
class QaPair:
    """One chat-format QA pair and where it came from."""

    pair_id: str
    pageid: int
    revid: int
    title: str
    field: str
    lang: str
    split: str
    question: str
    answer: str
    fact_hash: str
    fact_values: tuple[str, ...] = ()
    """The values the answer states (each item of a list value; the lead's text)."""


@dataclass(frozen=True)
class ValueRejection:
    """A value or lead of a page that the quality gate refused, and why."""

    pageid: int
    title: str
    field: str
    reason: str
    value: str


@dataclass(frozen=True)
class BuildTodo:
    """Pages to (re)parse, and pageids whose pairs must all retire (deleted or out of scope)."""

    pages: list[StoredPage]
    gone: list[int]


@dataclass(frozen=True)
class BuildResult:
    new: int = 0
    changed: int = 0
    retired: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class SnapshotAnswer:
    """What a snapshot taught an eval question's answer to be: the sentence and its values."""

    answer: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class SnapshotRecord:
    """An immutable dataset snapshot: its files live under ``path``."""

    id: str
    source: str
    digest: str
    counts: dict[str, int]
    path: str
    created_at: str
    trained_at: str | None = None
    champion_at: str | None = None


_PAIR_FIELDS = (
    "pair_id, pageid, revid, title, field, lang, split, question, answer, fact_hash, fact_values"
)

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
    the training side reads snapshot files instead. Flows that overlap (a scheduled sync while a
    retrain cycle syncs) take turns: opening waits up to ``lock_timeout`` seconds for the file.
    """

    def __init__(self, path: Path | str, *, lock_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self._connect(lock_timeout)
        self._migrate()

    def _connect(self, lock_timeout: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

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

    def content_namespaces(self, source: str) -> list[int] | None:
        """The wiki's content namespaces as last read from its siteinfo, or None."""
        row = self.db.execute(
            "SELECT content_namespaces FROM site_namespaces WHERE source = ?", [source]
        ).fetchone()
        return list(row[0]) if row else None

    def save_content_namespaces(self, source: str, namespaces: list[int]) -> None:
        self.db.execute(
            """INSERT INTO site_namespaces (source, content_namespaces) VALUES (?, ?)
               ON CONFLICT (source) DO UPDATE SET
                   content_namespaces = excluded.content_namespaces, fetched_at = now()""",
            [source, sorted(namespaces)],
        )

    def source_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM sources ORDER BY name").fetchall()]

    def source_name(self, name: str | None = None) -> str:
        """``name`` when the store knows it, else the store's only source; ValueError otherwise."""
        names = self.source_names()
        if name is not None and name in names:
            return name
        if name is None and len(names) == 1:
            return names[0]
        found = ", ".join(names) or "none"
        wanted = f"source {name!r} is not" if name else "no single source is"
        raise ValueError(
            f"{wanted} recorded in the store at {self.path} (sources: {found});"
            " give the wiki source (--api-url and --category/--namespace) on the first sync"
        )

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

    def leave_scope_outside(self, source: str, namespaces: Iterable[int]) -> list[str]:
        """Take in-scope pages outside ``namespaces`` out of scope (their pairs retire at the
        next build); returns their titles."""
        with self.transaction():
            rows = self.db.execute(
                """UPDATE pages SET in_scope = false, updated_at = now()
                   WHERE source = ? AND in_scope AND NOT list_contains(?, ns)
                   RETURNING title""",
                [source, sorted(set(namespaces))],
            ).fetchall()
        return sorted(r[0] for r in rows)

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

    def in_scope_wikitext(self, source: str) -> Iterator[str]:
        """The wikitext of every in-scope page, by pageid."""
        cursor = self.db.execute(
            """SELECT wikitext FROM pages WHERE source = ? AND in_scope AND wikitext IS NOT NULL
               ORDER BY pageid""",
            [source],
        )
        while rows := cursor.fetchmany(200):
            yield from (r[0] for r in rows)

    def wikitext(self, source: str, pageid: int) -> str | None:
        row = self.db.execute(
            "SELECT wikitext FROM pages WHERE source = ? AND pageid = ?", [source, pageid]
        ).fetchone()
        return row[0] if row else None

    def corpus_texts(self) -> tuple[list[str], list[str]]:
        """(in-scope wikitext, active "question\nanswer" pairs) across sources: the text a
        local tokenizer and base model learn from."""
        pages = self.db.execute(
            "SELECT wikitext FROM pages WHERE in_scope AND wikitext IS NOT NULL ORDER BY pageid"
        ).fetchall()
        pairs = self.db.execute(
            """SELECT question || chr(10) || answer FROM qa_pairs WHERE retired_at IS NULL
               ORDER BY pair_id"""
        ).fetchall()
        return [r[0] for r in pages], [r[0] for r in pairs]

    # -- QA pairs ------------------------------------------------------------------------

    def build_mapping_digest(self, source: str) -> str | None:
        row = self.db.execute(
            "SELECT mapping_digest FROM build_state WHERE source = ?", [source]
        ).fetchone()
        return row[0] if row else None

    def set_build_mapping_digest(self, source: str, digest: str) -> None:
        with self.transaction():
            self.db.execute(
                """INSERT INTO build_state VALUES (?, ?)
                   ON CONFLICT (source) DO UPDATE SET mapping_digest = excluded.mapping_digest""",
                [source, digest],
            )

    def pages_to_build(self, source: str, *, rebuild_all: bool = False) -> BuildTodo:
        """In-scope pages whose revision was not built yet (all of them with ``rebuild_all``),
        and pages with active pairs or recorded rejections that are no longer in scope."""
        rows = self.db.execute(
            """SELECT p.pageid, p.ns, p.title, p.revid, p.wikitext, p.categories
               FROM pages p LEFT JOIN page_builds b ON b.source = p.source AND b.pageid = p.pageid
               WHERE p.source = ? AND p.in_scope AND p.wikitext IS NOT NULL
                 AND (? OR b.revid IS NULL OR b.revid <> p.revid)
               ORDER BY p.pageid""",
            [source, rebuild_all],
        ).fetchall()
        pages = [
            StoredPage(
                pageid=r[0],
                ns=r[1],
                title=r[2],
                in_scope=True,
                revid=r[3],
                wikitext=r[4],
                categories=tuple(r[5]),
            )
            for r in rows
        ]
        gone = self.db.execute(
            """SELECT DISTINCT b.pageid FROM (
                   SELECT pageid FROM qa_pairs WHERE source = $1 AND retired_at IS NULL
                   UNION SELECT pageid FROM value_rejections WHERE source = $1
               ) b LEFT JOIN pages p ON p.source = $1 AND p.pageid = b.pageid
               WHERE NOT coalesce(p.in_scope, false) ORDER BY b.pageid""",
            [source],
        ).fetchall()
        return BuildTodo(pages=pages, gone=[r[0] for r in gone])

    def apply_build(
        self,
        source: str,
        revids: dict[int, int],
        built: dict[int, list[QaPair]],
        failures: dict[int, str],
        rejections: Iterable[ValueRejection] = (),
    ) -> BuildResult:
        """Write the pairs of freshly parsed pages in one transaction: insert new ones, update
        changed ones, retire the page's pairs that are no longer produced, and replace the
        pages' recorded rejections."""
        new = changed = retired = unchanged = 0
        with self.transaction():
            known: dict[str, tuple] = {}
            if built:
                rows = self.db.execute(
                    f"""SELECT {_PAIR_FIELDS}, retired_at IS NOT NULL FROM qa_pairs
                        WHERE source = ? AND list_contains(?, pageid)""",
                    [source, list(built)],
                ).fetchall()
                known = {r[0]: r for r in rows}
            upserts: list[QaPair] = []
            produced: set[str] = set()
            for pairs in built.values():
                for pair in pairs:
                    produced.add(pair.pair_id)
                    old = known.get(pair.pair_id)
                    if old is None or old[-1]:
                        new += 1
                    elif tuple(old[4:10]) != (
                        pair.field,
                        pair.lang,
                        pair.split,
                        pair.question,
                        pair.answer,
                        pair.fact_hash,
                    ):
                        changed += 1
                    else:
                        unchanged += 1  # a move only renames: same pair, new title
                        # (values are written to pairs built before they were stored)
                        same_values = tuple(old[10] or ()) == pair.fact_values
                        if (old[2], old[3]) == (pair.revid, pair.title) and same_values:
                            continue
                    upserts.append(pair)
            if upserts:
                columns = [
                    list(c)
                    for c in zip(
                        *(
                            (
                                p.pair_id,
                                p.pageid,
                                p.revid,
                                p.title,
                                p.field,
                                p.lang,
                                p.split,
                                p.question,
                                p.answer,
                                p.fact_hash,
                                list(p.fact_values),
                            )
                            for p in upserts
                        ),
                        strict=True,
                    )
                ]
                self.db.execute(
                    f"""INSERT INTO qa_pairs ({_PAIR_FIELDS}, source)
                        SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?),
                               unnest(?), unnest(?), unnest(?), unnest(?), unnest(?),
                               unnest(?::VARCHAR[][]), ?
                        ON CONFLICT (source, pair_id) DO UPDATE SET
                            revid = excluded.revid, title = excluded.title,
                            split = excluded.split,
                            changed_at = CASE
                                WHEN qa_pairs.retired_at IS NOT NULL
                                  OR qa_pairs.question <> excluded.question
                                  OR qa_pairs.answer <> excluded.answer
                                  OR qa_pairs.fact_hash <> excluded.fact_hash
                                THEN now() ELSE qa_pairs.changed_at END,
                            question = excluded.question, answer = excluded.answer,
                            fact_hash = excluded.fact_hash, fact_values = excluded.fact_values,
                            retired_at = NULL""",
                    [*columns, source],
                )
            stale = [k for k, r in known.items() if k not in produced and not r[-1]]
            if stale:
                self.db.execute(
                    """UPDATE qa_pairs SET retired_at = now()
                       WHERE source = ? AND list_contains(?, pair_id)""",
                    [source, stale],
                )
                retired += len(stale)
            done = {pageid: failures.get(pageid) for pageid in revids}
            self.db.execute(
                """INSERT INTO page_builds (source, pageid, revid, failure)
                   SELECT ?, unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[])
                   ON CONFLICT (source, pageid) DO UPDATE SET revid = excluded.revid,
                       failure = excluded.failure, built_at = now()""",
                [source, list(done), [revids[p] for p in done], list(done.values())],
            )
            self.db.execute(
                "DELETE FROM value_rejections WHERE source = ? AND list_contains(?, pageid)",
                [source, list(done)],
            )
            # A field refused twice on one page (two aliases) keeps its last refusal.
            last = {(r.pageid, r.field): r for r in rejections}
            if last:
                self.db.executemany(
                    "INSERT INTO value_rejections VALUES (?, ?, ?, ?, ?, ?)",
                    [(source, *astuple(r)) for r in last.values()],
                )
        return BuildResult(new, changed, retired, unchanged)

    def retire_pages(self, source: str, pageids: list[int]) -> int:
        """Retire every active pair of these pages (deleted, or out of scope); returns how many."""
        if not pageids:
            return 0
        with self.transaction():
            row = self.db.execute(
                """SELECT count(*) FROM qa_pairs WHERE source = ? AND retired_at IS NULL
                   AND list_contains(?, pageid)""",
                [source, pageids],
            ).fetchone()
            self.db.execute(
                """UPDATE qa_pairs SET retired_at = now()
                   WHERE source = ? AND retired_at IS NULL AND list_contains(?, pageid)""",
                [source, pageids],
            )
            for table in ("page_builds", "value_rejections"):
                self.db.execute(
                    f"DELETE FROM {table} WHERE source = ? AND list_contains(?, pageid)",
                    [source, pageids],
                )
        return int(row[0]) if row else 0

    def active_pairs(self, source: str) -> list[QaPair]:
        rows = self.db.execute(
            f"""SELECT {_PAIR_FIELDS} FROM qa_pairs WHERE source = ? AND retired_at IS NULL
                ORDER BY pair_id""",
            [source],
        ).fetchall()
        return [QaPair(*r[:-1], tuple(r[-1] or ())) for r in rows]

    def build_failures(self, source: str) -> list[tuple[int, str]]:
        return self.db.execute(
            """SELECT pageid, failure FROM page_builds WHERE source = ? AND failure IS NOT NULL
               ORDER BY pageid""",
            [source],
        ).fetchall()

    def value_rejections(self, source: str) -> list[ValueRejection]:
        """The values and leads the quality gate refused, as of each page's last build."""
        rows = self.db.execute(
            """SELECT pageid, title, field, reason, value FROM value_rejections
               WHERE source = ? ORDER BY reason, title, field""",
            [source],
        ).fetchall()
        return [ValueRejection(*r) for r in rows]

    def qa_counts(self, source: str) -> dict[str, int]:
        row = self.db.execute(
            """SELECT count(*) FILTER (WHERE retired_at IS NULL),
                      count(*) FILTER (WHERE retired_at IS NOT NULL),
                      count(DISTINCT pageid) FILTER (WHERE retired_at IS NULL)
               FROM qa_pairs WHERE source = ?""",
            [source],
        ).fetchone()
        assert row is not None
        return {"active": row[0], "retired": row[1], "pages": row[2]}

    # -- snapshots -------------------------------------------------------------------------

    def record_snapshot(
        self,
        record: SnapshotRecord,
        fact_hashes: Iterable[str],
        eval_answers: Mapping[str, SnapshotAnswer] | None = None,
    ) -> None:
        """Record a snapshot, its facts, and its eval questions' answers by pair id."""
        answers = eval_answers or {}
        with self.transaction():
            self.db.execute(
                """INSERT INTO snapshots (id, source, digest, counts, path)
                   VALUES (?, ?, ?, ?, ?)""",
                [record.id, record.source, record.digest, json.dumps(record.counts), record.path],
            )
            self.db.execute(
                """INSERT INTO snapshot_facts SELECT ?, unnest(?::VARCHAR[])""",
                [record.id, sorted(set(fact_hashes))],
            )
            if answers:
                self.db.execute(
                    """INSERT INTO snapshot_answers (snapshot_id, pair_id, answer, fact_values)
                       SELECT ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),
                              unnest(?::VARCHAR[][])""",
                    [
                        record.id,
                        list(answers),
                        [a.answer for a in answers.values()],
                        [list(a.values) for a in answers.values()],
                    ],
                )

    def _snapshots(
        self, where: str, params: list[Any], order: str = "created_at"
    ) -> list[SnapshotRecord]:
        rows = self.db.execute(
            f"""SELECT id, source, digest, counts, path, CAST(created_at AS VARCHAR),
                       CAST(trained_at AS VARCHAR), CAST(champion_at AS VARCHAR)
                FROM snapshots WHERE {where} ORDER BY {order} DESC, id DESC""",
            params,
        ).fetchall()
        return [SnapshotRecord(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        found = self._snapshots("id = ?", [snapshot_id])
        return found[0] if found else None

    def latest_snapshot(self, source: str, *, trained: bool = False) -> SnapshotRecord | None:
        where = "source = ?" + (" AND trained_at IS NOT NULL" if trained else "")
        found = self._snapshots(where, [source], "trained_at" if trained else "created_at")
        return found[0] if found else None

    def champion_snapshot(self, source: str) -> SnapshotRecord | None:
        """The snapshot the champion was trained on, as last recorded: freshness is measured
        against it."""
        found = self._snapshots("source = ? AND champion_at IS NOT NULL", [source], "champion_at")
        return found[0] if found else None

    def mark_trained(self, snapshot_id: str) -> None:
        """Record that a retrain used this snapshot, whether or not its candidate won."""
        with self.transaction():
            self.db.execute(
                "UPDATE snapshots SET trained_at = now() WHERE id = ? AND trained_at IS NULL",
                [snapshot_id],
            )

    def mark_champion(self, snapshot_id: str) -> bool:
        """Record that the champion was trained on this snapshot (a promotion or a rollback);
        False when it already was the champion's."""
        current = self.snapshot(snapshot_id)
        if current is None:
            raise KeyError(f"no snapshot {snapshot_id!r} in the store")
        champion = self.champion_snapshot(current.source)
        if champion is not None and champion.id == snapshot_id:
            return False
        with self.transaction():
            self.db.execute(
                """UPDATE snapshots
                   SET champion_at = now(), trained_at = coalesce(trained_at, now())
                   WHERE id = ?""",
                [snapshot_id],
            )
        return True

    def snapshot_facts(self, snapshot_id: str) -> set[str]:
        rows = self.db.execute(
            "SELECT fact_hash FROM snapshot_facts WHERE snapshot_id = ?", [snapshot_id]
        ).fetchall()
        return {r[0] for r in rows}

    def snapshot_answers(self, snapshot_id: str) -> dict[str, SnapshotAnswer]:
        """A snapshot's answers to its eval questions and their values, by pair id (empty for
        snapshots made before answers were recorded; no values before values were)."""
        rows = self.db.execute(
            """SELECT pair_id, answer, fact_values FROM snapshot_answers
               WHERE snapshot_id = ?""",
            [snapshot_id],
        ).fetchall()
        return {r[0]: SnapshotAnswer(r[1], tuple(r[2] or ())) for r in rows}

    def pairs_changed_since(self, source: str, snapshot: SnapshotRecord | None) -> int:
        """Active pairs whose fact was added or changed since ``snapshot`` (all, without one)."""
        row = self.db.execute(
            """SELECT count(*) FROM qa_pairs q WHERE q.source = ? AND q.retired_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM snapshot_facts f
                               WHERE f.snapshot_id = ? AND f.fact_hash = q.fact_hash)""",
            [source, snapshot.id if snapshot else ""],
        ).fetchone()
        return int(row[0]) if row else 0

    def pairs_changed_since_champion(self, source: str) -> int:
        """Active pairs whose fact the champion was not trained on: what a retrain would add."""
        return self.pairs_changed_since(source, self.champion_snapshot(source))

    # -- runs and status -------------------------------------------------------------------

    def record_run(
        self,
        source: str,
        mode: str,
        counts: dict[str, int],
        requests: int,
        changes: Sequence[PageChange] = (),
    ) -> int:
        """Record a finished sync: its counts, and which pages it changed and how; its id."""
        with self.transaction():
            (run_id,) = self.db.execute(
                """INSERT INTO sync_runs (source, mode, counts, requests) VALUES (?, ?, ?, ?)
                   RETURNING id""",
                [source, mode, json.dumps(counts), requests],
            ).fetchone() or (0,)
            if changes:
                self.db.executemany(
                    """INSERT INTO sync_run_pages (run_id, pageid, title, kind, revid)
                       VALUES (?, ?, ?, ?, ?)""",
                    [[run_id, c.pageid, c.title, c.kind, c.revid] for c in changes],
                )
        return int(run_id)

    def changes_since(
        self, source: str, since: str | None, *, through_run: int | None = None
    ) -> tuple[int, list[PageChange]]:
        """How many syncs ran after ``since`` (all, when None), up to sync run ``through_run``
        (all, when None), and the distinct pages they changed: one per page, with its latest
        title and revision and its kinds of change joined by ``+`` (``edited+moved``), most
        recently changed first."""
        window = """r.source = ? AND (? IS NULL OR r.finished_at > CAST(? AS TIMESTAMP))
                    AND (? IS NULL OR r.id <= ?)"""
        bounds = [source, since, since, through_run, through_run]
        row = self.db.execute(f"SELECT count(*) FROM sync_runs r WHERE {window}", bounds)
        syncs = (row.fetchone() or (0,))[0]
        rows = self.db.execute(
            f"""SELECT c.pageid, arg_max(c.title, r.id), max(c.revid),
                       string_agg(DISTINCT c.kind, '+' ORDER BY c.kind), max(r.id)
                FROM sync_run_pages c JOIN sync_runs r ON r.id = c.run_id
                WHERE {window}
                GROUP BY c.pageid ORDER BY max(r.id) DESC, arg_max(c.title, r.id)""",
            bounds,
        ).fetchall()
        return syncs, [PageChange(k, pageid, title, revid) for pageid, title, revid, k, _ in rows]

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
