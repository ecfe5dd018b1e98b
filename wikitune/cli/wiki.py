"""Commands on the wiki and the store: sync, build, snapshot, pages, status and the QA mapping."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wikitune.cli.common import (
    HomeOption,
    SourceOption,
    app,
    console,
    counts_table,
    fail,
    one_line,
    run_flow,
    takes_wiki_source,
    wiki_errors,
)
from wikitune.config import load_settings


@app.command()
@takes_wiki_source
def sync(
    source: Any = None,
    reconcile: Annotated[
        bool, typer.Option("--reconcile", help="Re-list the whole scope before applying changes.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Bring the store level with the wiki: a backfill the first time, recent changes after."""
    from wikitune.flows.sync import sync as sync_flow

    settings = load_settings(home)
    summary = run_flow(
        sync_flow,
        wiki_errors(),
        source=source,
        home=str(settings.home),
        reconcile=reconcile,
    )
    console.print(counts_table(f"sync of {summary.source} ({summary.mode})", summary.counts))
    cursor = f"{summary.cursor_timestamp} (rcid {summary.cursor_rcid})"
    console.print(f"{summary.requests} requests; cursor {cursor}")
    if summary.counts.get("failed"):
        console.print("Failed pages are recorded and retried on the next sync: `wikitune status`.")


@app.command()
def build(source: SourceOption = None, home: HomeOption = None) -> None:
    """Turn pages whose revision changed into QA pairs; retire pairs no longer supported."""
    from wikitune.flows.build import build as build_flow

    settings = load_settings(home)
    summary = run_flow(build_flow, (ValueError,), source=source, home=str(settings.home))
    console.print(counts_table(f"build of {summary.source}", summary.counts))
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
    summary = run_flow(snapshot_flow, (ValueError,), source=source, home=str(settings.home))
    console.print(counts_table(f"snapshot {summary.id}", summary.counts))
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
            raise fail(f"no snapshot {snapshot_id!r} in {settings.store_path}")
        store.mark_champion(snapshot_id)
    console.print(f"snapshot {snapshot_id} recorded as the champion's")


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
        raise fail(f"no store at {settings.store_path}: run `wikitune sync` first")
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
        raise fail(f"no store at {settings.store_path}: run `wikitune sync` first")
    try:
        current = load_mapping(settings.mapping_path)
    except ValueError as error:
        raise fail(one_line(error)) from None
    with Store(settings.store_path) as store:
        try:
            name = store.source_name(source)
        except ValueError as error:
            raise fail(one_line(error)) from None
        surveyed = survey_infoboxes(store.in_scope_wikitext(name), current)
    if not surveyed:
        raise fail(f"no page of {name} uses a template with named parameters")
    wanted = {template_name(t) for t in template or []}
    chosen = [t for t in surveyed if template_name(t.name) in wanted]
    if template and len(chosen) < len(wanted):
        known = ", ".join(t.name for t in surveyed[:10])
        raise fail(f"--template {', '.join(template)}: not among the surveyed templates ({known})")
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
        raise fail(f"no store at {settings.store_path}: run `wikitune sync` first")
    with Store(settings.store_path) as store:
        names = [source] if source else store.source_names()
        for name in names:
            for pageid, title, revid in store.in_scope_pages(name):
                if as_json:
                    record = {"pageid": pageid, "title": title, "revid": revid}
                    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    sys.stdout.write(f"{pageid}\t{revid}\t{title}\n")
