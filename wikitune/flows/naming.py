"""What the Prefect UI shows: flow run names, artifact keys and artifacts' count tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect.runtime import flow_run

from wikitune.config import source_slug
from wikitune.storage import PageChange

__all__ = [
    "PAGE_ROWS",
    "STORED_SOURCE",
    "artifact_key",
    "counts_table",
    "name_run_after",
    "pages_table",
    "run_name",
    "source_name",
]

STORED_SOURCE = "stored-source"
"""The source slug of a run started without a source, until it has read the store's."""


def artifact_key(prefix: str, name: str) -> str:
    """A stable artifact key for a source; Prefect allows lowercase letters, digits, dashes."""
    return f"{prefix}-{source_slug(name)}"[:80]


def counts_table(what: str, unit: str, counts: Mapping[str, int]) -> list[str]:
    """Markdown lines of a table of counts (``what`` | ``unit``), underscores as spaces."""
    rows = [f"| {name.replace('_', ' ')} | {value} |" for name, value in counts.items()]
    return [f"| {what} | {unit} |", "| --- | ---: |", *rows]


def source_name(source: Any) -> str:
    """The slug of a ``source`` parameter: a block, a block's name, or a block's saved fields."""
    name = getattr(source, "name", None) or (source if isinstance(source, str) else None)
    if name is None and isinstance(source, dict):
        name = source.get("name")
    return source_slug(name) if name else STORED_SOURCE


def run_name(prefix: str) -> str:
    """``prefix-<source slug>`` from the run's ``source`` parameter."""
    return f"{prefix}-{source_name(flow_run.parameters.get('source'))}"


def name_run_after(source: str) -> None:
    """Rename the current Prefect flow run after ``source`` once a run started without a source
    has resolved the store's: ``cycle-stored-source`` becomes ``cycle-<slug>``, so the in-flight
    check and a person find it by its source. Nothing outside a Prefect run."""
    current = flow_run.name
    if not flow_run.id or not current or not current.endswith(f"-{STORED_SOURCE}"):
        return
    from prefect import get_client

    renamed = current.removesuffix(STORED_SOURCE) + source_slug(source)
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=renamed)


PAGE_ROWS = 20
"""Pages a report names; the rest are counted."""


def pages_table(api_url: str, changes: Sequence[PageChange], total: int | None = None) -> list[str]:
    """Markdown lines of a table of changed pages (the first :data:`PAGE_ROWS`), each linked to
    its diff on the wiki (its page when there is no revision), and a line counting the rest."""
    index = api_url.rsplit("/", 1)[0] + "/index.php"
    lines = ["| page | change | on the wiki |", "| --- | --- | --- |"]
    for change in changes[:PAGE_ROWS]:
        kind = change.kind.replace("_", " ")
        if change.revid and "deleted" not in change.kind:
            link = f"[diff]({index}?curid={change.pageid}&diff={change.revid})"
        else:
            link = f"[page]({index}?curid={change.pageid})"
        title = change.title.replace("|", "\\|")
        lines.append(f"| {title} | {kind} | {link} |")
    rest = (total if total is not None else len(changes)) - min(len(changes), PAGE_ROWS)
    if rest > 0:
        lines += ["", f"And {rest} more."]
    return lines
