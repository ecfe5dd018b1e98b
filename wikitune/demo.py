"""The demo: a local MediaWiki filled with invented VTubers; the whole cycle (sync, build,
snapshot, train, evaluate, promote) on a real pretrained chat model (the packaged SmolLM2 by
default); then edits and the cycle again, so a second candidate meets the first champion; then
a held-out question about the edited fact."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wikitune.flows import runtime
from wikitune.flows.phases import phase_seconds, unit_phases
from wikitune.localwiki import LocalWiki

if TYPE_CHECKING:
    from wikitune.config import Settings
    from wikitune.flows.pipeline import CycleSummary
    from wikitune.tasks.promotion import Promotion

__all__ = [
    "SAMPLE_VTUBERS",
    "TOY",
    "TOY_MARGINS",
    "TOY_RECIPE",
    "DemoOutcome",
    "run_demo",
    "sample_page",
    "training_precision",
]

CATEGORY = "Category:VTuber"

# Invented VTubers: (title, name, debut date, agency, fan name, language, platform).
SAMPLE_VTUBERS = [
    ("星野灯", "星野灯", "2021年3月14日", "晨星社", "灯火团", "中文", "Bilibili"),
    (
        "Mira Tidewell",
        "Mira Tidewell",
        "2020-08-02",
        "Harbor Live",
        "Tidecallers",
        "English",
        "YouTube",
    ),
    ("白露小雪", "白露小雪", "2022年12月1日", "雪原工作室", "雪团子", "中文", "Bilibili"),
    ("Kato Rin", "Kato Rin", "2019-05-20", "Independent", "Rinfolk", "Japanese", "YouTube"),
    ("云端小鲸", "云端小鲸", "2023年6月18日", "深蓝计划", "鲸鱼群", "中文", "Bilibili"),
    (
        "Pip Lanternwick",
        "Pip Lanternwick",
        "2024-01-09",
        "Harbor Live",
        "Wicklings",
        "English",
        "Twitch",
    ),
]

INFOBOX_TEMPLATE = """{| class="infobox"
! colspan=2 | {{{name}}}
|-
| Debut || {{{debut_date|}}}
|-
| Agency || {{{agency|}}}
|-
| Fan name || {{{fan_name|}}}
|-
| Language || {{{language|}}}
|-
| Platform || {{{platform|}}}
|}<includeonly>[[Category:VTuber]]</includeonly>"""


def sample_page(name: str, debut: str, agency: str, fans: str, language: str, platform: str) -> str:
    """Wikitext of a sample VTuber page; the category comes from the infobox template."""
    return (
        "{{Infobox VTuber\n"
        f"| name = {name}\n| debut_date = {debut}\n| agency = {agency}\n"
        f"| fan_name = {fans}\n| language = {language}\n| platform = {platform}\n}}}}\n"
        f"'''{name}''' is a virtual YouTuber with {agency}, streaming on {platform}."
    )


def write_sample_pages(wiki: LocalWiki) -> None:
    """The infobox template and the sample VTubers' pages, with the wiki's jobs run."""
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    for title, *fields in SAMPLE_VTUBERS:
        wiki.edit(title, sample_page(*fields))
    wiki.run_jobs()


# The toy base (`--base-model toy`): a tiny model built from the wiki's text, for fast runs of the
# plumbing. Many small packed rows and a high learning rate.
TOY = "toy"
# A 0.2M-parameter model built from the wiki's own text knows no world to keep: its plumbing
# runs are not gated on general retention or wiki leakage.
TOY_MARGINS = {"WIKITUNE_PROMOTE_MIN_RETENTION": "0", "WIKITUNE_PROMOTE_MAX_LEAKAGE": "1"}
TOY_RECIPE = {
    # The plumbing tests' numbers were measured in fp32; bf16 is measured on SmolLM2 first.
    "precision": "fp32",
    "sample_generations": 8,
    "lora": {"r": 32, "lora_alpha": 32, "lora_dropout": 0.0},
    "sft": {
        "num_train_epochs": 12,
        "learning_rate": 0.005,
        "max_length": 128,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 16,
        "gradient_accumulation_steps": 1,
        "eval_steps": 200,
        "logging_steps": 50,
    },
}
EDITED = ("星野灯", "agency", "晨星社二期")  # the fact the demo's edit changes


@dataclass
class DemoOutcome:
    """What the demo did: both promotions, the seconds of each cycle's phases, and the champion's
    answer to a held-out question about the edited fact."""

    promotions: list[Promotion | None] = field(default_factory=list)
    phases: list[dict[str, float]] = field(default_factory=list)
    question: str = ""
    expected: str = ""
    answer: str = ""
    served_by: str = ""


def training_precision(base_model: str, settings: Settings) -> str:
    """In words, the precision the demo's retrains compute in on this machine, and why."""
    from wikitune.tasks import model
    from wikitune.tasks.recipe import TrainingRecipe, chosen_recipe

    if base_model == TOY:
        recipe = TrainingRecipe(**TOY_RECIPE)
    else:
        recipe = chosen_recipe(base_model, settings.recipe_path, settings.device)
    return model.resolve_precision(recipe.precision, settings.device or "cpu")[1]


def _ask_through_the_server(settings: Settings, source: str, question: str) -> tuple[str, str]:
    """The champion's answer to ``question`` through ``wikitune serve``'s API, run here for the
    one question, and which URL and version answered."""
    from wikitune.localwiki import free_port
    from wikitune.serving.api import ask_server, create_app, serving_in_thread
    from wikitune.serving.follow import Follower

    follower = Follower(
        settings.tracking_uri, source, workdir=settings.runs_dir / "serve", device=settings.device
    )
    follower.check()
    if follower.served is None:
        raise LookupError(f"no champion of {source} to serve")
    try:
        app = create_app(follower, system_prompt=settings.system_prompt)
        with serving_in_thread(app, port=free_port()) as url:
            return ask_server(url, question, None), f"{url}/v1 (version {follower.served.version})"
    finally:
        follower.stop()


def _held_out_question(snapshot_path: str) -> tuple[str, str]:
    """An eval (held-out) question about the edited fact, and its reference answer."""
    title, fieldname, _ = EDITED
    rows = [
        json.loads(line)
        for line in (Path(snapshot_path) / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    ours = [r for r in rows if r["title"] == title and r["field"] == fieldname]
    ours.sort(key=lambda r: r["lang"] != "zh")
    if not ours:
        raise LookupError(f"no held-out question about {title}'s {fieldname} in {snapshot_path}")
    messages = ours[0]["messages"]
    return messages[-2]["content"], messages[-1]["content"]


def _cycle(
    outcome: DemoOutcome, pipeline: Callable[..., CycleSummary], **params: Any
) -> CycleSummary:
    started = datetime.now(UTC)
    clock = time.perf_counter()
    with runtime.clocked_units() as units:
        summary = runtime.run_flow(pipeline, **params)
    # Read back from the Prefect runs when there are some, else from the plain calls' clock.
    seconds = phase_seconds(started) if runtime.prefect_configured() else unit_phases(units)
    seconds["total"] = time.perf_counter() - clock
    outcome.phases.append(seconds)
    outcome.promotions.append(summary.retrain.promotion if summary.retrain else None)
    return summary


def run_demo(
    home: Path,
    report: Callable[[str, dict[str, int]], None],
    explain: Callable[[str, Promotion | None], None],
    *,
    base_model: str = "smollm2-135m-instruct",
) -> DemoOutcome:
    """Start a local wiki under ``home``; run the whole cycle (sync, build, snapshot, train,
    evaluate, promote) on ``base_model`` (``toy``: a tiny model built from the wiki's text);
    edit the wiki and run it again, so a second candidate meets the first champion; ask the
    champion a held-out question about the edited fact."""
    from wikitune.config import load_settings
    from wikitune.flows.pipeline import pipeline
    from wikitune.flows.sync import sync
    from wikitune.tasks import model
    from wikitune.tasks.recipe import TrainingRecipe
    from wikitune.tasks.source import WikiSource

    settings = load_settings(home)
    if base_model == TOY:
        for name, value in TOY_MARGINS.items():
            os.environ.setdefault(name, value)
        recipe: TrainingRecipe | None = TrainingRecipe(**TOY_RECIPE)
        base = str(home / "base-model")
    else:
        recipe = None  # the retrain flow's choice: WIKITUNE_RECIPE_PATH, else the base's recipe
        base = base_model
    outcome = DemoOutcome()
    wiki = LocalWiki(home / "demo-wiki")
    with wiki:
        write_sample_pages(wiki)
        source = WikiSource(api_url=wiki.api_url, categories=[CATEGORY], name="demo-wiki")
        # The toy's tokenizer learns the wiki's text, so the first sync comes first.
        synced = runtime.run_flow(sync, source=source, home=str(home))
        report("first sync (backfill)", synced.counts)
        if base_model == TOY and not (Path(base) / "config.json").exists():
            model.make_base_model_for_wiki(
                Path(base),
                store_path=settings.store_path,
                general_path=settings.general_data_path,
                system_prompt=settings.system_prompt,
            )
        first = _cycle(
            outcome, pipeline, source=source, base_model=base, recipe=recipe, home=str(home)
        )
        report("first build (QA pairs)", first.build_counts)
        explain("first cycle", outcome.promotions[-1])

        title, *fields = SAMPLE_VTUBERS[0]
        fields[2] = EDITED[2]  # the agency changes
        wiki.edit(title, sample_page(*fields))
        wiki.move(SAMPLE_VTUBERS[1][0], "Mira Tidewell (VTuber)")
        wiki.delete(SAMPLE_VTUBERS[3][0])
        wiki.edit(
            "Nova Quill",
            sample_page(
                "Nova Quill", "2025-02-02", "Harbor Live", "Quillies", "English", "YouTube"
            ),
        )
        wiki.run_jobs()
        # Fewer pairs changed than the threshold: forced, as a nightly retrain may be.
        second = _cycle(
            outcome,
            pipeline,
            source=source,
            retrain_when="always",
            base_model=base,
            recipe=recipe,
            home=str(home),
        )
        report("second sync (recent changes)", second.sync_counts)
        report("second build (QA pairs)", second.build_counts)
        explain("second cycle", outcome.promotions[-1])

    if second.retrain is not None:
        snapshot_path = str(settings.snapshots_dir / second.retrain.snapshot_id)
        outcome.question, outcome.expected = _held_out_question(snapshot_path)
        outcome.answer, outcome.served_by = _ask_through_the_server(
            settings, second.source, outcome.question
        )
    return outcome
