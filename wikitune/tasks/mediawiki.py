"""The only code that speaks HTTP to a wiki: a polite MediaWiki Action API client and the queries
wikitune needs (scope listing, recent changes, batched page fetches).

Etiquette follows https://www.mediawiki.org/wiki/API:Etiquette: one request at a time, a real
User-Agent, ``maxlag``, gzip, and retries with backoff that honour ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = [
    "ApiError",
    "LoginFailed",
    "MediaWikiClient",
    "PageState",
    "RcPosition",
    "RcRow",
    "RequestFailed",
    "content_namespaces",
    "fetch_pages",
    "list_scope",
    "newest_rc_position",
    "oldest_rc_timestamp",
    "probe_pages",
    "recent_changes",
    "resolve_titles",
    "transcluding_pages",
]

log = logging.getLogger(__name__)

# MediaWiki's limit of titles/pageids/revids in one query for a normal (non-bot) account.
BATCH_SIZE = 50
RETRYABLE_API_CODES = frozenset({"maxlag", "ratelimited", "readonly"})
RETRYABLE_STATUS = (429, 500, 502, 503, 504)


class RequestFailed(RuntimeError):
    """A request still failed after its retries; the message names the request."""


class ApiError(RuntimeError):
    """The wiki answered with an API error that retrying cannot fix."""

    def __init__(self, code: str, info: str, request: str) -> None:
        super().__init__(f"{request}: MediaWiki API error {code}: {info}")
        self.code = code


class LoginFailed(RuntimeError):
    """Bot-password login was refused."""


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def describe_request(method: str, api_url: str, params: dict[str, Any]) -> str:
    """A one-line description of a request for logs and errors; never includes POST bodies."""
    keys = ("action", "list", "prop", "generator", "meta", "titles", "pageids", "revids")
    shown = []
    for key in keys:
        if key in params:
            value = str(params[key])
            shown.append(f"{key}={value if len(value) <= 60 else value[:57] + '...'}")
    for key, value in params.items():
        if (key.endswith("continue") and key != "continue") or key in ("rcstart", "gcmtitle"):
            shown.append(f"{key}={value}")
    return f"{method} {api_url} " + " ".join(shown)


class MediaWikiClient:
    """A MediaWiki Action API client: one request at a time, paced, retried, counted.

    Transport faults (connection errors, timeouts, 429 and 5xx with ``Retry-After``) are retried
    by urllib3; faults that arrive as HTTP 200 (``maxlag``, truncated or malformed JSON) are
    retried here with the same budget and backoff.
    """

    def __init__(
        self,
        api_url: str,
        *,
        user_agent: str,
        request_interval: float = 0.0,
        maxlag: int = 5,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        self.api_url = api_url
        self.request_interval = request_interval
        self.maxlag = maxlag
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout
        self.requests_made = 0
        self._last_request_at = 0.0
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "gzip"})
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff_seconds,
            status_forcelist=RETRYABLE_STATUS,
            allowed_methods=frozenset({"GET", "POST"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- transport -------------------------------------------------------------------------

    def get(self, **params: Any) -> dict[str, Any]:
        """One GET to api.php; returns the decoded JSON body."""
        return self._request("GET", params)

    def post(self, **params: Any) -> dict[str, Any]:
        """One POST to api.php (logins and writes); returns the decoded JSON body."""
        return self._request("POST", params)

    def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        params = {"format": "json", "formatversion": "2", "maxlag": self.maxlag, **params}
        description = describe_request(method, self.api_url, params)
        attempts = self.retries + 1
        self.requests_made += 1  # logical requests; retries are not counted
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(method, params, description)
            except _Retryable as fault:
                if attempt == attempts:
                    raise RequestFailed(
                        f"{description} failed after {attempts} attempts: {fault}"
                    ) from None
                wait = fault.wait if fault.wait is not None else self._backoff(attempt)
                log.warning(
                    "%s: %s; retry %d/%d in %.1fs", description, fault, attempt, self.retries, wait
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return self.backoff_seconds * (2 ** (attempt - 1))

    def _attempt(self, method: str, params: dict[str, Any], description: str) -> dict[str, Any]:
        self._pace()
        try:
            if method == "GET":
                response = self.session.get(self.api_url, params=params, timeout=self.timeout)
            else:
                response = self.session.post(self.api_url, data=params, timeout=self.timeout)
        except requests.exceptions.ChunkedEncodingError as error:
            raise _Retryable(f"truncated response ({type(error).__name__})") from None
        except requests.exceptions.RequestException as error:
            # urllib3 already spent the retry budget on this transport fault.
            raise RequestFailed(
                f"{description} failed after {self.retries + 1} attempts: {_reason(error)}"
            ) from None
        if response.status_code in RETRYABLE_STATUS:
            raise RequestFailed(
                f"{description} failed after {self.retries + 1} attempts:"
                f" HTTP {response.status_code} {response.reason}"
            )
        if response.status_code != 200:
            raise RequestFailed(f"{description}: HTTP {response.status_code} {response.reason}")
        try:
            body = response.json()
        except ValueError:
            raise _Retryable(
                f"malformed or truncated JSON ({len(response.content)} bytes)"
            ) from None
        if not isinstance(body, dict):
            raise _Retryable("JSON body is not an object")
        error = body.get("error")
        if error:
            code = str(error.get("code", "unknown"))
            info = str(error.get("info", ""))
            if code in RETRYABLE_API_CODES:
                retry_after = response.headers.get("Retry-After")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else None
                raise _Retryable(f"API error {code}: {info}", wait)
            raise ApiError(code, info, description)
        for module, warning in (body.get("warnings") or {}).items():
            log.warning("%s: API warning from %s: %s", description, module, warning)
        return body

    def _pace(self) -> None:
        if self.request_interval > 0:
            wait = self._last_request_at + self.request_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last_request_at = time.monotonic()

    # -- sessions --------------------------------------------------------------------------

    def login(self, user: str, password: SecretStr) -> None:
        """Log in with a bot password (``User@appid`` and its secret); raises LoginFailed."""
        token = self.get(action="query", meta="tokens", type="login")["query"]["tokens"][
            "logintoken"
        ]
        result = self.post(
            action="login",
            lgname=user,
            lgpassword=password.get_secret_value(),
            lgtoken=token,
        )["login"]
        if result.get("result") != "Success":
            reason = result.get("reason") or result.get("result", "unknown reason")
            if isinstance(reason, dict):
                reason = reason.get("text") or reason.get("code") or str(reason)
            raise LoginFailed(f"login to {self.api_url} as {user!r} failed: {reason}")
        log.info("logged in to %s as %s", self.api_url, user)

    def csrf_token(self) -> str:
        """A CSRF token for write actions of the logged-in session."""
        return self.get(action="query", meta="tokens")["query"]["tokens"]["csrftoken"]

    # -- queries ---------------------------------------------------------------------------

    def query(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Run ``action=query`` and follow ``continue`` to the end, yielding each response."""
        continuation: dict[str, Any] = {"continue": ""}
        while True:
            body = self.get(action="query", **params, **continuation)
            yield body
            if "continue" not in body:
                return
            continuation = body["continue"]

    def query_pages(self, **params: Any) -> list[dict[str, Any]]:
        """All pages of a query, merged across prop continuations (revisions, categories)."""
        merged: dict[str, dict[str, Any]] = {}
        for body in self.query(**params):
            for page in body.get("query", {}).get("pages", []):
                key = str(page.get("pageid") or page.get("title"))
                known = merged.setdefault(key, {})
                for name, value in page.items():
                    if isinstance(value, list) and isinstance(known.get(name), list):
                        known[name] = known[name] + value
                    else:
                        known[name] = value
        return list(merged.values())


def _reason(error: Exception) -> str:
    reason = getattr(error, "args", [None])[0]
    inner = getattr(reason, "reason", None)
    return f"{type(error).__name__}: {inner or reason or error}"


# -- data returned to the sync ---------------------------------------------------------------


@dataclass(frozen=True)
class RcPosition:
    """A point in the wiki's recent changes: the timestamp and rcid of a row."""

    timestamp: str
    rcid: int


@dataclass(frozen=True)
class RcRow:
    """One row of ``list=recentchanges`` with what the sync needs from it."""

    rcid: int
    timestamp: str
    type: str
    ns: int
    title: str
    pageid: int
    revid: int
    logtype: str | None = None
    logaction: str | None = None
    target_title: str | None = None

    @classmethod
    def from_api(cls, row: dict[str, Any]) -> RcRow:
        params = row.get("logparams") or {}
        return cls(
            rcid=int(row["rcid"]),
            timestamp=str(row["timestamp"]),
            type=str(row["type"]),
            ns=int(row.get("ns", 0)),
            title=str(row.get("title", "")),
            pageid=int(row.get("pageid") or 0),
            revid=int(row.get("revid") or 0),
            logtype=row.get("logtype"),
            logaction=row.get("logaction"),
            target_title=params.get("target_title"),
        )


@dataclass(frozen=True)
class PageState:
    """What the wiki says of a page now. ``exists`` is False for a page the API reports missing.

    ``wikitext`` is None when content was not asked for; ``content_error`` says why content
    that was asked for is unavailable (for example, the revision is hidden).
    """

    pageid: int
    ns: int
    title: str
    exists: bool
    redirect: bool = False
    lastrevid: int = 0
    categories: tuple[str, ...] = ()
    revid: int | None = None
    timestamp: str | None = None
    sha1: str | None = None
    wikitext: str | None = None
    content_error: str | None = None

    @classmethod
    def from_api(cls, page: dict[str, Any], with_content: bool) -> PageState:
        exists = not page.get("missing") and not page.get("invalid")
        categories = tuple(sorted({c["title"] for c in page.get("categories", [])}))
        state = cls(
            pageid=int(page.get("pageid") or 0),
            ns=int(page.get("ns", 0)),
            title=str(page.get("title", "")),
            exists=exists,
            redirect=bool(page.get("redirect")),
            lastrevid=int(page.get("lastrevid") or 0),
            categories=categories,
        )
        if not (with_content and exists):
            return state
        revisions = page.get("revisions") or []
        if not revisions:
            return replace(state, content_error="no revision returned")
        revision = revisions[-1]
        main = (revision.get("slots") or {}).get("main", {})
        if revision.get("texthidden") or main.get("texthidden"):
            return replace(state, revid=revision.get("revid"), content_error="revision hidden")
        content = main.get("content")
        if content is None:
            return replace(state, revid=revision.get("revid"), content_error="no content")
        return replace(
            state,
            revid=int(revision["revid"]),
            timestamp=str(revision.get("timestamp")),
            sha1=main.get("sha1") or revision.get("sha1"),
            wikitext=str(content),
        )


def _batches(items: Iterable[Any], size: int = BATCH_SIZE) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the queries the sync uses ---------------------------------------------------------------


def newest_rc_position(client: MediaWikiClient) -> RcPosition:
    """The newest recent-changes row now (or the server's clock when there is none)."""
    body = client.get(
        action="query",
        list="recentchanges",
        rcdir="older",
        rclimit=1,
        rcprop="ids|timestamp",
        curtimestamp=1,
    )
    rows = body["query"]["recentchanges"]
    if rows:
        return RcPosition(rows[0]["timestamp"], int(rows[0]["rcid"]))
    return RcPosition(body["curtimestamp"], 0)


def oldest_rc_timestamp(client: MediaWikiClient) -> str | None:
    """The timestamp of the oldest recent-changes row the wiki still keeps."""
    body = client.get(
        action="query", list="recentchanges", rcdir="newer", rclimit=1, rcprop="ids|timestamp"
    )
    rows = body["query"]["recentchanges"]
    return rows[0]["timestamp"] if rows else None


def recent_changes(
    client: MediaWikiClient, start: str, page_size: int = 500
) -> Iterator[list[RcRow]]:
    """Recent changes from ``start`` (inclusive), oldest first, one API page at a time."""
    for body in client.query(
        list="recentchanges",
        rcdir="newer",
        rcstart=start,
        rclimit=page_size,
        rcprop="ids|timestamp|title|loginfo",
        rctype="edit|new|log|categorize",
    ):
        yield [RcRow.from_api(row) for row in body["query"]["recentchanges"]]


def content_namespaces(client: MediaWikiClient) -> list[int]:
    """The wiki's content namespaces (``$wgContentNamespaces``, usually just 0): where its
    articles live, as ``meta=siteinfo`` reports them."""
    body = client.get(action="query", meta="siteinfo", siprop="namespaces")
    namespaces = body["query"]["namespaces"].values()
    return sorted(int(ns["id"]) for ns in namespaces if ns.get("content")) or [0]


def list_scope(
    client: MediaWikiClient, categories: Sequence[str], namespaces: Sequence[int]
) -> dict[int, PageState]:
    """Every page in scope now with its latest revid (no content), keyed by pageid.

    Scope is the members of the categories (restricted to the namespaces when both are given),
    or every page of the namespaces when no category is given.
    """
    common = {"prop": "info"}
    listings: list[dict[str, Any]] = []
    if categories:
        for category in categories:
            params = {**common, "generator": "categorymembers", "gcmtitle": category}
            params["gcmlimit"] = "max"
            if namespaces:
                params["gcmnamespace"] = "|".join(map(str, namespaces))
            listings.append(params)
    else:
        for namespace in namespaces:
            listings.append(
                {**common, "generator": "allpages", "gapnamespace": namespace, "gaplimit": "max"}
            )
    pages: dict[int, PageState] = {}
    for params in listings:
        for body in client.query(**params):
            for page in body.get("query", {}).get("pages", []):
                state = PageState.from_api(page, with_content=False)
                if state.exists and not state.redirect:
                    known = pages.get(state.pageid)
                    member_of = {params["gcmtitle"]} if "gcmtitle" in params else set()
                    if known is not None:
                        member_of |= set(known.categories)
                    pages[state.pageid] = replace(state, categories=tuple(sorted(member_of)))
    return pages


def _page_params(categories: Sequence[str]) -> dict[str, Any]:
    if categories:
        return {"prop": "info|categories", "clcategories": "|".join(categories), "cllimit": "max"}
    return {"prop": "info"}


def probe_pages(
    client: MediaWikiClient, pageids: Iterable[int], categories: Sequence[str]
) -> list[PageState]:
    """Existence, title, redirect flag, latest revid and scope categories; 50 pages a request."""
    states = []
    for batch in _batches(sorted(set(pageids))):
        params = _page_params(categories)
        for page in client.query_pages(pageids="|".join(map(str, batch)), **params):
            states.append(PageState.from_api(page, with_content=False))
    return states


def fetch_pages(
    client: MediaWikiClient, pageids: Iterable[int], categories: Sequence[str]
) -> list[PageState]:
    """Like probe_pages, plus the latest revision's wikitext, revid, timestamp and sha1."""
    states = []
    for batch in _batches(sorted(set(pageids))):
        params = _page_params(categories)
        params["prop"] += "|revisions"
        params.update(rvprop="ids|timestamp|sha1|content", rvslots="main")
        for page in client.query_pages(pageids="|".join(map(str, batch)), **params):
            states.append(PageState.from_api(page, with_content=True))
    return states


def resolve_titles(client: MediaWikiClient, titles: Iterable[str]) -> dict[str, int]:
    """Pageids of the titles that exist now (title as the wiki normalises it -> pageid)."""
    found: dict[str, int] = {}
    for batch in _batches(sorted(set(titles))):
        for page in client.query_pages(titles="|".join(batch), prop="info"):
            if not page.get("missing") and not page.get("invalid") and page.get("pageid"):
                found[page["title"]] = int(page["pageid"])
    return found


def transcluding_pages(client: MediaWikiClient, titles: Iterable[str]) -> set[int]:
    """Pageids of pages that transclude these pages (templates can add categories)."""
    pageids: set[int] = set()
    for batch in _batches(sorted(set(titles))):
        for page in client.query_pages(
            titles="|".join(batch), prop="transcludedin", tiprop="pageid", tilimit="max"
        ):
            pageids.update(int(t["pageid"]) for t in page.get("transcludedin", []))
    return pageids
