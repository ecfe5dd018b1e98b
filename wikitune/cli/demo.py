"""The demo command: the whole loop on a local wiki."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from wikitune.cli.common import (
    LOG_FILE,
    HomeOption,
    app,
    console,
    fail,
    run_reported,
    training_errors,
    wiki_errors,
)
from wikitune.config import load_settings


@app.command()
def demo(
    base_model: Annotated[
        str,
        typer.Option(
            help="smollm2-135m-instruct (a real instruct model, about 11 minutes on 2 cores with"
            " AVX512-BF16 or AMX, longer without), toy (a tiny model built from the wiki, a few"
            " minutes), or any other base."
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
        raise fail("the demo needs Debian's mediawiki and php-cli packages: run scripts/setup.sh")
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

    outcome = run_reported(
        run_demo,
        (*wiki_errors(), *training_errors(), LookupError, OSError),
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
