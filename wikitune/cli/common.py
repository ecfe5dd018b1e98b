"""What the commands share: the Typer app, the consoles, the options, running a flow with its
errors reported in one line, and the log file."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from wikitune.config import load_settings

# The terminal shows wikitune's own progress bars, not one per downloaded artifact or tensor.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Library deprecation notes and schema hints say nothing a wikitune user can act on.
for _module in ("transformers", "mlflow", "peft", "trl"):
    warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{_module}(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=rf"{_module}(\.|$)")

app = typer.Typer(
    help="Keep a domain language model fresh with its MediaWiki.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


# Piped output keeps whole table rows (rich would cut them to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 240)


errors = Console(stderr=True)


T = TypeVar("T")


HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home", help="wikitune's home directory (default: $WIKITUNE_HOME or ./.wikitune)."
    ),
]


class _OneLineErrors(logging.Filter):
    """Drop Prefect's traceback for errors whose message already says everything (a refused
    login, a request that failed after its retries): the user sees one line."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.expected):
            record.exc_info = None
            record.exc_text = None
        return True


LOG_FILE = "logs/wikitune.log"


_MAX_ERROR_LENGTH = 300


def _log_to_file(home: Path) -> Path:
    """Send Prefect's and the libraries' terminal logs to ``home/logs/wikitune.log`` instead: the
    terminal keeps wikitune's own output and progress (the Prefect UI still gets every log)."""
    path = home / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    for logger in loggers:
        terminal = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        for old in terminal:
            logger.removeHandler(old)
        if terminal and handler not in logger.handlers:
            logger.addHandler(handler)
    logging.getLogger("wikitune").setLevel(logging.INFO)
    if handler not in logging.getLogger().handlers:
        logging.getLogger().addHandler(handler)
    return path


@contextmanager
def progress_bars() -> Iterator[None]:
    """Show the tasks' ``progress.track`` bars on the terminal (stderr) while the block runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from wikitune import progress

    bars = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
    )
    with bars, progress.displaying(bars):
        yield


def run_flow(flow: Callable[..., T], expected: tuple[type[Exception], ...], **params: Any) -> T:
    """Run a flow: as Prefect runs when a Prefect API is configured (PREFECT_API_URL, e.g. from
    `wikitune up`), else as plain calls with no Prefect server at all (see flows/runtime)."""
    from wikitune.flows import runtime

    return run_reported(partial(runtime.run_flow, flow), expected, **params)


def run_reported(run: Callable[..., T], expected: tuple[type[Exception], ...], **params: Any) -> T:
    """Call ``run`` with progress bars on the terminal and logs in the home's log file; errors
    of the expected kinds become one ``error:`` line and exit code 1."""
    home = load_settings(params.get("home")).home
    for logger in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(logger).addFilter(_OneLineErrors(expected))
    log_file = _log_to_file(home)
    try:
        with progress_bars():
            return run(**params)
    except expected as error:
        raise fail(str(error), log_file=log_file) from None


def one_line(error: Exception) -> str:
    """A validation error's messages on one line: "field: message; ..."."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        messages = []
        for detail in error.errors():
            where = ".".join(str(part) for part in detail["loc"])
            text = detail["msg"].removeprefix("Value error, ")
            messages.append(f"{where}: {text}" if where else text)
        return "; ".join(messages)
    return str(error)


def fail(message: str, *, log_file: Path | None = None) -> typer.Exit:
    """An ``error:`` line. With a log file, one readable line: the first line of the message,
    cut short, and the whole text in the log (a failed load can dump kilobytes of state)."""
    line = message.strip() or "failed"
    if log_file is not None:
        logging.getLogger("wikitune.cli").error("%s", message)
        first = line.splitlines()[0]
        if len(first) > _MAX_ERROR_LENGTH or first != line:
            line = f"{first[:_MAX_ERROR_LENGTH]}... (the whole error is in {log_file})"
    errors.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


ApiUrlOption = Annotated[str | None, typer.Option(help="The wiki's api.php URL.")]


CategoryOption = Annotated[
    list[str] | None, typer.Option(help='A category in scope, e.g. "Category:VTuber".')
]


NamespaceOption = Annotated[
    list[int] | None,
    typer.Option(
        help="A namespace number in scope; with --category, the members' namespaces to follow"
        " (default: the wiki's content namespaces).",
    ),
]


NameOption = Annotated[str | None, typer.Option(help="Key of this source in the store.")]


UserAgentOption = Annotated[
    str | None, typer.Option(help="User-Agent with your contact (wikis ask for one).")
]


IntervalOption = Annotated[float | None, typer.Option(help="Seconds between requests.")]


BotUserOption = Annotated[
    str | None,
    typer.Option(help='Bot-password user "User@appid"; password from WIKITUNE_BOT_PASSWORD.'),
]


SourceBlockOption = Annotated[
    str | None, typer.Option(help="Name of a saved 'wikitune wiki source' Prefect block.")
]


_SOURCE_OPTIONS: dict[str, Any] = {
    "api_url": ApiUrlOption,
    "category": CategoryOption,
    "namespace": NamespaceOption,
    "name": NameOption,
    "user_agent": UserAgentOption,
    "request_interval": IntervalOption,
    "bot_user": BotUserOption,
    "source_block": SourceBlockOption,
}


def takes_wiki_source(command: Callable[..., T]) -> Callable[..., T]:
    """Give a command the wiki source options (``--api-url``, ``--category``, ...,
    ``--source-block``), declared once, here. The command takes ``source``: what they describe
    (:func:`wiki_source`), None for the source the store recorded. A command that declares
    ``source_block`` itself gets that name as it is and loads the block when it can (``up``,
    whose Prefect server is not up yet)."""
    own = inspect.signature(command, eval_str=True)
    keeps_block = "source_block" in own.parameters
    added = {k: v for k, v in _SOURCE_OPTIONS.items() if not (keeps_block and k == "source_block")}
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        for name, option in added.items()
    ]
    kept = [p for name, p in own.parameters.items() if name != "source"]
    # Typer lists options in this order: the source's before --home, which ends every command.
    at = next((i for i, p in enumerate(kept) if p.name == "home"), len(kept))
    parameters = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*kept[:at], *options, *kept[at:]]
    ]

    @functools.wraps(command)
    def with_source(**kwargs: Any) -> T:
        given = {name: kwargs.pop(name) for name in added}
        block = None if keeps_block else given.pop("source_block")
        return command(source=wiki_source(**given, source_block=block), **kwargs)

    with_source.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_source.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_source


def need_prefect_server(option: str, what: str) -> None:
    """Fail with one line when ``option`` needs a Prefect server and none is configured (the
    flows run without one, but blocks and deployments live on a server)."""
    from wikitune.flows import runtime

    if not runtime.prefect_configured():
        raise fail(
            f"{option} needs the Prefect server that {what}: set PREFECT_API_URL,"
            " or run `wikitune up`"
        )


def wiki_source(
    api_url: str | None,
    category: list[str] | None,
    namespace: list[int] | None,
    name: str | None,
    user_agent: str | None,
    request_interval: float | None,
    bot_user: str | None,
    source_block: str | None,
) -> Any:
    """The wiki source the options describe, or None to use the one the store recorded."""
    from wikitune.tasks.source import WikiSource

    if source_block:
        from wikitune.blocks.source import WikiSourceBlock

        need_prefect_server("--source-block", "holds the block")
        return WikiSourceBlock.load(source_block).plain()
    if api_url:
        options: dict[str, Any] = {
            "api_url": api_url,
            "categories": category or [],
            "namespaces": namespace or [],
            "name": name or "",
            "bot_user": bot_user,
            "user_agent": user_agent,
            "request_interval": request_interval,
        }
        try:
            return WikiSource(**{k: v for k, v in options.items() if v is not None})
        except ValueError as error:
            raise fail(f"invalid wiki source: {one_line(error)}") from None
    if category or namespace or bot_user:
        raise fail("--category, --namespace and --bot-user need --api-url")
    return None


def wiki_errors() -> tuple[type[Exception], ...]:
    """Errors of a sync whose message says everything: printed as one line."""
    from wikitune.tasks.mediawiki import ApiError, LoginFailed, RequestFailed

    return (LoginFailed, RequestFailed, ApiError, ValueError)


def training_errors() -> tuple[type[Exception], ...]:
    """Errors of a training or an evaluation whose message says everything: one line."""
    from wikitune.tasks.snapshots import SnapshotUnavailable
    from wikitune.tasks.train import TrainingFailed

    return (TrainingFailed, SnapshotUnavailable)


SourceOption = Annotated[
    str | None, typer.Option("--source", help="Source name (default: the store's only one).")
]


def counts_table(title: str, counts: Mapping[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key.replace("_", " "), shown)
    return table


BaseModelOption = Annotated[
    str | None,
    typer.Option(
        help="Hub id, model directory, .gguf file or smollm2-135m-instruct"
        " (default: $WIKITUNE_BASE_MODEL, else smollm2-135m-instruct)."
    ),
]


RecipeOption = Annotated[
    Path | None,
    typer.Option(help="Training recipe: a YAML file or a packaged name (smollm2-135m-cpu)."),
]


RunOption = Annotated[str, typer.Option("--run", help="MLflow run id of a training.")]


def follow_champion(settings: Any, source: str) -> None:
    """Measure freshness against the champion's snapshot from now on (when this home's store
    made it)."""
    from wikitune.storage import Store
    from wikitune.tasks.champion import follow_champion

    if settings.store_path.exists():
        with Store(settings.store_path) as store:
            follow_champion(store, settings.tracking_uri, source)


def source_for_registry(settings: Any, source: str | None) -> str:
    from wikitune.storage import Store

    if source:
        return source
    if not settings.store_path.exists():
        raise fail("no store to name the source: pass --source")
    with Store(settings.store_path) as store:
        try:
            return store.source_name(None)
        except ValueError as error:
            raise fail(str(error)) from None
