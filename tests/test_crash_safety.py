"""Crash safety: a sync killed with SIGKILL at any request and run again gives the same store as
an uninterrupted run; and the cost of a poll does not grow with the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
from faultproxy import FaultProxy
from helpers import CATEGORY, assert_store_equals_wiki, run_sync

from wikitune.localwiki import LocalWiki

PAGE = "{{Infobox|name=%d}} Page %d [[" + CATEGORY + "]]"


def _sync_process(api_url: str, home: Path, prefect_server: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "WIKITUNE_RC_PAGE_SIZE": "15",  # several transactions per incremental sync
    }
    command = [
        sys.executable,
        "-m",
        "wikitune.cli",
        "sync",
        "--api-url",
        api_url,
        "--category",
        CATEGORY,
        "--name",
        "testwiki",
        "--home",
        str(home),
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _sync(wiki: LocalWiki, home: Path, prefect_server: str, kill_at: int | None) -> None:
    """One sync in a real process; with ``kill_at``, SIGKILL it while its n-th request is held,
    then sync again to completion."""
    proxy = FaultProxy(wiki.api_url)
    try:
        if kill_at is not None:
            proxy.hold_at = kill_at
            process = _sync_process(proxy.api_url, home, prefect_server)
            assert proxy.held.wait(timeout=120), process.communicate()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            proxy.close()
            proxy = FaultProxy(wiki.api_url)
        process = _sync_process(proxy.api_url, home, prefect_server)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    finally:
        proxy.close()


def _snapshot(home: Path) -> dict[str, list[tuple]]:
    db = duckdb.connect(str(home / "wiki.duckdb"), read_only=True)
    try:
        return {
            "pages": db.execute(
                """SELECT pageid, ns, title, revid, sha1, md5(wikitext), categories, in_scope,
                          is_redirect, deleted FROM pages ORDER BY pageid"""
            ).fetchall(),
            "state": db.execute(
                "SELECT cursor_timestamp, cursor_rcid, listing_timestamp FROM sync_state"
            ).fetchall(),
            "failures": db.execute("SELECT pageid FROM page_failures").fetchall(),
        }
    finally:
        db.close()


def test_killed_syncs_converge_to_the_uninterrupted_store(
    wiki: LocalWiki, tmp_path: Path, prefect_server: str
) -> None:
    for n in range(70):  # two fetch batches of 50
        wiki.edit(f"Page {n}", PAGE % (n, n))
    wiki.run_jobs()
    # Backfill requests: 1 rc position, 2 listing, 3-4 content batches, 5+ recent changes.
    backfill_kills = {"reference": None, "listing": 2, "between-batches": 4, "changes": 6}
    homes = {label: tmp_path / label for label in backfill_kills}
    for label, kill_at in backfill_kills.items():
        _sync(wiki, homes[label], prefect_server, kill_at)

    for n in range(0, 40, 2):
        wiki.edit(f"Page {n}", PAGE % (n, n) + " edited")
    for n in range(1, 12, 2):
        wiki.delete(f"Page {n}")
    wiki.move("Page 20", "Page twenty")
    wiki.edit("Page 99", PAGE % (99, 99))
    wiki.run_jobs()
    # Incremental requests: 1 retention check, then per 15 rows: rows, probes, content.
    incremental_kills = {"reference": None, "listing": 3, "between-batches": 6, "changes": 10}
    for label, kill_at in incremental_kills.items():
        _sync(wiki, homes[label], prefect_server, kill_at)

    reference = _snapshot(homes["reference"])
    assert len([p for p in reference["pages"] if p[7]]) == 70 - 6 + 1
    for label in ("listing", "between-batches", "changes"):
        assert _snapshot(homes[label]) == reference, label
    # The store equals the wiki too (checked through the helper's own listing).
    os.rename(homes["changes"], tmp_path / "home")
    assert_store_equals_wiki(wiki, tmp_path / "home")


def test_a_no_change_poll_costs_the_same_whatever_the_store_size(
    wiki_factory, tmp_path: Path
) -> None:
    costs = []
    for size in (5, 120):
        wiki = wiki_factory()
        wiki.import_pages({f"Page {n}": PAGE % (n, n) for n in range(size)})
        home = tmp_path / f"home{size}"
        assert run_sync(wiki, home).counts["new"] == size
        run_sync(wiki, home)
        costs.append(run_sync(wiki, home).requests)
    assert costs[0] == costs[1] == 2  # the retention check and one page of recent changes


def test_touched_pages_are_fetched_in_batches(wiki: LocalWiki, tmp_path: Path) -> None:
    for n in range(3):
        wiki.edit(f"Page {n}", PAGE % (n, n))
    run_sync(wiki, tmp_path / "home")
    for n in range(120):
        wiki.edit(f"Page {n}", PAGE % (n, n) + " again")
    summary = run_sync(wiki, tmp_path / "home")
    assert summary.counts["new"] == 117 and summary.counts["edited"] == 3
    # 1 retention check + 1 page of changes + 3 probe batches + 3 content batches.
    assert summary.requests <= 8, summary.requests
