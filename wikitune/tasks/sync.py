"""Keep the store equal to the wiki: a full listing of the scope (first backfill, retention gaps,
reconciles) and the incremental application of recent changes.

Every step reads the wiki's *current* state of the pages it touches, so applying a step twice
changes nothing and counts nothing twice; each step commits its pages with the cursor that
covers them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta

from wikitune.storage import PageChange, PageFailure, Store, StoredPage, SyncBatch, SyncState
from wikitune.tasks.mediawiki import (
    BATCH_SIZE,
    MediaWikiClient,
    PageState,
    RcRow,
    content_namespaces,
    fetch_pages,
    list_scope,
    newest_rc_position,
    oldest_rc_timestamp,
    probe_pages,
    recent_changes,
    resolve_titles,
    transcluding_pages,
)
from wikitune.tasks.source import WikiSource

__all__ = [
    "SyncCounts",
    "apply_recent_changes",
    "full_listing",
    "leave_scope_outside",
    "retention_gap",
    "scoped_to_content",
    "touched_by",
]

log = logging.getLogger(__name__)

TEMPLATE_NAMESPACE = 10
# Keep seen rcids a day beyond the overlap window, for rows the wiki writes late.
SEEN_MARGIN = timedelta(days=1)


@dataclass
class SyncCounts:
    """What a sync changed in the store, page by page: counts by kind of change, and which
    pages (``changes``: one per page and kind, in the order they were applied)."""

    new: int = 0
    edited: int = 0
    moved: int = 0
    deleted: int = 0
    restored: int = 0
    entered_scope: int = 0
    left_scope: int = 0
    failed: int = 0
    changes: list[PageChange] = field(default_factory=list)

    def __iadd__(self, other: SyncCounts) -> SyncCounts:
        for name, value in other.as_dict().items():
            setattr(self, name, getattr(self, name) + value)
        self.changes += other.changes
        return self

    def note(self, kind: str, page: StoredPage) -> None:
        """Count a change of ``kind`` (a counter's name) to ``page``."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.changes.append(PageChange(kind, page.pageid, page.title, page.revid))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "changes"}

    @property
    def changed(self) -> int:
        return sum(v for k, v in self.as_dict().items() if k != "failed")


def _shift(timestamp: str, delta: timedelta) -> str:
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (moment + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; a log line every tenth of the work otherwise."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done = 0
    step = max(total // 10, 1)

    def advance(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // step != before // step or done == total:
            log.info("%s: %d/%d", description, done, total)

    yield advance


def scoped_to_content(
    client: MediaWikiClient, store: Store, source: WikiSource, *, refresh: bool = False
) -> WikiSource:
    """The source as this sync scopes it: a category scope without namespaces covers the wiki's
    content namespaces (its articles), not the subcategories, files or templates filed in it.
    The namespaces are read from the wiki's siteinfo once and kept in the store; ``refresh``
    (a full listing) reads them again."""
    if not source.categories or source.namespaces:
        return source
    namespaces = None if refresh else store.content_namespaces(source.name)
    if namespaces is None:
        namespaces = content_namespaces(client)
        store.save_content_namespaces(source.name, namespaces)
    return source.model_copy(update={"namespaces": namespaces})


def leave_scope_outside(store: Store, source: WikiSource) -> SyncCounts:
    """Take stored pages outside the source's namespaces out of scope: pages a store kept from
    before its scope followed the content namespaces, or before ``namespaces`` narrowed."""
    if not source.namespaces:
        return SyncCounts()
    titles = store.leave_scope_outside(source.name, source.namespaces)
    if titles:
        log.info(
            "%s: %d pages outside namespaces %s left scope: %s",
            source.name,
            len(titles),
            source.namespaces,
            ", ".join(titles[:10]) + (" …" if len(titles) > 10 else ""),
        )
    return SyncCounts(left_scope=len(titles))


def _in_scope(state: PageState, source: WikiSource) -> bool:
    # The API's clcategories filter returned only scope categories, whatever their localised
    # namespace prefix, so any category on the page means membership.
    if not state.exists or state.redirect:
        return False
    if source.namespaces and state.ns not in source.namespaces:
        return False
    return bool(state.categories) if source.categories else True


def _stored(state: PageState, in_scope: bool) -> StoredPage:
    return StoredPage(
        pageid=state.pageid,
        ns=state.ns,
        title=state.title,
        in_scope=in_scope,
        is_redirect=state.redirect,
        categories=state.categories,
        revid=state.revid,
        rev_timestamp=state.timestamp,
        sha1=state.sha1,
        wikitext=state.wikitext,
    )


def _classify(
    before: StoredPage | None, after: StoredPage, created: set[int] | None, counts: SyncCounts
) -> None:
    if after.in_scope:
        if before is None:
            new = created is None or after.pageid in created
            counts.note("new" if new else "entered_scope", after)
        elif before.deleted:
            counts.note("restored", after)
        elif not before.in_scope:
            counts.note("entered_scope", after)
        else:
            if before.title != after.title:
                counts.note("moved", after)
            # A move writes a null revision: same content hash, so it is not an edit.
            if after.sha1 is not None and before.sha1 != after.sha1:
                counts.note("edited", after)
    elif before is not None and before.in_scope:
        counts.note("deleted" if after.deleted else "left_scope", after)


def refresh_pages(
    client: MediaWikiClient,
    store: Store,
    source: WikiSource,
    pageids: Iterable[int],
    *,
    probed: dict[int, PageState] | None = None,
    created: set[int] | None = None,
) -> tuple[SyncBatch, SyncCounts]:
    """Read the wiki's current state of these pages and turn it into store rows and counts.

    Pages known to be in scope from a listing (``probed``) skip the probe. Content is fetched
    only for in-scope pages whose revision the store lacks. ``created`` names pages created in
    this step (None: count every page new to the store as new, as a first backfill does).
    """
    ids = set(pageids)
    stored = store.pages_by_id(source.name, ids)
    failed_before = store.failed_pageids(source.name) & ids
    if created is not None:  # a page that failed before it was ever stored is still new
        created = created | (failed_before - stored.keys())
    states = dict(probed or {})
    unprobed = ids - states.keys()
    states.update({s.pageid: s for s in probe_pages(client, unprobed, source.categories)})

    batch = SyncBatch()
    counts = SyncCounts()
    need_content: list[int] = []
    for pageid in sorted(ids):
        state = states.get(pageid)
        before = stored.get(pageid)
        if state is None or not state.exists:
            if before is not None and not before.deleted:
                after = replace(before, in_scope=False, deleted=True)
                batch.pages.append(after)
                _classify(before, after, created, counts)
            if pageid in failed_before:
                batch.resolved_failures.append(pageid)
            continue
        in_scope = _in_scope(state, source)
        if in_scope and (
            before is None
            or before.revid != state.lastrevid
            or pageid in failed_before
            or before.deleted
        ):
            need_content.append(pageid)
        elif in_scope or (before is not None and (before.in_scope or before.title != state.title)):
            after = _stored(state, in_scope)
            batch.pages.append(after)
            _classify(before, after, created, counts)
        if pageid in failed_before and not in_scope:
            batch.resolved_failures.append(pageid)

    for state in fetch_pages(client, need_content, source.categories):
        before = stored.get(state.pageid)
        if not state.exists:  # deleted between probe and fetch
            if before is not None and not before.deleted:
                after = replace(before, in_scope=False, deleted=True)
                batch.pages.append(after)
                _classify(before, after, created, counts)
            continue
        if state.content_error is not None:
            batch.failures.append(PageFailure(state.pageid, state.title, state.content_error))
            counts.failed += 1
            log.warning("page %s (%d) skipped: %s", state.title, state.pageid, state.content_error)
            continue
        after = _stored(state, _in_scope(state, source))
        if not after.in_scope and (before is None or not before.in_scope):
            continue  # left the scope between probe and fetch and was never ours
        batch.pages.append(after)
        _classify(before, after, created, counts)
        if state.pageid in failed_before:
            batch.resolved_failures.append(state.pageid)
    return batch, counts


def full_listing(client: MediaWikiClient, store: Store, source: WikiSource) -> SyncCounts:
    """Make the store equal the wiki's own listing of the scope.

    Used for the first backfill, after a retention gap and on request. The recent-changes
    position is taken before listing, so changes made during the listing are applied by the
    next incremental step. A killed listing resumes: pages already stored at their latest
    revision are not fetched again.
    """
    name = source.name
    state = store.sync_state(name)
    if state.listing_timestamp is None:
        position = newest_rc_position(client)
        state = replace(state, listing_timestamp=position.timestamp, listing_rcid=position.rcid)
        store.save_sync_state(name, state)
    first_backfill = not state.has_cursor

    listed = list_scope(client, source.categories, source.namespaces)
    stored = store.pages_by_id(name, listed)
    stale = [
        pageid
        for pageid, page in listed.items()
        if pageid not in stored
        or stored[pageid].revid != page.lastrevid
        or not stored[pageid].in_scope
        or stored[pageid].title != page.title
    ]
    # Stored pages the listing no longer has, and failures, are checked one by one.
    unlisted = (store.live_pageids(name) | store.failed_pageids(name)) - listed.keys()
    log.info(
        "listing of %s: %d pages in scope, %d to fetch, %d to re-check",
        name,
        len(listed),
        len(stale),
        len(unlisted),
    )

    counts = SyncCounts()
    created = None if first_backfill else set()
    with _progress(f"Fetching {name}", len(stale) + len(unlisted)) as advance:
        for start in range(0, len(stale), BATCH_SIZE):
            chunk = stale[start : start + BATCH_SIZE]
            batch, step = refresh_pages(
                client,
                store,
                source,
                chunk,
                probed={pageid: listed[pageid] for pageid in chunk},
                created=created,
            )
            store.apply(name, batch)
            counts += step
            advance(len(chunk))
        if unlisted:
            batch, step = refresh_pages(client, store, source, unlisted, created=created)
            store.apply(name, batch)
            counts += step
            advance(len(unlisted))

    assert state.listing_timestamp is not None and state.listing_rcid is not None
    cursor_ts, cursor_rcid = state.listing_timestamp, state.listing_rcid
    if state.has_cursor and (state.cursor_timestamp, state.cursor_rcid) > (cursor_ts, cursor_rcid):
        cursor_ts, cursor_rcid = state.cursor_timestamp, state.cursor_rcid
    done = SyncState(
        cursor_timestamp=cursor_ts,
        cursor_rcid=cursor_rcid,
        listed_through_rcid=max(state.listing_rcid, state.listed_through_rcid),
    )
    store.apply(name, SyncBatch(state=done))
    return counts


def retention_gap(client: MediaWikiClient, state: SyncState) -> str | None:
    """Why the cursor can no longer be trusted, or None: the wiki already dropped recent changes
    newer than the cursor when its oldest kept row is younger than the cursor."""
    if not state.has_cursor:
        return None
    oldest = oldest_rc_timestamp(client)
    assert state.cursor_timestamp is not None
    if oldest is not None and oldest > state.cursor_timestamp:
        return (
            f"the cursor ({state.cursor_timestamp}) is older than the oldest recent change the"
            f" wiki keeps ({oldest}); changes in between may be lost"
        )
    return None


def touched_by(rows: Iterable[RcRow]) -> tuple[set[int], set[str], set[str], set[int]]:
    """What recent-changes rows touch: pageids, titles to resolve, template titles whose
    transcluding pages may have changed category, and pageids created by the rows."""
    pageids: set[int] = set()
    titles: set[str] = set()
    templates: set[str] = set()
    created: set[int] = set()
    for row in rows:
        if row.pageid:
            pageids.add(row.pageid)
        if row.type == "new":
            created.add(row.pageid)
        if row.type == "log":
            titles.add(row.title)  # deletes, restores, moves (the old title may be a redirect)
            if row.target_title:
                titles.add(row.target_title)
        elif row.type in ("edit", "new") and row.ns == TEMPLATE_NAMESPACE:
            templates.add(row.title)
    return pageids, titles, templates, created


def apply_recent_changes(
    client: MediaWikiClient,
    store: Store,
    source: WikiSource,
    overlap_seconds: int,
    page_size: int = 500,
) -> SyncCounts:
    """Apply the wiki's recent changes since the cursor, one API page of rows per transaction.

    Re-reads ``overlap_seconds`` before the cursor (rows the job queue writes late carry older
    timestamps) and skips rcids already applied.
    """
    name = source.name
    state = store.sync_state(name)
    if not state.has_cursor:
        raise RuntimeError(f"source {name!r} has no cursor yet: run a full listing first")
    assert state.cursor_timestamp is not None and state.cursor_rcid is not None
    start = _shift(state.cursor_timestamp, -timedelta(seconds=overlap_seconds))
    seen = store.seen_rcids(name, start)
    retry_failed = store.failed_pageids(name)
    counts = SyncCounts()
    cursor = (state.cursor_timestamp, state.cursor_rcid)
    for rows in recent_changes(client, start, page_size):
        fresh = [r for r in rows if r.rcid not in seen and r.rcid > state.listed_through_rcid]
        pageids, titles, templates, created = touched_by(fresh)
        pageids |= retry_failed
        retry_failed = set()
        if titles:
            pageids |= set(resolve_titles(client, titles).values())
            pageids |= set(store.pageids_by_title(name, titles).values())
        if templates:
            pageids |= transcluding_pages(client, templates)
        batch, step = refresh_pages(client, store, source, pageids, created=created)
        if rows:
            cursor = max(cursor, (rows[-1].timestamp, rows[-1].rcid))
        batch.seen = [(r.rcid, r.timestamp) for r in fresh]
        batch.state = replace(state, cursor_timestamp=cursor[0], cursor_rcid=cursor[1])
        store.apply(name, batch)
        seen.update(r.rcid for r in fresh)
        counts += step
    store.forget_seen_before(name, _shift(start, -SEEN_MARGIN))
    return counts
