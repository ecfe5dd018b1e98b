"""Helpers shared by the tests: what the wiki's own API lists, and what the store holds."""

from __future__ import annotations

from pathlib import Path

from wikitune.blocks.source import WikiSource
from wikitune.flows.sync import SyncSummary, sync
from wikitune.localwiki import LocalWiki
from wikitune.storage import Store

CATEGORY = "Category:VTuber"


def wiki_listing(wiki: LocalWiki, category: str = CATEGORY) -> dict[int, tuple[str, int]]:
    """In-scope pages as the wiki's API lists them: category members that are not redirects."""
    pages: dict[int, tuple[str, int]] = {}
    for body in wiki.client().query(
        generator="categorymembers", gcmtitle=category, gcmlimit="max", prop="info"
    ):
        for page in body.get("query", {}).get("pages", []):
            if not page.get("redirect"):
                pages[page["pageid"]] = (page["title"], page["lastrevid"])
    return pages


def store_listing(home: Path, source: str) -> dict[int, tuple[str, int]]:
    with Store(home / "wiki.duckdb") as store:
        return {pid: (title, revid) for pid, title, revid in store.in_scope_pages(source)}


def run_sync(wiki: LocalWiki, home: Path, api_url: str | None = None, **options) -> SyncSummary:
    wiki.run_jobs()  # as a real wiki's job queue would, before the poll
    source = WikiSource(
        api_url=api_url or wiki.api_url, categories=[CATEGORY], name="testwiki", **options
    )
    return sync(source=source, home=str(home))


def assert_store_equals_wiki(wiki: LocalWiki, home: Path) -> None:
    wiki.run_jobs()
    assert store_listing(home, "testwiki") == wiki_listing(wiki)
