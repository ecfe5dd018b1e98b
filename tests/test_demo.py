"""The README's first command: `wikitune demo` runs the whole job on a local wiki."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_reports(
    tmp_path: Path, prefect_server: str, _mediawiki_available: None
) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "COLUMNS": "200"}
    home = str(tmp_path / "demo")
    result = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", "demo", "--home", home],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "first sync (backfill): new 6" in out
    assert "second sync (recent changes): new 1, edited 1, moved 1, deleted 1" in out
    assert "second build (QA pairs): pages parsed 3" in out

    status = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", "status", "--json", "--home", home],
        capture_output=True,
        text=True,
        env=env,
    )
    (source,) = json.loads(status.stdout)["sources"]
    assert source["pages"]["in_scope"] == 6
    assert source["qa"]["retrain_due"] and source["qa"]["latest_snapshot"]
