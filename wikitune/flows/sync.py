"""The sync flow: bring the store level with the wiki (backfill, gap reconcile, recent changes)."""

from __future__ import annotations

from functools import partial
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, SecretStr

from wikitune.config import Settings, load_settings
from wikitune.flows.naming import (
    PAGE_ROWS,
    artifact_key,
    counts_table,
    name_run_after,
    pages_table,
    run_name,
)
from wikitune.flows.runtime import markdown_artifact, run_logger, step
from wikitune.storage import PageChange, Store
from wikitune.tasks import sync as sync_tasks
from wikitune.tasks.mediawiki import MediaWikiClient
from wikitune.tasks.source import WikiSource

__all__ = ["SyncSummary", "resolve_source", "sync"]

SyncMode = Literal["backfill", "reconcile", "retention-gap", "incremental"]


class SyncSummary(BaseModel):
    """What one sync did: its mode, the page counts, requests made and where the cursor is."""

    source: str
    mode: SyncMode
    counts: dict[str, int]
    requests: int
    cursor_timestamp: str | None
    cursor_rcid: int | None
    gap: str | None = None
    api_url: str = ""
    sync_run: int | None = None
    """The store's id of this sync's record."""
    changes: list[PageChange] = []
    """The pages changed, how, in the order applied (the first PAGE_ROWS of each kind)."""

    @property
    def pages_changed(self) -> int:
        """Pages the sync changed (``failed`` counts failing pages, not changes)."""
        return sum(v for k, v in self.counts.items() if k != "failed")


def resolve_source(store: Store, source: WikiSource | str | None) -> WikiSource:
    """The given source, or the saved ``wikitune wiki source`` block of that name (either is
    recorded in the store for later runs), or the one the store recorded."""
    if isinstance(source, str):
        from wikitune.blocks.source import WikiSourceBlock

        source = WikiSourceBlock.load(source).plain()
    if source is not None:
        store.record_source(source.name, source.spec())
        return source
    spec = store.source_spec(store.source_name())
    assert spec is not None
    return WikiSource(**spec)


def bot_password(source: WikiSource, settings: Settings) -> SecretStr | None:
    """The source's bot password: its own, else WIKITUNE_BOT_PASSWORD, else the Prefect Secret
    block it names (none without a bot user)."""
    if not source.bot_user:
        return None
    if source.bot_password is not None:
        return source.bot_password
    if settings.bot_password is not None:
        return settings.bot_password
    if source.bot_password_secret:
        from prefect.blocks.system import Secret

        return SecretStr(str(Secret.load(source.bot_password_secret).get()))
    return None


def open_client(source: WikiSource, settings: Settings) -> MediaWikiClient:
    """A polite client for the source, logged in with the bot password when one is set."""
    return source.get_client(
        password=bot_password(source, settings),
        maxlag=settings.maxlag,
        retries=settings.http_retries,
        backoff_seconds=settings.http_backoff_seconds,
        timeout=settings.http_timeout_seconds,
    )


check_retention = task(sync_tasks.retention_gap, name="check-retention", cache_policy=NO_CACHE)
full_listing = task(sync_tasks.full_listing, name="list-scope", cache_policy=NO_CACHE)
apply_recent_changes = task(
    sync_tasks.apply_recent_changes, name="apply-recent-changes", cache_policy=NO_CACHE
)


def _first_of_each_kind(changes: list[PageChange]) -> list[PageChange]:
    seen: dict[str, int] = {}
    kept = []
    for change in changes:
        seen[change.kind] = seen.get(change.kind, 0) + 1
        if seen[change.kind] <= PAGE_ROWS:
            kept.append(change)
    return kept


def _summary_markdown(summary: SyncSummary) -> str:
    lines = [
        f"## Sync of `{summary.source}` ({summary.mode})",
        "",
        *counts_table("change", "pages", summary.counts),
        "",
    ]
    if summary.changes:
        lines += [*pages_table(summary.api_url, summary.changes, summary.pages_changed), ""]
    lines += [
        f"Requests: {summary.requests}. Cursor: {summary.cursor_timestamp}"
        f" (rcid {summary.cursor_rcid}).",
    ]
    if summary.gap:
        lines += ["", f"**Retention gap:** {summary.gap}; reconciled with a full listing."]
    return "\n".join(lines)


@flow(name="sync", flow_run_name=partial(run_name, "sync"))
def sync(
    source: WikiSource | str | None = None, home: str | None = None, reconcile: bool = False
) -> SyncSummary:
    """Bring the store level with the wiki.

    The first run lists the whole scope; later runs apply recent changes from the stored cursor.
    A cursor older than the wiki's recent-changes retention, or ``reconcile``, forces a full
    listing first. ``source`` (a block, or a saved block's name) is needed on the first run
    only; the bot password never travels as a parameter (it comes from WIKITUNE_BOT_PASSWORD or
    a Prefect Secret).
    """
    logger = run_logger()
    settings = load_settings(home)
    with Store(settings.store_path) as store:
        wiki = resolve_source(store, source)
        name_run_after(wiki.name)
        client = open_client(wiki, settings)
        state = store.sync_state(wiki.name)
        listing = not state.has_cursor or reconcile or state.listing_timestamp is not None
        wiki = sync_tasks.scoped_to_content(client, store, wiki, refresh=listing)

        # Extract + load: decide how much of the wiki to read, then read it into the store.
        gap = step(check_retention, client, state)
        mode: SyncMode = "incremental"
        counts = sync_tasks.leave_scope_outside(store, wiki)
        if listing or gap:
            mode = "backfill" if not state.has_cursor else "retention-gap" if gap else "reconcile"
            if gap:
                logger.warning("%s: %s; reconciling with a full listing", wiki.name, gap)
            counts += step(full_listing, client, store, wiki)
        counts += step(
            apply_recent_changes,
            client,
            store,
            wiki,
            settings.rc_overlap_seconds,
            settings.rc_page_size,
        )

        # A page retried within one sync fails once: report the pages failing now.
        counts.failed = len(store.failures(wiki.name))
        state = store.sync_state(wiki.name)
        summary = SyncSummary(
            source=wiki.name,
            mode=mode,
            counts=counts.as_dict(),
            requests=client.requests_made,
            cursor_timestamp=state.cursor_timestamp,
            cursor_rcid=state.cursor_rcid,
            gap=gap,
            api_url=wiki.api_url,
            changes=_first_of_each_kind(counts.changes),
        )
        summary.sync_run = store.record_run(
            wiki.name, mode, summary.counts, summary.requests, counts.changes
        )
    logger.info(
        "synced %s (%s): %s; %d requests",
        wiki.name,
        mode,
        ", ".join(f"{k}={v}" for k, v in summary.counts.items()),
        summary.requests,
    )
    changed = summary.pages_changed
    if changed or summary.counts.get("failed") or mode != "incremental":
        # A poll that found nothing leaves the last sync that changed something in view.
        markdown_artifact(
            key=artifact_key("sync", wiki.name),
            markdown=_summary_markdown(summary),
            description=(
                f"{mode} sync of {wiki.name}: {changed} pages changed"
                f" ({', '.join(f'{k} {v}' for k, v in summary.counts.items() if v)})"
                f"; {summary.requests} requests"
            ),
        )
    return summary
