"""The demo: a local MediaWiki filled with invented VTubers, synced, built into QA pairs and
snapshotted; then edited, and synced, built and snapshotted again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wikitune.localwiki import LocalWiki

__all__ = ["SAMPLE_VTUBERS", "run_demo", "sample_page"]

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


def run_demo(home: Path, report: Callable[[str, dict[str, int]], None]) -> None:
    """Start a local wiki under ``home`` and run sync, build and snapshot twice around edits."""
    from wikitune.blocks.source import WikiSource
    from wikitune.flows.build import build, snapshot
    from wikitune.flows.sync import sync

    wiki = LocalWiki(home / "demo-wiki")
    with wiki:
        wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
        for title, *fields in SAMPLE_VTUBERS:
            wiki.edit(title, sample_page(*fields))
        wiki.run_jobs()
        source = WikiSource(api_url=wiki.api_url, categories=[CATEGORY], name="demo-wiki")
        first = sync(source=source, home=str(home))
        report("first sync (backfill)", first.counts)
        report("first build (QA pairs)", build(home=str(home)).counts)
        report("first snapshot", snapshot(home=str(home)).counts)

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
        second = sync(source=source, home=str(home))
        report("second sync (recent changes)", second.counts)
        report("second build (QA pairs)", build(home=str(home)).counts)
        report("second snapshot", snapshot(home=str(home)).counts)
