"""Fixtures with real parts: a real MediaWiki per test, a real Prefect server per session (none
for a session of unit tests only: ``pytest -m unit``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TEST_RECIPE, cli

from wikitune.blocks.recipe import TrainingRecipeBlock
from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, sample_page
from wikitune.flows.build import build, snapshot
from wikitune.flows.sync import sync
from wikitune.localwiki import LocalWiki, mediawiki_installed
from wikitune.tasks import basemodel
from wikitune.tasks import train as training
from wikitune.tasks.source import WikiSource

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["WIKITUNE_HTTP_BACKOFF_SECONDS"] = "0.05"
os.environ["WIKITUNE_HTTP_RETRIES"] = "3"
os.environ["WIKITUNE_HTTP_TIMEOUT_SECONDS"] = "10"


@pytest.fixture(scope="session", autouse=True)
def prefect_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str | None]:
    """A real Prefect server (the test harness's) with a private PREFECT_HOME; yields its URL.
    None, and no server, when every test of the session is a unit test (``pytest -m unit``)."""
    if all(item.get_closest_marker("unit") for item in request.session.items):
        yield None
        return
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session", autouse=True)
def shared_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory of converted GGUF models for the whole session (each conversion of the
    packaged SmolLM2 takes about 40 s); the CLI's subprocesses inherit it."""
    path = tmp_path_factory.mktemp("models")
    os.environ["WIKITUNE_MODELS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2(shared_models_dir: Path) -> basemodel.ResolvedBase:
    """The packaged SmolLM2-135M-Instruct, converted from its GGUF file."""
    return basemodel.resolve_base_model("smollm2-135m-instruct", shared_models_dir)


@pytest.fixture(scope="session")
def _mediawiki_available() -> None:
    if not mediawiki_installed():
        pytest.fail(
            "Debian's mediawiki package and php are required (see .ci/run); a missing service"
            " is an error, not a skip"
        )


def _start_wiki(path: Path, **options: object) -> LocalWiki:
    return LocalWiki(path, **options).start()  # type: ignore[arg-type]


@pytest.fixture
def wiki(tmp_path: Path, _mediawiki_available: None) -> Iterator[LocalWiki]:
    """A fresh real MediaWiki on 127.0.0.1 (default settings: no categorize rows)."""
    instance = _start_wiki(tmp_path / "wiki")
    yield instance
    instance.stop()


@pytest.fixture
def wiki_factory(tmp_path: Path, _mediawiki_available: None) -> Iterator:
    """Start wikis with extra settings: ``wiki_factory(rc_max_age=2, extra_settings=...)``."""
    started: list[LocalWiki] = []

    def start(**options: object) -> LocalWiki:
        instance = _start_wiki(tmp_path / f"wiki{len(started)}", **options)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="session")
def world(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: str, _mediawiki_available: None
) -> Iterator[dict[str, Any]]:
    """Two VTuber pages synced from a real wiki, built and snapshotted; a tiny base model built
    by the CLI; one training run by the CLI."""
    root = tmp_path_factory.mktemp("train")
    home = root / "home"
    wiki = LocalWiki(root / "wiki").start()
    try:
        wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
        for _, *fields in SAMPLE_VTUBERS[:2]:
            wiki.edit(fields[0], sample_page(*fields))
        wiki.run_jobs()
        source = WikiSource(api_url=wiki.api_url, categories=["Category:VTuber"], name="trainwiki")
        sync(source=source, home=str(home))
    finally:
        wiki.stop()
    build(home=str(home))
    snap = snapshot(home=str(home))

    made = cli("make-base-model", "--out", str(root / "base"), home=home)
    assert made.returncode == 0, made.stderr
    recipe = root / "recipe.yaml"
    recipe.write_text(json.dumps(TEST_RECIPE))
    # Trained with the recipe saved as a Prefect Block, as one edited in the UI would be.
    TrainingRecipeBlock(**TEST_RECIPE).save("test-recipe", overwrite=True)
    trained = cli(
        "train",
        "--snapshot",
        snap.id,
        "--base-model",
        str(root / "base"),
        "--recipe-block",
        "test-recipe",
        home=home,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (home / "runs").glob(f"{snap.id}-*")
    result = training.TrainResult.model_validate_json((run_dir / "result.json").read_text())
    yield {"home": home, "root": root, "snapshot": snap, "recipe": recipe, "result": result}


@pytest.fixture(scope="session")
def demo(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: str, _mediawiki_available: None
) -> dict[str, Any]:
    """The README's first command, run once: `wikitune demo` on the packaged SmolLM2 (two
    versions, the second promoted over the first). Its home serves the SmolLM2 tests after it."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "COLUMNS": "200"}
    home = str(tmp_path_factory.mktemp("demo") / "home")
    result = subprocess.run(
        [sys.executable, "-m", "wikitune.cli", "demo", "--home", home],
        capture_output=True,
        text=True,
        env=env,
        timeout=2400,
    )
    # What a newcomer would read on the console, kept beside the home.
    Path(home).parent.joinpath("demo-output.txt").write_text(result.stdout + result.stderr)
    return {"result": result, "home": home, "env": env}
