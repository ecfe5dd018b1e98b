"""The README's first command: `wikitune demo` runs the whole loop on a local wiki."""

from __future__ import annotations

import json
import os
import re
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
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "first sync (backfill): new 6" in out
    assert "second sync (recent changes): new 1, edited 1, moved 1, deleted 1" in out
    assert "second build (QA pairs): pages parsed 3" in out
    assert "first cycle: candidate version 1 against base: promoted" in out
    second = re.search(r"second cycle: candidate version 2 against version 1: (\w[\w-]*)", out)
    assert second and second.group(1) in {"promoted", "rejected"}
    assert "Decision: **" in out and "bootstrap interval" in out

    status = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", "status", "--json", "--home", home],
        capture_output=True,
        text=True,
        env=env,
    )
    (source,) = json.loads(status.stdout)["sources"]
    assert source["pages"]["in_scope"] == 6
    assert source["qa"]["latest_snapshot"] == source["qa"]["last_trained_snapshot"]
    assert source["qa"]["changed_since_trained"] == 0

    listed = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", "models", "--json", "--home", home],
        capture_output=True,
        text=True,
        env=env,
    )
    versions = {v["version"]: v for v in json.loads(listed.stdout)}
    assert set(versions) == {"1", "2"}
    champion = "2" if second.group(1) == "promoted" else "1"
    assert "champion" in versions[champion]["aliases"]
