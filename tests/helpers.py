"""Helpers shared by the tests: what the wiki's own API lists, and what the store holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from wikitune.demo import TOY_RECIPE
from wikitune.flows.sync import SyncSummary, sync
from wikitune.localwiki import LocalWiki
from wikitune.storage import Store
from wikitune.tasks.source import WikiSource

CATEGORY = "Category:VTuber"


def wiki_listing(wiki: LocalWiki, category: str = CATEGORY) -> dict[int, tuple[str, int]]:
    """In-scope pages as the wiki's API lists them: category members in the content namespace
    (0 on the local wiki) that are not redirects."""
    pages: dict[int, tuple[str, int]] = {}
    for body in wiki.client().query(
        generator="categorymembers", gcmtitle=category, gcmnamespace=0, gcmlimit="max", prop="info"
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


# The demo's recipe, longer: enough steps for the tiny model to learn two pages' facts.
TEST_RECIPE = {
    **TOY_RECIPE,
    "num_train_epochs": 20,
    "eval_steps": 100,
    "logging_steps": 10,
    "sample_generations": 6,
    "warm_start": "base",
}


def cli(
    *args: str, home: Path, local: bool = False, timeout: int = 900, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI against the test Prefect server, or without one (no PREFECT_API_URL: the
    flows run as plain calls)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"COLUMNS": "200", **extra_env}
    if not local:
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.run(
        [sys.executable, "-m", "wikitune.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def mlflow_client(home: Path) -> Any:
    from mlflow.tracking import MlflowClient

    from wikitune.mlflow.tracking import use_tracking

    use_tracking(f"sqlite:///{home / 'mlflow.db'}")
    return MlflowClient()
