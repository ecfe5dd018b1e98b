"""Backfill and no-change poll against a local MediaWiki, as ratios against the per-page way.

Fills a real local wiki (Debian's mediawiki package) with in-scope pages and prints, from one
run: wall time and request count of wikitune's batched backfill against listing the category
and fetching one page per request (how simple scripts do it), and the requests and time of a
poll with no changes at this store size and at a tiny one.

    .venv/bin/python benchmarks/sync_bench.py [--pages 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wikitune.localwiki import LocalWiki
from wikitune.storage import Store
from wikitune.tasks.mediawiki import MediaWikiClient
from wikitune.tasks.source import WikiSource
from wikitune.tasks.sync import apply_recent_changes, full_listing, retention_gap

CATEGORY = "Category:VTuber"
OVERLAP_SECONDS = 3600


def page_text(n: int) -> str:
    infobox = f"{{{{Infobox VTuber|name=VTuber {n}|agency=Agency {n % 7}}}}}\n"
    return infobox + f"'''VTuber {n}''' streams games and songs. " * 20 + f"\n[[{CATEGORY}]]"


def per_page_backfill(client: MediaWikiClient) -> int:
    """List the category, then one request per page: returns the number of pages read."""
    pageids = []
    for body in client.query(list="categorymembers", cmtitle=CATEGORY, cmlimit="max"):
        pageids += [m["pageid"] for m in body["query"]["categorymembers"]]
    for pageid in pageids:
        client.get(
            action="query", pageids=pageid, prop="revisions", rvprop="ids|content", rvslots="main"
        )
    return len(pageids)


def wikitune_sync(client: MediaWikiClient, store: Store, source: WikiSource) -> None:
    """What the sync flow does, without Prefect's own overhead."""
    state = store.sync_state(source.name)
    if not state.has_cursor or retention_gap(client, state):
        full_listing(client, store, source)
    apply_recent_changes(client, store, source, OVERLAP_SECONDS)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def poll_cost(wiki: LocalWiki, store_path: Path, source: WikiSource) -> tuple[int, float]:
    with Store(store_path) as store:
        client = wiki.client()
        seconds = timed(lambda: wikitune_sync(client, store, source))
        return client.requests_made, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with LocalWiki(root / "wiki") as wiki, LocalWiki(root / "tiny") as tiny:
            started = time.perf_counter()
            wiki.import_pages({f"VTuber {n}": page_text(n) for n in range(args.pages)})
            wiki.import_pages({f"Other {n}": "not in scope" for n in range(args.pages // 10)})
            tiny.import_pages({f"VTuber {n}": page_text(n) for n in range(10)})
            print(
                f"filled the wiki with {args.pages} in-scope pages in "
                f"{time.perf_counter() - started:.1f}s"
            )
            source = WikiSource(api_url=wiki.api_url, categories=[CATEGORY], name="bench")
            tiny_source = WikiSource(api_url=tiny.api_url, categories=[CATEGORY], name="tiny")

            baseline = wiki.client()
            baseline_s = timed(lambda: per_page_backfill(baseline))
            batched_requests, batched_s = poll_cost(wiki, root / "bench.duckdb", source)
            with Store(root / "bench.duckdb") as store:
                stored = store.page_counts("bench")["in_scope"]
            assert stored == args.pages, stored

            poll_requests, poll_s = poll_cost(wiki, root / "bench.duckdb", source)
            poll_cost(tiny, root / "tiny.duckdb", tiny_source)
            tiny_requests, tiny_s = poll_cost(tiny, root / "tiny.duckdb", tiny_source)

    print(f"\nbackfill of {args.pages} pages")
    print(f"  per-page way : {baseline.requests_made:5d} requests {baseline_s:7.2f}s")
    print(f"  wikitune     : {batched_requests:5d} requests {batched_s:7.2f}s")
    print(
        f"  ratio        : {baseline.requests_made / batched_requests:5.1f}x fewer requests, "
        f"{baseline_s / batched_s:.1f}x faster"
    )
    print("\nno-change poll")
    print(f"  {args.pages:5d} pages   : {poll_requests} requests {poll_s * 1000:7.1f}ms")
    print(f"     10 pages   : {tiny_requests} requests {tiny_s * 1000:7.1f}ms")
    print(
        f"  ratio        : {poll_requests / tiny_requests:.2f}x the requests, "
        f"{poll_s / tiny_s:.2f}x the time of a 10-page store"
    )


if __name__ == "__main__":
    main()
