"""What the Prefect UI shows: flow run names, artifact keys and artifacts' count tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.runtime import flow_run

from wikitune.config import source_slug

__all__ = ["artifact_key", "counts_table", "run_name", "source_name"]


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
    return source_slug(name) if name else "stored-source"


def run_name(prefix: str) -> str:
    """``prefix-<source slug>`` from the run's ``source`` parameter."""
    return f"{prefix}-{source_name(flow_run.parameters.get('source'))}"
