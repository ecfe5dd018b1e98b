"""Two ways to run one flow body: as Prefect runs, or as plain function calls.

A deployment, or any command with a Prefect API configured (``PREFECT_API_URL``), runs the
flows as Prefect flow and task runs: logs, artifacts and events reach the server. A command
without one runs the same functions directly: Prefect 3 would otherwise start a temporary
server for every command (5–10 s here, and left running when the command is killed), and its
runs would land in a database no UI reads. Logs then go to the home's log file and artifacts,
which only a Prefect UI shows, are skipped.

Flow bodies call their tasks and subflows through :func:`step`, log through :func:`run_logger`
and publish through the ``*_artifact`` helpers, so one body serves both ways.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from uuid import UUID

__all__ = [
    "clocked_units",
    "finished",
    "in_prefect_run",
    "markdown_artifact",
    "prefect_configured",
    "progress_artifact",
    "run_flow",
    "run_logger",
    "step",
    "table_artifact",
    "update_progress_artifact",
]

_unit_seconds: ContextVar[dict[str, float] | None] = ContextVar("unit_seconds", default=None)


def prefect_configured() -> bool:
    """Whether a Prefect API is configured (``PREFECT_API_URL``, from the environment or the
    active Prefect profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_flow(flow: Any, /, **params: Any) -> Any:
    """Run ``flow`` as a Prefect run when a Prefect API is configured, else as a plain call."""
    if prefect_configured() or in_prefect_run():
        return flow(**params)
    return step(flow, **params)


def step(unit: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Call a task or subflow: a Prefect run inside a Prefect run, a plain call outside one
    (a flow's parameters are validated as Prefect would). Plain calls are timed by name for
    :func:`clocked_units`."""
    from prefect import Flow

    if in_prefect_run():
        return unit(*args, **kwargs)
    if isinstance(unit, Flow):
        kwargs = unit.validate_parameters(kwargs)
    started = time.perf_counter()
    try:
        return unit.fn(*args, **kwargs)
    finally:
        clock = _unit_seconds.get()
        if clock is not None:
            clock[unit.name] = clock.get(unit.name, 0.0) + time.perf_counter() - started


@contextmanager
def clocked_units() -> Iterator[dict[str, float]]:
    """Seconds spent in each task and flow (by name) called as plain calls inside the block."""
    seconds: dict[str, float] = {}
    token = _unit_seconds.set(seconds)
    try:
        yield seconds
    finally:
        _unit_seconds.reset(token)


def finished(
    value: Any, message: str, *, state_name: str | None = None, tags: Sequence[str] = ()
) -> Any:
    """A flow's return: in a Prefect run, a Completed state with ``message`` (the run's final
    message in the UI) whose data is ``value``, named ``state_name`` (e.g. ``Promoted``: the
    runs list and the dashboard show the name), with ``tags`` added to the run to filter by;
    outside one, ``value``."""
    if not in_prefect_run():
        return value
    from prefect.runtime import flow_run
    from prefect.states import Completed

    added = [tag for tag in tags if tag not in flow_run.tags]
    if added and flow_run.id:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=[*flow_run.tags, *added])
    return Completed(message=message, data=value, name=state_name or "Completed")


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run's logger inside a run (its logs reach the UI); ``wikitune.flows``
    outside one (the CLI sends it to the home's log file)."""
    if in_prefect_run():
        from prefect import get_run_logger

        return get_run_logger()
    return logging.getLogger("wikitune.flows")


def markdown_artifact(*, key: str, markdown: str, description: str) -> None:
    """Publish a markdown artifact of the current Prefect run (none outside a run)."""
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=key, markdown=markdown, description=description)


def table_artifact(*, key: str, table: Any, description: str) -> None:
    """Publish a table artifact of the current Prefect run (none outside a run)."""
    if in_prefect_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(key=key, table=table, description=description)


def progress_artifact(*, key: str, progress: float, description: str) -> UUID | None:
    """Start a progress artifact of the current Prefect run; its id, or None outside a run."""
    if not in_prefect_run():
        return None
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(progress=progress, key=key, description=description)


def update_progress_artifact(artifact: UUID | None, *, progress: float, description: str) -> None:
    """Move a progress artifact started by :func:`progress_artifact` (nothing for None)."""
    if artifact is not None:
        from prefect.artifacts import update_progress_artifact as update

        update(artifact, progress=progress, description=description)
