"""A page whose content cannot be read is recorded and skipped; the next sync retries it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from faultproxy import FaultProxy, rewrite_json
from helpers import CATEGORY, assert_store_equals_wiki, run_sync, store_listing

from wikitune.localwiki import LocalWiki
from wikitune.storage import Store


def _hide_content_of(title: str) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        for page in body.get("query", {}).get("pages", []):
            if page.get("title") == title and page.get("revisions"):
                main = page["revisions"][0]["slots"]["main"]
                main.pop("content", None)
                main["texthidden"] = True

    return change


def test_unreadable_page_is_recorded_skipped_and_retried(wiki: LocalWiki, home: Path) -> None:
    for name in ["Alice", "Bob", "Carol"]:
        wiki.edit(name, f"{name} [[{CATEGORY}]]")
    proxy = FaultProxy(wiki.api_url)
    try:
        proxy.always = rewrite_json(_hide_content_of("Bob"))
        summary = run_sync(wiki, home, api_url=proxy.api_url)
        assert (summary.counts["new"], summary.counts["failed"]) == (2, 1)
        assert sorted(t for t, _ in store_listing(home, "testwiki").values()) == ["Alice", "Carol"]
        with Store(home / "wiki.duckdb") as store:
            (failure,) = store.failures("testwiki")
        assert (failure.title, failure.reason) == ("Bob", "revision hidden")

        proxy.always = None
        summary = run_sync(wiki, home, api_url=proxy.api_url)  # no new changes: retried anyway
        assert (summary.counts["new"], summary.counts["failed"]) == (1, 0)
        with Store(home / "wiki.duckdb") as store:
            assert store.failures("testwiki") == []
        assert_store_equals_wiki(wiki, home)
    finally:
        proxy.close()
