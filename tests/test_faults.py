"""Etiquette and faults: maxlag from the real wiki; 5xx, 429, timeouts and truncated bodies from a
fault-injecting proxy in front of it. After retries run out the run fails naming the request
and the cursor has not moved past anything unapplied."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy, slow, status, truncated_json
from helpers import CATEGORY, assert_store_equals_wiki, run_sync

from wikitune.localwiki import LocalWiki
from wikitune.storage import Store
from wikitune.tasks.mediawiki import RequestFailed


@pytest.fixture
def proxy(wiki: LocalWiki) -> Iterator[FaultProxy]:
    instance = FaultProxy(wiki.api_url)
    yield instance
    instance.close()


def _seed(wiki: LocalWiki, count: int = 3) -> None:
    for n in range(count):
        wiki.edit(f"Page {n}", f"text {n} [[{CATEGORY}]]")


def _cursor(home: Path) -> tuple[str | None, int | None]:
    with Store(home / "wiki.duckdb") as store:
        state = store.sync_state("testwiki")
        return state.cursor_timestamp, state.cursor_rcid


def test_maxlag_is_retried_after_retry_after_then_fails_naming_the_request(
    wiki: LocalWiki, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(wiki)
    run_sync(wiki, home)
    cursor = _cursor(home)
    wiki.edit("Page 0", f"changed [[{CATEGORY}]]")

    monkeypatch.setenv("WIKITUNE_MAXLAG", "-2")  # forces the real maxlag error, Retry-After: 5
    monkeypatch.setenv("WIKITUNE_HTTP_RETRIES", "1")
    started = time.monotonic()
    with pytest.raises(RequestFailed) as failure:
        run_sync(wiki, home)
    assert time.monotonic() - started >= 5  # the wiki's Retry-After was honoured
    message = str(failure.value)
    assert "action=query" in message and "maxlag" in message and "2 attempts" in message
    assert _cursor(home) == cursor

    monkeypatch.setenv("WIKITUNE_MAXLAG", "5")
    assert run_sync(wiki, home).counts["edited"] == 1
    assert_store_equals_wiki(wiki, home)


@pytest.mark.parametrize(
    "fault",
    [
        status(503, retry_after=1),
        status(429, retry_after=1),
        status(502),
        slow(3),
        truncated_json(lie_about_length=True),
        truncated_json(lie_about_length=False),
    ],
    ids=["503-retry-after", "429-retry-after", "502", "timeout", "truncated", "malformed-json"],
)
def test_transient_faults_are_retried(
    wiki: LocalWiki, home: Path, proxy: FaultProxy, fault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIKITUNE_HTTP_TIMEOUT_SECONDS", "1")
    _seed(wiki)
    proxy.faults = {2: fault, 3: fault}  # the listing request fails twice, then goes through
    summary = run_sync(wiki, home, api_url=proxy.api_url)
    assert summary.counts["new"] == 3
    assert proxy.count >= summary.requests + 2
    assert_store_equals_wiki(wiki, home)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(status(500), "HTTP 500"), (truncated_json(lie_about_length=False), "malformed or truncated")],
)
def test_persistent_faults_fail_clearly_and_lose_nothing(
    wiki: LocalWiki, home: Path, proxy: FaultProxy, fault, reason: str
) -> None:
    _seed(wiki)
    run_sync(wiki, home, api_url=proxy.api_url)
    cursor = _cursor(home)
    wiki.edit("Page 1", f"edited [[{CATEGORY}]]")
    wiki.edit("Page 9", f"new [[{CATEGORY}]]")

    proxy.always = fault
    with pytest.raises(RequestFailed) as failure:
        run_sync(wiki, home, api_url=proxy.api_url)
    assert reason in str(failure.value)
    assert f"GET {proxy.api_url} action=query" in str(failure.value)
    assert _cursor(home) == cursor

    proxy.always = None
    summary = run_sync(wiki, home, api_url=proxy.api_url)
    assert (summary.counts["edited"], summary.counts["new"]) == (1, 1)
    assert_store_equals_wiki(wiki, home)
