"""Progress of long steps (training steps, evaluation batches) for whoever shows it: the CLI
installs a rich progress display; elsewhere (workers, tests) progress goes nowhere and the
Prefect logs carry the story.

Tasks call ``progress.track(description, total)`` and advance what it yields; they never know
whether anyone is watching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Display", "displaying", "track", "trainer_callback"]


class Display(Protocol):
    def add_task(self, description: str, *, total: float | None = None) -> Any: ...
    def update(self, task_id: Any, *, advance: float = ..., total: float | None = ...) -> None: ...
    def remove_task(self, task_id: Any) -> None: ...


_display: Display | None = None
log = logging.getLogger(__name__)


@contextmanager
def displaying(display: Display) -> Iterator[None]:
    """Show every ``track`` in ``display`` (e.g. a started ``rich.progress.Progress``) while the
    block runs."""
    global _display
    previous, _display = _display, display
    try:
        yield
    finally:
        _display = previous


@contextmanager
def track(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` units while the block runs; yields ``advance(n)``. Logs the block's
    seconds when it ends (what each part of an evaluation or a training costs)."""
    started = time.perf_counter()
    display = _display
    task_id = display.add_task(description, total=total) if display is not None else None

    def advance(n: int = 1) -> None:
        if display is not None:
            display.update(task_id, advance=n)

    try:
        yield advance
    finally:
        if display is not None:
            display.remove_task(task_id)
        log.info("%s: %.1f s", description, time.perf_counter() - started)


def trainer_callback(description: str) -> Any:
    """A ``transformers`` callback that shows training steps (and evaluations) as bars."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.advance: Callable[[int], None] = lambda n=1: None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.bar = track(description, state.max_steps)
            self.advance = self.bar.__enter__()
            self.advance(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.advance(1)

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return TrainingProgress()
