"""`wikitune run`: whole cycles on a real wiki, without a Prefect server (the flows run as plain
calls), and the poll against the test Prefect server."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import cli

from wikitune.config import source_slug
from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, TOY_MARGINS, sample_page
from wikitune.localwiki import LocalWiki


def _run_local(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    env = {**TOY_MARGINS, **env}
    return cli(*args, home=home, local=True, **env)


@contextmanager
def _cycle_running(source: str) -> Iterator[None]:
    """A flow run named like a retrain cycle of ``source``, Running on the test server."""
    from prefect import flow, get_client
    from prefect.states import Completed, Running

    from wikitune.config import source_slug

    @flow(name="pipeline")
    def stand_in() -> None: ...

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(stand_in, name=f"cycle-{source_slug(source)}", state=Running())
        try:
            yield
        finally:
            client.set_flow_run_state(run.id, Completed(), force=True)


def _qa(home: Path) -> dict[str, Any]:
    status = _run_local("status", "--json", home=home)
    assert status.returncode == 0, status.stderr[-3000:]
    (source,) = json.loads(status.stdout)["sources"]
    return source["qa"]


def test_run_does_a_whole_cycle_and_retrains_when_due_or_forced(
    wiki: LocalWiki, world: dict[str, Any], tmp_path: Path
) -> None:
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    for _, *fields in SAMPLE_VTUBERS[:2]:
        wiki.edit(fields[0], sample_page(*fields))
    wiki.run_jobs()
    home = tmp_path / "home"
    model = ["--base-model", str(world["root"] / "base"), "--recipe", str(world["recipe"])]

    first = _run_local(
        "run", "--api-url", wiki.api_url, "--category", "Category:VTuber", *model, home=home
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no retrain: 176 pairs changed since the champion's snapshot (threshold 200" in (
        first.stdout
    )
    assert not (home / "mlflow.db").exists()

    forced = _run_local("run", "--force", *model, home=home)  # the stored source
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "version 1: promoted; champion is version 1" in forced.stdout
    assert "promoted v1: fresh facts +" in forced.stdout  # the run's final message
    qa = _qa(home)
    assert qa["champion_snapshot"] == qa["last_trained_snapshot"] == qa["latest_snapshot"]
    assert qa["changed_since_champion"] == 0
    champion_snapshot = qa["champion_snapshot"]

    # An edit, then a candidate that loses (a gain is a difference of shares, at most 1, so none
    # reaches a margin of 1.5): its changes stay due.
    _, name, debut, _, fans, language, platform = SAMPLE_VTUBERS[0]
    wiki.edit(name, sample_page(name, debut, "Harbor Live", fans, language, platform))
    wiki.run_jobs()
    lost = _run_local("run", "--force", *model, home=home, WIKITUNE_PROMOTE_MIN_GAIN="1.5")
    assert lost.returncode == 0, lost.stderr[-3000:]
    assert "version 2: rejected; champion is version 1" in lost.stdout
    assert re.search(r"rejected v2: fresh facts .* < margin 1\.5", lost.stdout), lost.stdout
    qa = _qa(home)
    assert qa["champion_snapshot"] == champion_snapshot != qa["last_trained_snapshot"]
    assert qa["changed_since_champion"] > 0 and qa["changed_since_last_retrain"] == 0
    due = qa["changed_since_champion"]

    # The next snapshot marks the same facts fresh, against the champion's snapshot.
    again = _run_local("snapshot", home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    folder = home / "snapshots" / qa["latest_snapshot"]
    assert json.loads((folder / "manifest.json").read_text())["fresh_against"] == champion_snapshot
    rows = (folder / "eval.jsonl").read_text().splitlines()
    fresh = {(r["title"], r["field"]) for r in map(json.loads, rows) if r["fresh"]}
    assert fresh and {title for title, _ in fresh} == {name}

    # The poll waits for new edits rather than retraining on what just lost...
    low = {"WIKITUNE_RETRAIN_THRESHOLD": "1"}
    poll = _run_local("run", "--when", "never", home=home, **low)
    assert poll.returncode == 0, poll.stderr[-3000:]
    assert f"{due} pairs changed since the champion's snapshot, all of them seen" in poll.stdout
    # ...and the nightly run retrains them: the same data and recipe give back the same run,
    # which is version 2 already. One run, one version: nothing is registered or decided twice.
    nightly = _run_local("run", "--when", "new-data", *model, home=home)
    assert nightly.returncode == 0, nightly.stderr[-3000:]
    assert "no new version: run " in nightly.stdout, nightly.stdout
    assert "is already version 2 (rejected)" in nightly.stdout, nightly.stdout
    assert _qa(home)["changed_since_last_retrain"] == 0

    # A new edit: without a Prefect server nothing would hear the event, and the poll says so...
    wiki.edit(name, sample_page(name, debut, "Harbor Live", "灯火团", language, "YouTube"))
    unheard = _run_local("run", "--when", "never", home=home, **low)
    assert unheard.returncode == 0, unheard.stderr[-3000:]
    assert "a retrain is due; without a Prefect server nothing hears" in unheard.stdout
    # None of the cycles above started a temporary Prefect server (Prefect logs when it does).
    assert "temporary server" not in (home / "logs" / "wikitune.log").read_text()
    # ...with one, a cycle in flight holds the poll back, and once it ended the poll emits
    # wikitune.dataset.ready for the automation.
    source = json.loads(_run_local("status", "--json", home=home).stdout)["sources"][0]["name"]
    with _cycle_running(source):
        held = cli("run", "--when", "never", home=home, **low)
    assert held.returncode == 0, held.stderr[-3000:]
    assert f"cycle-{source_slug(source)} is in flight" in held.stdout, held.stdout
    emitted = cli("run", "--when", "never", home=home, **low)
    assert emitted.returncode == 0, emitted.stderr[-3000:]
    assert "emitted wikitune.dataset.ready" in emitted.stdout, emitted.stdout


def test_commands_without_a_prefect_server_start_none(tmp_path: Path) -> None:
    """Options that need blocks or deployments fail in one line when no server is configured."""
    for args in (
        ("sync", "--source-block", "my-wiki"),
        ("run", "--force", "--retrain-deployment", "retrain/gpu"),
    ):
        result = _run_local(*args, home=tmp_path)
        assert result.returncode == 1
        assert f"{args[-2]} needs the Prefect server" in result.stderr, result.stderr
        assert "Starting temporary server" not in result.stderr + result.stdout
