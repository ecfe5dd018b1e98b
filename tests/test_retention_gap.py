"""A cursor older than the wiki keeps recent changes: the sync says so and reconciles."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import CATEGORY, assert_store_equals_wiki, run_sync

from wikitune.tasks.mediawiki import oldest_rc_timestamp


def test_a_purged_gap_is_reported_and_reconciled(wiki_factory, home: Path) -> None:
    wiki = wiki_factory(rc_max_age=3)
    for n in range(4):
        wiki.edit(f"Page {n}", f"page {n} [[{CATEGORY}]]")
    first = run_sync(wiki, home)
    assert first.counts["new"] == 4

    wiki.edit("Page 0", f"edited [[{CATEGORY}]]")
    wiki.delete("Page 1")
    wiki.edit("Page 2", "left the category")
    wiki.edit("Page 9", f"new [[{CATEGORY}]]")
    time.sleep(4)
    # MediaWiki queues its purge of expired rows on one save in ten; save until it has run.
    client = wiki.client()
    for round_ in range(20):
        for n in range(10):
            wiki.edit(f"Scratch {n}", f"round {round_}")
        wiki.run_jobs()
        oldest = oldest_rc_timestamp(client)
        if oldest is not None and oldest > (first.cursor_timestamp or ""):
            break
    else:
        raise AssertionError("MediaWiki never purged its expired recent changes")

    summary = run_sync(wiki, home)
    assert summary.mode == "retention-gap"
    assert summary.gap is not None and "older than the oldest recent change" in summary.gap
    counts = summary.counts
    assert (counts["edited"], counts["deleted"], counts["left_scope"], counts["new"]) == (
        1,
        1,
        1,
        0,
    )
    assert counts["entered_scope"] == 1  # Page 9: its creation row was purged with the rest
    assert_store_equals_wiki(wiki, home)
    assert run_sync(wiki, home).mode == "incremental"
