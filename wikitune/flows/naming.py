"""Names the Prefect UI shows: flow run names and artifact keys."""

from __future__ import annotations

from prefect.runtime import flow_run

__all__ = ["artifact_key", "run_name"]


def artifact_key(prefix: str, name: str) -> str:
    """A stable artifact key; Prefect allows lowercase letters, digits and dashes only."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return f"{prefix}-{slug}"[:80]


def run_name(prefix: str) -> str:
    """``prefix-<source>`` from the run's ``source`` parameter (a block or a name)."""
    source = flow_run.parameters.get("source")
    name = getattr(source, "name", None) or (source if isinstance(source, str) else None)
    return f"{prefix}-{name or 'stored-source'}"
