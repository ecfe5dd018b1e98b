"""The demo: a local MediaWiki filled with invented VTubers; a tiny base model built from its
text; the whole cycle (sync, build, snapshot, train, evaluate, promote); then edits and the
cycle again, so a second candidate meets the first champion."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wikitune.localwiki import LocalWiki

if TYPE_CHECKING:
    from wikitune.tasks.evaluate import Promotion

__all__ = ["DEMO_RECIPE", "SAMPLE_VTUBERS", "run_demo", "sample_page"]

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


# A recipe for the tiny demo model on two CPU cores: many small packed rows, a high learning rate.
DEMO_RECIPE = {
    "num_train_epochs": 12,
    "learning_rate": 0.005,
    "lora_r": 32,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "max_length": 128,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "eval_steps": 200,
    "logging_steps": 50,
    "sample_generations": 8,
}


def run_demo(
    home: Path,
    report: Callable[[str, dict[str, int]], None],
    explain: Callable[[str, Promotion | None], None],
) -> None:
    """Start a local wiki under ``home``; build a tiny base model from its text; run the whole
    cycle (sync, build, snapshot, train, evaluate, promote); edit the wiki and run it again, so
    a second candidate meets the first champion."""
    from wikitune.blocks.recipe import TrainingRecipe
    from wikitune.blocks.source import WikiSource
    from wikitune.config import load_settings
    from wikitune.flows.pipeline import pipeline
    from wikitune.flows.sync import sync
    from wikitune.tasks import model

    # The 0.2M-parameter demo model forgets general chat faster than a 7B model does.
    os.environ.setdefault("WIKITUNE_PROMOTE_GENERAL_LOSS_TOLERANCE", "0.6")
    recipe = TrainingRecipe(**DEMO_RECIPE)
    base = home / "base-model"
    wiki = LocalWiki(home / "demo-wiki")
    with wiki:
        wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
        for title, *fields in SAMPLE_VTUBERS:
            wiki.edit(title, sample_page(*fields))
        wiki.run_jobs()
        source = WikiSource(api_url=wiki.api_url, categories=[CATEGORY], name="demo-wiki")
        # The base model's tokenizer learns the wiki's text, so the first sync comes first.
        report("first sync (backfill)", sync(source=source, home=str(home)).counts)
        if not (base / "config.json").exists():
            settings = load_settings(home)
            model.make_base_model_for_wiki(
                base,
                store_path=settings.store_path,
                general_path=settings.general_data_path,
                system_prompt=settings.system_prompt,
            )
        first = pipeline(source=source, base_model=str(base), recipe=recipe, home=str(home))
        report("first build (QA pairs)", first.build_counts)
        explain("first cycle", first.retrain.promotion if first.retrain else None)

        title, *fields = SAMPLE_VTUBERS[0]
        fields[2] = "晨星社二期"  # the agency changes
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
        second = pipeline(
            source=source,
            retrain_when="always",
            base_model=str(base),
            recipe=recipe,
            home=str(home),
        )
        report("second sync (recent changes)", second.sync_counts)
        report("second build (QA pairs)", second.build_counts)
        explain("second cycle", second.retrain.promotion if second.retrain else None)
