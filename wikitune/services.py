"""``wikitune up`` and ``down``: a Prefect server, an MLflow server and one worker per work pool
on 127.0.0.1, started as child processes whose PIDs are recorded under ``$WIKITUNE_HOME``.

Every process ``up`` starts carries ``WIKITUNE_SERVICES_ID`` in its environment, and so do the
flow runs its workers start (in sessions of their own), so ``down`` finds and stops all of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import requests
from pydantic import BaseModel

from wikitune.config import Settings

__all__ = [
    "Service",
    "Services",
    "ServicesError",
    "env_exports",
    "running",
    "start",
    "stop",
    "tagged_processes",
]

SERVICES_ID = "WIKITUNE_SERVICES_ID"


class ServicesError(RuntimeError):
    """A service did not start, or the services are already up."""


class Service(BaseModel):
    name: str
    pid: int
    log: str
    url: str | None = None


class Services(BaseModel):
    """What ``up`` started: written to ``$WIKITUNE_HOME/services.json``."""

    id: str
    prefect_api_url: str
    prefect_ui_url: str
    mlflow_url: str
    serve_url: str | None = None
    """The OpenAI-compatible API of the champion (``wikitune serve``), when up started it."""
    env: dict[str, str]
    services: list[Service]


def _record_path(settings: Settings) -> Path:
    return settings.home / "services.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # A zombie (exited, not yet reaped by its parent) counts as gone.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def running(settings: Settings) -> Services | None:
    """The services ``up`` recorded for this home, if any of them is still alive."""
    path = _record_path(settings)
    if not path.exists():
        return None
    record = Services.model_validate_json(path.read_text())
    return record if any(_alive(s.pid) for s in record.services) else None


def _script(name: str) -> str:
    """A console script of this environment (prefect, mlflow), next to this Python."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _wait_healthy(
    service: Service, process: subprocess.Popen[bytes], url: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(service.log).read_text(errors="replace")[-2000:]
            raise ServicesError(f"{service.name} exited with {process.returncode}: {tail}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServicesError(f"{service.name} did not answer {url} within {timeout:.0f} s")


def start(
    settings: Settings,
    *,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    pools: tuple[str, ...] = ("cpu", "gpu"),
    timeout: float = 180,
    before_workers: Callable[[Services], None] | None = None,
    serve_port: int | None = None,
    serve_source: Callable[[], str] | None = None,
) -> Services:
    """Start the servers, call ``before_workers`` (``up`` deploys there: the work pools must
    exist before a worker starts, or the worker creates its pool while the deployment does
    and the server's SQLite database reports "database is locked"), then start the workers;
    stop what was started if any of it fails."""
    if running(settings) is not None:
        raise ServicesError(f"services are already up for {settings.home}: run `wikitune down`")
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    prefect_ui = f"http://127.0.0.1:{prefect_port}"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    services_id = uuid.uuid4().hex
    env = {
        SERVICES_ID: services_id,
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_API_URL": f"{prefect_ui}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "WIKITUNE_HOME": str(settings.home),
        "WIKITUNE_MLFLOW_TRACKING_URI": mlflow_url,
        "WIKITUNE_MLFLOW_UI_URL": mlflow_url,
    }
    record = Services(
        id=services_id,
        prefect_api_url=env["PREFECT_API_URL"],
        prefect_ui_url=prefect_ui,
        mlflow_url=mlflow_url,
        env={k: v for k, v in env.items() if k != SERVICES_ID},
        services=[],
    )
    commands: list[tuple[str, list[str] | Callable[[], list[str]], str | None]] = [
        (
            "prefect-server",
            [
                _script("prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                f"{prefect_port}",
            ],
            f"{prefect_ui}/api/health",
        ),
        (
            "mlflow-server",
            [
                *(_script("mlflow"), "server", "--host", "127.0.0.1", "--port", f"{mlflow_port}"),
                *("--backend-store-uri", f"sqlite:///{settings.home / 'mlflow.db'}"),
                *("--artifacts-destination", str(settings.home / "mlartifacts"), "--workers", "1"),
            ],
            f"{mlflow_url}/health",
        ),
    ] + [
        (
            f"worker-{pool}",
            [
                *(sys.executable, "-m", "wikitune.worker", "start", "--pool", pool),
                *("--type", "process"),
                *("--name", f"wikitune-{pool}-{os.uname().nodename}"),
            ],
            None,
        )
        for pool in pools
    ]
    if serve_port is not None and serve_source is not None:
        record.serve_url = f"http://127.0.0.1:{serve_port}/v1"
        env["WIKITUNE_SERVE_URL"] = record.serve_url  # the workers' cycles wait for it
        serve = [sys.executable, "-m", "wikitune.cli", "serve", "--port", f"{serve_port}"]
        commands.append(
            (
                "wikitune-serve",
                lambda: [*serve, "--source", serve_source()],
                f"http://127.0.0.1:{serve_port}/health",
            )
        )
    try:
        for name, command_or_later, health in commands:
            command = command_or_later() if callable(command_or_later) else command_or_later
            if name.startswith("worker-") and before_workers is not None:
                before_workers(record)
                before_workers = None
            service = Service(name=name, pid=0, log=str(logs / f"{name}.log"), url=health)
            with open(service.log, "ab") as log:
                # A session of its own: `down` stops the service and its children as a group,
                # and a terminal's Ctrl-C does not reach it.
                process = subprocess.Popen(
                    command,
                    # The flow runs the workers start: libraries' notices about their next
                    # releases are not news to the person reading a run's logs.
                    env={**os.environ, **env, "PYTHONWARNINGS": "ignore::FutureWarning"},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            service.pid = process.pid
            record.services.append(service)
            _record_path(settings).write_text(record.model_dump_json(indent=2))
            if health:
                _wait_healthy(service, process, health, timeout)
    except BaseException:
        stop(settings)
        raise
    return record


def tagged_processes(services_id: str) -> list[int]:
    """PIDs of live processes whose environment carries this ``up``'s id."""
    needle = f"{SERVICES_ID}={services_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def stop(settings: Settings, *, grace: float = 20) -> list[str]:
    """Stop everything ``up`` started for this home (workers first, then the servers) and
    every process they started; returns the names of the services stopped."""
    path = _record_path(settings)
    if not path.exists():
        return []
    record = Services.model_validate_json(path.read_text())
    stopped = []
    for service in reversed(record.services):
        if _alive(service.pid):
            _signal_group(service.pid, signal.SIGTERM)
            stopped.append(service.name)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(s.pid) for s in record.services):
        time.sleep(0.2)
    for service in record.services:
        if _alive(service.pid):
            _signal_group(service.pid, signal.SIGKILL)
    # Flow runs the workers started live in sessions of their own.
    for pid in tagged_processes(record.id):
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and tagged_processes(record.id):
        time.sleep(0.2)
    leftover = tagged_processes(record.id)
    if leftover:
        raise ServicesError(f"processes still running after stop: {leftover}")
    path.unlink()
    return stopped


def env_exports(record: Services) -> str:
    """Shell lines that point this terminal's ``wikitune`` and ``prefect`` at the services."""
    keys = ("PREFECT_API_URL", "WIKITUNE_MLFLOW_TRACKING_URI", "WIKITUNE_MLFLOW_UI_URL")
    return "\n".join(f"export {key}={record.env[key]}" for key in keys)
