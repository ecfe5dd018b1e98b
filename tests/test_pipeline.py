"""`wikitune run`: one whole cycle on a real wiki, in Prefect's ephemeral mode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from helpers import cli

from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, sample_page
from wikitune.localwiki import LocalWiki


def _run_ephemeral(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, home=home, ephemeral=True, WIKITUNE_PROMOTE_GENERAL_LOSS_TOLERANCE="0.6")


def test_run_does_a_whole_cycle_and_retrains_when_due_or_forced(
    wiki: LocalWiki, world: dict[str, Any], tmp_path: Path
) -> None:
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    for _, *fields in SAMPLE_VTUBERS[:2]:
        wiki.edit(fields[0], sample_page(*fields))
    wiki.run_jobs()
    home = tmp_path / "home"
    model = ["--base-model", str(world["root"] / "base"), "--recipe", str(world["recipe"])]

    first = _run_ephemeral(
        "run", "--api-url", wiki.api_url, "--category", "Category:VTuber", *model, home=home
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "96 pairs changed since the last trained snapshot, below the threshold 200" in (
        first.stdout
    )
    assert not (home / "mlflow.db").exists()

    forced = _run_ephemeral("run", "--force", *model, home=home)  # the stored source
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "version 1: promoted; champion is version 1" in forced.stdout
    status = _run_ephemeral("status", "--json", home=home)
    (source,) = json.loads(status.stdout)["sources"]
    assert source["qa"]["last_trained_snapshot"] == source["qa"]["latest_snapshot"]
    assert source["qa"]["changed_since_trained"] == 0
