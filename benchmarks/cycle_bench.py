"""From an edit burst on the wiki to a new champion, in the demo setting: seconds split into sync,
build, snapshot, train, evaluate, promote and orchestration overhead, deployed (``wikitune up``:
the 15-minute sync's run, the data-ready event, the automation's cycle on the cpu pool, the
retrain on the gpu pool) against the same cycle in one process (the baseline, same command).

    .venv/bin/python benchmarks/cycle_bench.py

The burst adds four VTuber pages to a wiki whose first two pages are already synced; the sync run
is started at once, standing in for the schedule (whose wait of up to 15 minutes is not counted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from wikitune.demo import (
    CATEGORY,
    INFOBOX_TEMPLATE,
    SAMPLE_VTUBERS,
    TOY_MARGINS,
    TOY_RECIPE,
    sample_page,
)
from wikitune.flows.phases import PHASES, phase_seconds
from wikitune.localwiki import LocalWiki, free_port

SOURCE = "benchwiki"
SETTINGS = {
    "WIKITUNE_RETRAIN_THRESHOLD": "100",  # two pages (96 pairs) stay below; the burst passes it
    **TOY_MARGINS,
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def _wikitune(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", *args], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise SystemExit(f"wikitune {args[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def _wait(what: str, check: Callable[[], Any], timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def deployed(
    wiki: LocalWiki, home: Path, base: Path, recipe: Path, ready: Path
) -> tuple[float, dict[str, float]]:
    """The cycle through `wikitune up`; returns (seconds, phases). Leaves the pre-burst store in
    ``ready`` for the baseline."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from wikitune.config import load_settings
    from wikitune.mlflow import registry
    from wikitune.tasks import model as models

    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= SETTINGS | {"WIKITUNE_BASE_MODEL": str(base), "WIKITUNE_RECIPE_PATH": str(recipe)}
    home_option = ("--home", str(home))
    _wikitune(
        *("up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)),
        *("--api-url", wiki.api_url, "--category", CATEGORY, "--name", SOURCE, *home_option),
        env=env,
    )
    api = f"http://127.0.0.1:{prefect_port}/api"
    sync_deployment = requests.get(f"{api}/deployments/name/pipeline/sync-every-15-minutes").json()

    def sync_run() -> None:
        run = requests.post(f"{api}/deployments/{sync_deployment['id']}/create_flow_run", json={})
        run_id = run.json()["id"]
        _wait("the sync run", lambda: requests.get(f"{api}/flow_runs/{run_id}").json()["end_time"])

    try:
        sync_run()  # the first two pages: below the threshold
        settings = load_settings(home)
        models.make_base_model_for_wiki(
            base,
            store_path=settings.store_path,
            general_path=settings.general_data_path,
            system_prompt=settings.system_prompt,
        )
        ready.mkdir(parents=True)
        for store_file in home.glob("wiki.duckdb*"):
            shutil.copy(store_file, ready / store_file.name)

        burst(wiki)
        since = datetime.now(UTC)
        started = time.perf_counter()
        sync_run()
        _wait("a champion", lambda: registry.champion(f"http://127.0.0.1:{mlflow_port}", SOURCE))
        seconds = time.perf_counter() - started
        with temporary_settings({PREFECT_API_URL: api}):
            return seconds, phase_seconds(since)
    finally:
        _wikitune("down", *home_option, env=env)


def in_process(home: Path, base: Path) -> tuple[float, dict[str, float]]:
    """The same cycle as one in-process flow (Prefect's ephemeral mode, server warmed up)."""
    from prefect import flow

    from wikitune.flows.pipeline import pipeline
    from wikitune.tasks.recipe import TrainingRecipe

    flow(lambda: None, name="warm-up")()  # start the ephemeral server outside the timing
    since = datetime.now(UTC)
    started = time.perf_counter()
    summary = pipeline(
        retrain_when="threshold",
        base_model=str(base),
        recipe=TrainingRecipe(**TOY_RECIPE),
        home=str(home),
    )
    seconds = time.perf_counter() - started
    assert summary.retrain and summary.retrain.promotion, "the baseline did not retrain"
    assert summary.retrain.promotion.outcome == "promoted", summary.retrain.promotion.outcome
    return seconds, phase_seconds(since)


def burst(wiki: LocalWiki) -> None:
    for title, *fields in SAMPLE_VTUBERS[2:6]:
        wiki.edit(title, sample_page(*fields))
    wiki.run_jobs()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cycle-bench-"))
    recipe = tmp / "recipe.json"
    recipe.write_text(json.dumps(TOY_RECIPE))
    base = tmp / "base"
    with LocalWiki(tmp / "wiki") as wiki:
        wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
        for title, *fields in SAMPLE_VTUBERS[:2]:
            wiki.edit(title, sample_page(*fields))
        wiki.run_jobs()
        deployed_s, deployed_phases = deployed(wiki, tmp / "deployed", base, recipe, tmp / "local")
        # The baseline starts from the same store (two pages synced) and applies the same burst,
        # recorded in the wiki's recent changes, through the same flows in one process.
        os.environ.update({k: v for k, v in SETTINGS.items() if k.startswith("WIKITUNE_")})
        os.environ.pop("PREFECT_API_URL", None)
        local_s, local_phases = in_process(tmp / "local", base)

    print("edit burst (4 new pages) to a new champion, demo recipe, tiny model, 2 CPU cores")
    print(f"{'phase':<22}{'deployed s':>12}{'in-process s':>14}")
    for phase in PHASES:
        print(
            f"{phase:<22}{deployed_phases.get(phase, 0):>12.1f}{local_phases.get(phase, 0):>14.1f}"
        )
    overhead_d = deployed_s - sum(deployed_phases.values())
    overhead_l = local_s - sum(local_phases.values())
    print(f"{'orchestration':<22}{overhead_d:>12.1f}{overhead_l:>14.1f}")
    print(f"{'total':<22}{deployed_s:>12.1f}{local_s:>14.1f}")
    print(
        f"orchestration share: deployed {overhead_d / deployed_s:.0%}, in-process"
        f" {overhead_l / local_s:.0%}; ratio deployed/in-process total {deployed_s / local_s:.2f}x"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
