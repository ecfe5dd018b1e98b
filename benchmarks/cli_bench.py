"""What a CLI command costs beyond its work, without a Prefect server, against Prefect's
ephemeral mode (how the CLI ran its flows before: a temporary server per command).

Fills a local MediaWiki (Debian's package) with in-scope pages, backfills a store, then times
from one run, as separate processes on the same store (no PREFECT_API_URL anywhere):

- ``wikitune status`` (no flow);
- ``wikitune sync`` and ``wikitune build`` with nothing new: the CLI (flows as plain calls)
  against the same flow called in a process that lets Prefect start its ephemeral server;
- the flow's own work, timed in this process, so that command minus work is the overhead
  (interpreter start, imports, and any orchestration).

    .venv/bin/python benchmarks/cli_bench.py [--pages 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wikitune.localwiki import LocalWiki

CATEGORY = "Category:VTuber"
EPHEMERAL = """
import sys
from wikitune.flows.{module} import {flow}
{flow}(home=sys.argv[1])
"""


def page_text(n: int) -> str:
    return (
        f"{{{{Infobox VTuber|name=VTuber {n}|agency=Agency {n % 7}|debut_date=2021-03-{n % 28 + 1}"
        f"}}}}\n'''VTuber {n}''' streams games.\n[[{CATEGORY}]]"
    )


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def work_seconds(flow_name: str, home: Path) -> float:
    """The flow's function called in this (warm) process: the work, without any overhead."""
    from wikitune.flows import runtime
    from wikitune.flows.build import build
    from wikitune.flows.sync import sync

    flow = {"sync": sync, "build": build}[flow_name]
    started = time.perf_counter()
    runtime.step(flow, home=str(home))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {"PREFECT_HOME": str(root / "prefect"), "DO_NOT_TRACK": "1"}
        wikitune = [sys.executable, "-m", "wikitune.cli"]
        with LocalWiki(root / "wiki") as wiki:
            wiki.edit("Template:Infobox VTuber", "{{{name}}} {{{agency}}} {{{debut_date}}}")
            wiki.import_pages({f"VTuber {n}": page_text(n) for n in range(args.pages)})
            wiki.run_jobs()
            home_option = ["--home", str(home)]
            backfill = [*wikitune, "sync", "--api-url", wiki.api_url, "--category", CATEGORY]
            timed([*backfill, *home_option], env)
            timed([*wikitune, "build", *home_option], env)

            rows: list[tuple[str, float, float | None, float]] = []
            status = [timed([*wikitune, "status", *home_option], env) for _ in range(args.repeats)]
            rows.append(("status", statistics.median(status), None, 0.0))
            for flow, module in (("sync", "sync"), ("build", "build")):
                local, ephemeral, work = [], [], []
                for _ in range(args.repeats):  # alternated, so both see the same machine
                    local.append(timed([*wikitune, flow, *home_option], env))
                    script = EPHEMERAL.format(module=module, flow=flow)
                    ephemeral.append(timed([sys.executable, "-c", script, str(home)], env))
                    work.append(work_seconds(flow, home))
                rows.append(
                    (
                        f"no-change {flow}",
                        statistics.median(local),
                        statistics.median(ephemeral),
                        statistics.median(work),
                    )
                )

    print(f"\nmedian seconds of {args.repeats} runs, {args.pages} pages, no PREFECT_API_URL")
    print(f"{'command':18} {'CLI':>7} {'ephemeral':>10} {'work':>7} {'CLI overhead':>13} ratio")
    for name, local_s, ephemeral_s, work_s in rows:
        shown = f"{ephemeral_s:10.2f}" if ephemeral_s is not None else f"{'-':>10}"
        ratio = f"{ephemeral_s / local_s:.1f}x faster" if ephemeral_s else "-"
        print(f"{name:18} {local_s:7.2f} {shown} {work_s:7.2f} {local_s - work_s:13.2f} {ratio}")


if __name__ == "__main__":
    main()
