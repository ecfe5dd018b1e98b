"""A command killed with SIGKILL leaves nothing running: no Prefect server (the CLI starts none
without PREFECT_API_URL), no MediaWiki server (it dies with the process that started it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, sample_page
from wikitune.localwiki import LocalWiki


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group_leader(process: subprocess.Popen[Any]) -> None:
    """SIGKILL the command only (not its group), then expect its whole group gone."""
    process.kill()
    process.wait(timeout=30)
    _wait_for("the killed command's children to end", lambda: not _group_alive(process.pid), 30)


def test_a_killed_cycle_leaves_no_server_running(
    wiki: LocalWiki, world: dict[str, Any], tmp_path: Path
) -> None:
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    _, *fields = SAMPLE_VTUBERS[0]
    wiki.edit(fields[0], sample_page(*fields))
    wiki.run_jobs()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = [
        *(sys.executable, "-m", "wikitune.cli", "run", "--force"),
        *("--api-url", wiki.api_url, "--category", "Category:VTuber"),
        *("--base-model", str(world["root"] / "base"), "--recipe", str(world["recipe"])),
        *("--home", str(home)),
    ]
    log = home / "logs" / "wikitune.log"
    with subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        # Past the sync, where Prefect's ephemeral mode had started its temporary server.
        _wait_for(
            "the cycle's sync",
            lambda: process.poll() is not None or (log.exists() and "synced" in log.read_text()),
        )
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        _kill_group_leader(process)


def test_a_killed_process_takes_its_local_wiki_along(
    tmp_path: Path, _mediawiki_available: None
) -> None:
    script = (
        "import sys, time\nfrom wikitune.localwiki import LocalWiki\n"
        "wiki = LocalWiki(sys.argv[1]).start()\nprint(wiki.port, flush=True)\ntime.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "wiki")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        assert port
        _kill_group_leader(process)
