"""The CLI end to end in real processes, bot-password login, and where the password never goes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CATEGORY, wiki_listing

from wikitune.localwiki import LocalWiki

PRIVATE_WIKI = "$wgGroupPermissions['*']['read'] = false;\n"


def wikitune(*args: str, env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wikitune.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _env(prefect_server: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WIKITUNE_BOT_PASSWORD"}
    return {**env, "PREFECT_API_URL": prefect_server, **extra}


def test_sync_status_and_pages_commands(wiki: LocalWiki, home: Path, prefect_server: str) -> None:
    for name in ["Alice", "Bob", "星野灯"]:
        wiki.edit(name, f"{name} [[{CATEGORY}]]")
    wiki.edit("Other", "not in scope")
    wiki.run_jobs()
    env = _env(prefect_server)
    first = wikitune("sync", "--api-url", wiki.api_url, "--category", "VTuber", env=env, home=home)
    assert first.returncode == 0, first.stderr
    assert "backfill" in first.stdout and "new" in first.stdout

    wiki.edit("Bob", f"Bob, edited [[{CATEGORY}]]")
    again = wikitune("sync", env=env, home=home)  # the source is remembered
    assert again.returncode == 0, again.stderr
    assert "incremental" in again.stdout

    status = json.loads(wikitune("status", "--json", env=env, home=home).stdout)
    (source,) = status["sources"]
    assert source["pages"]["in_scope"] == 3
    assert source["cursor"]["rcid"] > 0
    assert source["last_sync"]["counts"]["edited"] == 1

    lines = wikitune("pages", "--json", env=env, home=home).stdout.splitlines()
    listed = {r["pageid"]: (r["title"], r["revid"]) for r in map(json.loads, lines)}
    assert listed == wiki_listing(wiki)


def test_bad_options_are_clear_errors(home: Path, prefect_server: str) -> None:
    env = _env(prefect_server)
    result = wikitune("sync", "--api-url", "ftp://x", "--category", "A", env=env, home=home)
    assert result.returncode == 1
    assert "api_url must be an http(s) URL" in result.stderr
    assert wikitune("sync", "--category", "A", env=env, home=home).returncode == 1
    assert "no store" in wikitune("status", env=env, home=home).stderr


def test_the_serve_key_comes_from_the_environment_or_a_prefect_secret(
    home: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from wikitune.config import Settings

    monkeypatch.delenv("WIKITUNE_SERVE_API_KEY", raising=False)
    Secret(value="key-from-prefect-77").save("serve-key", overwrite=True)
    from_prefect = Settings(home=home, serve_api_key_secret="serve-key")
    assert from_prefect.serve_key() == "key-from-prefect-77"
    both = Settings(home=home, serve_api_key="key-env", serve_api_key_secret="serve-key")
    assert both.serve_key() == "key-env"
    assert Settings(home=home).serve_key() is None

    env = _env(prefect_server, WIKITUNE_SERVE_API_KEY_SECRET="no-such-key")
    missing = wikitune("serve", env=env, home=home)
    assert missing.returncode == 1
    assert "'no-such-key'" in missing.stderr and "not a Prefect Secret" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_private_wiki_needs_the_bot_password(
    wiki_factory, home: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wiki = wiki_factory(extra_settings=PRIVATE_WIKI)
    wiki.edit("Alice", f"Alice [[{CATEGORY}]]")
    wiki.run_jobs()
    password = wiki.bot_password.get_secret_value()
    args = ("sync", "--api-url", wiki.api_url, "--category", CATEGORY)

    anonymous = wikitune(*args, env=_env(prefect_server), home=home)
    assert anonymous.returncode == 1
    assert "readapidenied" in anonymous.stderr

    wrong = wikitune(
        *args,
        "--bot-user",
        wiki.bot_user,
        env=_env(prefect_server, WIKITUNE_BOT_PASSWORD="0" * 32),
        home=home,
    )
    assert wrong.returncode == 1
    error_lines = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "login" in error_lines[0] and "Incorrect username or password" in error_lines[0]
    assert "0" * 32 not in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stderr

    right = wikitune(
        *args,
        "--bot-user",
        wiki.bot_user,
        env=_env(prefect_server, WIKITUNE_BOT_PASSWORD=password),
        home=home,
    )
    assert right.returncode == 0, right.stderr
    assert password not in right.stdout + right.stderr

    # A saved source block carries its password as a Prefect secret field.
    from pydantic import SecretStr

    from wikitune.blocks.source import WikiSourceBlock

    WikiSourceBlock(
        api_url=wiki.api_url,
        categories=[CATEGORY],
        name="private",
        bot_user=wiki.bot_user,
        bot_password=SecretStr(password),
    ).save("private-wiki", overwrite=True)
    wiki.edit("Bob", f"Bob [[{CATEGORY}]]")
    wiki.run_jobs()
    from_block = wikitune(
        "sync", "--source-block", "private-wiki", env=_env(prefect_server), home=home
    )
    assert from_block.returncode == 0, from_block.stderr
    assert "sync of private" in from_block.stdout

    # Nothing the Prefect server recorded (parameters, logs, artifacts) holds the password.
    recorded = asyncio.run(_everything_prefect_recorded())
    assert wiki.bot_user in recorded
    assert (
        '"key": "sync-' in recorded
    )  # the sync's artifact  # the user is recorded, so the check reads real records
    assert password not in recorded


async def _everything_prefect_recorded() -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
    return json.dumps(
        [r.model_dump(mode="json") for r in runs]
        + [entry.model_dump(mode="json") for entry in logs]
        + [a.model_dump(mode="json") for a in artifacts]
    )
