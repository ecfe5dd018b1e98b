"""Commands on the registry's versions and the champion they serve: models, rollback, ask, serve."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from wikitune.cli.common import (
    HomeOption,
    SourceOption,
    app,
    console,
    fail,
    follow_champion,
    source_for_registry,
)
from wikitune.config import load_settings


@app.command()
def models(
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
) -> None:
    """The registered versions of a source's adapters: aliases, metrics and decisions."""
    from wikitune.mlflow import registry

    settings = load_settings(home)
    name = source_for_registry(settings, source)
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
    name = source_for_registry(settings, source)
    try:
        before, after = registry.rollback(
            settings.tracking_uri,
            name,
            to=to,
            lock=promotions_lock(settings.tracking_uri, settings.registry_lock),
        )
    except (LookupError, ValueError, PromotionsLockMissing) as error:
        raise fail(str(error)) from None
    follow_champion(settings, name)
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
            raise fail(f"could not ask {url}: {error}") from None
        return
    name = source_for_registry(settings, source)
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
        raise fail(str(error)) from None
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
        raise fail(str(error)) from None
    name = source_for_registry(settings, source)
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
