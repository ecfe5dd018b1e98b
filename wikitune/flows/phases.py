"""Where a cycle's time went, read back from the flow and task runs Prefect recorded: sync,
build, snapshot, train, evaluate and promote (the demo prints it; the cycle benchmark compares
it deployed and in-process); or from the plain calls of a cycle run without a Prefect server."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

__all__ = ["PHASES", "phase_seconds", "unit_phases"]

PHASES = ("sync", "build", "snapshot", "train", "evaluate", "promote")
_FLOW_PHASES = {"sync-": "sync", "build-": "build", "snapshot-": "snapshot"}
_TASK_PHASES = {
    "train-adapter": "train",
    "evaluate-candidate": "evaluate",
    "promote-candidate": "promote",
}


def unit_phases(units: dict[str, float]) -> dict[str, float]:
    """Seconds each phase ran, from the flows' and tasks' plain calls timed by
    ``runtime.clocked_units`` (a cycle run without a Prefect server)."""
    by_name = {prefix.removesuffix("-"): phase for prefix, phase in _FLOW_PHASES.items()}
    seconds: dict[str, float] = defaultdict(float)
    for name, spent in units.items():
        phase = by_name.get(name) or _TASK_PHASES.get(name)
        if phase:
            seconds[phase] += spent
    return dict(seconds)


def phase_seconds(since: datetime) -> dict[str, float]:
    """Seconds each phase ran in the runs that started after ``since``."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )

    seconds: dict[str, float] = defaultdict(float)
    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        )
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since))
        )
    for run in flows:
        for prefix, phase in _FLOW_PHASES.items():
            if run.name.startswith(prefix):
                seconds[phase] += run.total_run_time.total_seconds()
    for run in tasks:
        for prefix, phase in _TASK_PHASES.items():
            if run.name.startswith(prefix):
                seconds[phase] += run.total_run_time.total_seconds()
    return dict(seconds)
