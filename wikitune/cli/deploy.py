"""Commands that run wikitune on Prefect: deploy, up, down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wikitune.cli.common import (
    HomeOption,
    SourceBlockOption,
    app,
    console,
    fail,
    takes_wiki_source,
)
from wikitune.config import is_tracking_server, load_settings

TimezoneOption = Annotated[
    str, typer.Option(help="Time zone of the schedules (IANA name, e.g. Asia/Shanghai).")
]


SyncMinutesOption = Annotated[float, typer.Option(help="Minutes between scheduled syncs.")]


NightlyCronOption = Annotated[str, typer.Option(help="Cron of the nightly retrain.")]


NightlyWhenOption = Annotated[
    str,
    typer.Option(help="When the nightly run retrains: new-data, threshold or always."),
]


RetrainBaseOption = Annotated[
    str | None,
    typer.Option(help="Base model of the retrains (default: $WIKITUNE_BASE_MODEL here)."),
]
RetrainRecipeOption = Annotated[
    Path | None,
    typer.Option(help="Training recipe, YAML or packaged name (default: the base's)."),
]
RetrainDeviceOption = Annotated[
    str | None,
    typer.Option(
        help="Device of the gpu pool's retrains, cuda or cpu; the default recipe follows it"
        " (default: $WIKITUNE_DEVICE here, else each worker's own)."
    ),
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
    device: str | None,
    *,
    block_later: bool = False,
) -> tuple[Any, Any]:
    """Check what ``deploy`` is given before anything is started or applied: the wiki source
    (the one the store recorded when none is given) and the deployments' options."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from wikitune.deployments import DeployOptions
    from wikitune.storage import Store
    from wikitune.tasks.recipe import chosen_recipe, recipe_origin

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"unknown time zone {timezone!r}: use an IANA name like Asia/Shanghai") from None
    if nightly_retrain_when not in ("new-data", "threshold", "always"):
        raise fail("--nightly-retrain-when must be new-data, threshold or always")
    if source is None and not block_later:
        # The deployments carry the source the store recorded (saved as a block), so their
        # runs are named after it and the UI shows what they sync.
        from wikitune.flows.sync import resolve_source

        with Store(settings.store_path) as store:
            if not store.source_names():
                raise fail(
                    f"no wiki source in {settings.store_path}: give --api-url and --category"
                    " or --source-block NAME (up and deploy save the source as that block)"
                )
            try:
                source = resolve_source(store, None)
            except ValueError as error:  # several sources: say which to deploy
                raise fail(f"{error}, or --source-block NAME") from None
    device = device or settings.device
    if device not in (None, "cuda", "cpu"):
        raise fail(f"--device must be cuda or cpu, not {device!r}")
    base = base_model or settings.base_model
    try:
        path = recipe or settings.recipe_path
        chosen = chosen_recipe(base, path, device)
    except ValueError as error:
        raise fail(str(error)) from None
    return source, DeployOptions(
        timezone=timezone,
        sync_minutes=sync_minutes,
        nightly_cron=nightly_cron,
        nightly_retrain_when=nightly_retrain_when,
        base_model=base,
        recipe=chosen.model_dump(mode="json"),
        recipe_origin=recipe_origin(base, path, device),
        device=device,
        retrain_threshold=settings.retrain_threshold,
        tracking_uri=_tracking_server(settings),
        margins=settings.margins().model_dump(),
    )


def _share_base(plan: Any, settings: Any) -> None:
    """With a tracking server, the deployments name the base as a ``gpu`` worker on any machine
    finds it (``basemodel.shareable_spec``): one only this machine has (a directory, a ``.gguf``
    file) by the ``runs:/`` URI it is published at, once per digest."""
    from wikitune.tasks import basemodel

    if not plan.base_model or not plan.tracking_uri:
        return
    try:
        shared = basemodel.shareable_spec(plan.base_model, settings.models_dir, plan.tracking_uri)
    except basemodel.BaseModelError as error:
        raise fail(str(error)) from None
    if shared.startswith("runs:/") and shared != plan.base_model:
        plan.base_published_from = plan.base_model
    plan.base_model = shared


def _tracking_server(settings: Any) -> str | None:
    """The MLflow server the deployments name: this shell's WIKITUNE_MLFLOW_TRACKING_URI, else
    the one `up` runs for this home (so a deploy from a shell without it changes nothing),
    else none (a local file, which no other machine can use)."""
    from wikitune import services

    if is_tracking_server(settings.tracking_uri):
        return str(settings.tracking_uri)
    record = services.running(settings)
    return record.mlflow_url if record is not None else None


def _print_trains(plan: Any) -> None:
    published = f" (published as {plan.base_model})" if plan.base_published_from else ""
    base = plan.base_published_from or plan.base_model
    console.print(f"retrains train {base}{published} with {plan.recipe_origin}", soft_wrap=True)


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
@takes_wiki_source
def deploy(
    timezone: TimezoneOption = "UTC",
    sync_minutes: SyncMinutesOption = 15,
    nightly_cron: NightlyCronOption = "0 2 * * *",
    nightly_retrain_when: NightlyWhenOption = "new-data",
    base_model: RetrainBaseOption = None,
    recipe: RetrainRecipeOption = None,
    device: RetrainDeviceOption = None,
    source: Any = None,
    home: HomeOption = None,
) -> None:
    """Apply the work pools (cpu; gpu with limit 1), the 15-minute sync, the nightly retrain and
    the data-ready automation to the Prefect server in PREFECT_API_URL. Safe to repeat."""
    from prefect.settings import PREFECT_API_URL

    from wikitune.deployments import apply

    settings = load_settings(home)
    if not PREFECT_API_URL.value():
        raise fail("deploy needs a Prefect server: set PREFECT_API_URL, or run `wikitune up`")
    source, plan = _deploy_plan(
        settings,
        source,
        timezone,
        sync_minutes,
        nightly_cron,
        nightly_retrain_when,
        base_model,
        recipe,
        device,
    )
    _share_base(plan, settings)
    _print_applied(apply(source, plan), PREFECT_API_URL.value().removesuffix("/api"))
    _print_trains(plan)


@app.command()
@takes_wiki_source
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
    base_model: RetrainBaseOption = None,
    recipe: RetrainRecipeOption = None,
    device: RetrainDeviceOption = None,
    source: Any = None,
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
    source, plan = _deploy_plan(
        settings,
        source,
        timezone,
        sync_minutes,
        nightly_cron,
        nightly_retrain_when,
        base_model,
        recipe,
        device,
        block_later=source_block is not None,
    )
    deployed: list[Any] = []

    def deploy_before_workers(record: services.Services) -> None:
        nonlocal source
        plan.tracking_uri = record.mlflow_url  # the tracking server just started
        _share_base(plan, settings)
        with temporary_settings({PREFECT_API_URL: record.prefect_api_url}):
            if source_block:
                from wikitune.blocks.source import WikiSourceBlock

                source = WikiSourceBlock.load(source_block).plain()
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
        raise fail(str(error)) from None
    except Exception as error:  # start() stopped what it started
        raise fail(f"deploy failed, services stopped: {error}") from None
    (applied,) = deployed
    console.print(
        f"started: {', '.join(s.name for s in record.services)} (logs in {settings.home / 'logs'})"
    )
    _print_applied(applied, record.prefect_ui_url)
    _print_trains(plan)
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
        raise fail(str(error)) from None
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
