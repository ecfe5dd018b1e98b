"""Build throughput: pages per second of a full build, and an incremental build after 1% of
the pages change, as a ratio of the full build, in one run.

    .venv/bin/python benchmarks/build_bench.py [--pages 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wikitune.demo import sample_page
from wikitune.storage import Store, StoredPage, SyncBatch
from wikitune.tasks.dataset import make_snapshot
from wikitune.tasks.qa import build_pairs, load_mapping


def page(n: int, revid: int, agency: str) -> StoredPage:
    text = sample_page(
        f"VTuber {n}",
        f"2021-0{n % 9 + 1}-1{n % 10}",
        agency,
        f"Fans {n}",
        "中文" if n % 2 else "English",
        "Bilibili" if n % 3 else "YouTube",
    )
    text += "\n\n== History ==\n" + f"VTuber {n} has streamed many games. " * 30
    return StoredPage(n, 0, f"VTuber {n}", True, revid=revid, wikitext=text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    args = parser.parse_args()
    mapping = load_mapping()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "wiki.duckdb") as store:
        store.record_source("bench", {"api_url": "http://bench"})
        store.apply(
            "bench",
            SyncBatch(pages=[page(n, n, f"Agency {n % 7}") for n in range(1, args.pages + 1)]),
        )
        started = time.perf_counter()
        full = build_pairs(store, "bench", mapping)
        full_s = time.perf_counter() - started

        changed = max(args.pages // 100, 1)
        store.apply(
            "bench",
            SyncBatch(pages=[page(n, 10_000 + n, "New Agency") for n in range(1, changed + 1)]),
        )
        started = time.perf_counter()
        incremental = build_pairs(store, "bench", mapping)
        incremental_s = time.perf_counter() - started

        started = time.perf_counter()
        record = make_snapshot(
            store, "bench", snapshots_dir=Path(tmp) / "snapshots", system_prompt="You are helpful."
        )
        snapshot_s = time.perf_counter() - started

    print(
        f"full build        : {full.pages_parsed} pages, {full.new} pairs in {full_s:.2f}s"
        f" = {full.pages_parsed / full_s:.0f} pages/s"
    )
    print(
        f"incremental build : {incremental.pages_parsed} pages ({changed / args.pages:.0%}),"
        f" {incremental.changed} pairs changed in {incremental_s:.3f}s"
    )
    print(
        f"ratio             : incremental takes {incremental_s / full_s:.3f}x the full build"
        f" ({full_s / incremental_s:.0f}x faster)"
    )
    print(
        f"snapshot          : {record.counts['train_rows']} train rows,"
        f" {record.counts['eval_rows']} eval rows in {snapshot_s:.2f}s"
    )


if __name__ == "__main__":
    main()
