"""Clean facts from the wikitext real wikis hold, through the local MediaWiki: wrapper templates
and entities give the visible value, hostile pages give recorded rejections (never pairs), a
category scope keeps to the wiki's articles, and `mapping suggest` maps a new wiki's infobox."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import CATEGORY, cli, run_sync

from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, sample_page
from wikitune.flows.build import build, snapshot
from wikitune.localwiki import LocalWiki
from wikitune.storage import Store
from wikitune.tasks.qa import load_mapping

MARKUP_OR_ENTITY = re.compile(r"[{}|<>]|\[\[|\]\]|&(?:#[0-9]+|#x[0-9a-f]+|[a-z][a-z0-9]*);", re.I)

PAGES = {
    "星川莉音": """{{Infobox VTuber
| name = {{lang|zh|星川莉音}}
| agency = {{lang|ja|ホロライブ}}
| language = {{nowrap|English / 日本語}}
| fandom = {{黑幕|星团|秘密}}
| colour = {{color|#ff0000|Red}}
| platform = {{hlist|YouTube|Bilibili}}
}}
'''星川莉音'''（{{lang|ja|ほしかわ りおん}}）is a virtual streamer.{{Citation needed}}
[[Category:VTuber]]""",
    "Pixel Idol": """{{Infobox VTuber
| name = Pixel Idol
| agency = Pixel&nbsp;Pop&nbsp;Talent
| fan_name = Pixels &amp; Friends
| debut_date = 2021&#45;03&#45;14
| language = English&#59; Japanese
}}
'''Pixel Idol''' is with Pixel&nbsp;Pop&nbsp;Talent.
[[Category:VTuber]]""",
    "Deep": "{{Infobox VTuber|name=Deep|agency="
    + "{{a|" * 500
    + "x"
    + "}}" * 500
    + "}}\n[[Category:VTuber]]",
    "Broken": """{{Infobox VTuber
|name=Broken
|agency={{
|debut_date = 2020-01-01
}}}
[[Category:VTuber]]""",
    "Junk": """{{Infobox VTuber |name = Junk
|agency = Junk Agency
Junk is a page whose infobox never closes.
[[Category:VTuber]]""",
    "Odd values": """{{Infobox VTuber
| name = Odd
| origin = """
    + "a very long place name " * 12
    + """
| colour = {{unknown wrapper|blue}}
| platform = <!-- to fill in -->
}}
2020 — 2021 — 2022 — 2023
[[Category:VTuber]]""",
    "Category:虚拟主播": "Chinese-speaking VTubers.\n[[Category:VTuber]]",
}


def _answers(home: Path, title: str, lang: str = "en") -> dict[str, str]:
    """Field -> the answer of the page's first phrasing in ``lang``."""
    with Store(home / "wiki.duckdb") as store:
        pairs = [p for p in store.active_pairs("testwiki") if p.title == title and p.lang == lang]
    return {p.field: p.answer for p in sorted(pairs, key=lambda p: p.pair_id)}


def test_real_wikitext_gives_visible_values_or_recorded_rejections(
    wiki: LocalWiki, home: Path
) -> None:
    for title, text in PAGES.items():
        wiki.edit(title, text)
    run_sync(wiki, home)
    summary = build(home=str(home))

    # Wrapper templates show their text; lists from {{hlist}}; `fandom` is a fan-name alias.
    hoshikawa = _answers(home, "星川莉音")
    assert hoshikawa == {
        "agency": "星川莉音 is with ホロライブ.",
        "language": "星川莉音 streams in English / 日本語.",
        "fan_name": "星川莉音's fans are called 星团.",
        "colour": "星川莉音's colour is Red.",
        "platform": "星川莉音 streams on YouTube, Bilibili.",
        "lead": "星川莉音（ほしかわ りおん）is a virtual streamer.",
    }
    assert _answers(home, "星川莉音", "zh")["platform"] == "星川莉音在YouTube、Bilibili直播。"
    # Entities are decoded, and an entity's ";" never splits a list.
    assert _answers(home, "Pixel Idol") == {
        "agency": "Pixel Idol is with Pixel Pop Talent.",
        "fan_name": "Pixel Idol's fans are called Pixels & Friends.",
        "debut_date": "Pixel Idol debuted on 2021-03-14.",
        "language": "Pixel Idol streams in English; Japanese.",
        "lead": "Pixel Idol is with Pixel Pop Talent.",
    }
    # Hostile pages: what survives is clean, the rest is recorded with its reason.
    assert _answers(home, "Broken") == {"debut_date": "Broken debuted on 2020-01-01."}
    assert _answers(home, "Deep") == _answers(home, "Junk") == _answers(home, "Odd values") == {}

    with Store(home / "wiki.duckdb") as store:
        rejected = {(r.title, r.field): r.reason for r in store.value_rejections("testwiki")}
        titles = {title for _, title, _ in store.in_scope_pages("testwiki")}
        answers = [p.answer for p in store.active_pairs("testwiki")]
    assert rejected == {
        ("Deep", "lead"): "markup",
        ("Deep", "agency"): "empty",
        ("Broken", "lead"): "markup",
        ("Broken", "agency"): "markup",
        ("Junk", "lead"): "markup",
        ("Odd values", "lead"): "not prose",
        ("Odd values", "origin"): "too long",
        ("Odd values", "colour"): "empty",  # a wrapper not in keep_templates: the user is told
    }
    assert summary.rejected == {"markup": 4, "empty": 2, "not prose": 1, "too long": 1}
    assert summary.counts["values_rejected"] == 8
    # A category scope means the category's articles, not its subcategory pages.
    assert "Category:虚拟主播" not in titles and len(titles) == 6
    assert not [a for a in answers if MARKUP_OR_ENTITY.search(a)]

    record = snapshot(home=str(home))
    for split in ("train", "eval"):
        for line in (Path(record.path) / f"{split}.jsonl").read_text("utf-8").splitlines():
            answer = json.loads(line)["messages"][-1]["content"]
            assert not MARKUP_OR_ENTITY.search(answer), answer

    status = cli("status", "--json", home=home, local=True)
    assert status.returncode == 0, status.stderr
    (source,) = json.loads(status.stdout)["sources"]
    assert source["qa"]["values_rejected"] == 8
    assert source["rejected_values"]["by_reason"] == summary.rejected
    assert {(v["title"], v["field"]) for v in source["rejected_values"]["values"]} == set(rejected)
    text = cli("status", home=home, local=True).stdout
    assert "values refused by the quality gate: 8" in text
    assert "Odd values · colour · empty: {{unknown wrapper|blue}}" in text

    # Fixing a page clears its rejections; the next build records the clean value.
    wiki.edit(
        "Broken", "{{Infobox VTuber\n|name=Broken\n|agency=Fixed Agency\n}}\n[[Category:VTuber]]"
    )
    run_sync(wiki, home)
    assert build(home=str(home)).rejected == {
        "markup": 2,
        "empty": 2,
        "not prose": 1,
        "too long": 1,
    }
    assert _answers(home, "Broken") == {"agency": "Broken is with Fixed Agency."}


def test_category_scope_follows_content_namespaces(wiki: LocalWiki, home: Path) -> None:
    wiki.edit("Mira Tidewell", sample_page(*SAMPLE_VTUBERS[1][1:]) + f"\n[[{CATEGORY}]]")
    wiki.edit("Category:虚拟主播", "Chinese-speaking VTubers.\n[[Category:VTuber]]")
    wiki.edit("File:Mira.png", "A picture.\n[[Category:VTuber]]")

    # --namespace still widens the scope: a store made with namespaces 0 and 14.
    widened = run_sync(wiki, home, namespaces=[0, 14])
    assert widened.counts["new"] == 2
    build(home=str(home))
    with Store(home / "wiki.duckdb") as store:
        questions = {p.question for p in store.active_pairs("testwiki")}
    assert "Who is Category:虚拟主播?" in questions

    # The default scope drops the subcategory on the next sync, with a count, and its pairs.
    narrowed = run_sync(wiki, home)
    assert narrowed.counts["left_scope"] == 1
    lead = load_mapping().lead
    assert lead is not None  # the subcategory's only pairs: its English lead, in every phrasing
    assert build(home=str(home)).counts["retired"] == len(lead.questions["en"])
    with Store(home / "wiki.duckdb") as store:
        assert [t for _, t, _ in store.in_scope_pages("testwiki")] == ["Mira Tidewell"]
        assert {p.title for p in store.active_pairs("testwiki")} == {"Mira Tidewell"}
    # Later changes to pages outside the content namespaces stay out.
    wiki.edit("Category:虚拟主播", "Chinese-speaking VTubers, edited.\n[[Category:VTuber]]")
    assert run_sync(wiki, home).counts["entered_scope"] == 0


def test_mapping_suggest_maps_the_demo_wiki_and_a_new_one(
    wiki: LocalWiki, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    for title, *fields in SAMPLE_VTUBERS:
        wiki.edit(title, sample_page(*fields))
    # A wiki whose infobox the default mapping does not read.
    for n, genre in enumerate(["Rock", "{{lang|ja|ロック}}", "Jazz"]):
        wiki.edit(
            f"Singer {n}",
            f"{{{{Infobox singer\n| name = Singer {n}\n| genre = {genre}\n| fandom = Fans {n}\n"
            f"| label = Label {n}\n}}}}\nSinger {n} is a virtual singer.\n[[{CATEGORY}]]",
        )
    run_sync(wiki, home)

    listed = cli("mapping", "suggest", home=home, local=True)
    assert listed.returncode == 0, listed.stderr
    assert "Template:Infobox VTuber: 6 pages, read as the infobox" in listed.stdout
    for parameter in ("debut_date", "agency", "fan_name", "language", "platform"):
        assert re.search(rf"│ {parameter}\s+│\s+6 │ {parameter}\s+│", listed.stdout), parameter
    assert "Template:Infobox singer: 3 pages, not read by the mapping" in listed.stdout
    assert re.search(r"│ genre\s+│\s+3 │ ignored\s+│ Rock \| ロック \| Jazz", listed.stdout)

    data = json.loads(cli("mapping", "suggest", "--json", home=home, local=True).stdout)
    singer = next(t for t in data if t["name"] == "Infobox singer")
    assert {p["name"]: p["mapped_to"] for p in singer["parameters"]} == {
        "genre": None,
        "fandom": "fan_name",
        "label": "agency",
        "name": "name",
    }

    written = home / "singer-mapping.yaml"
    result = cli(
        "mapping",
        "suggest",
        "--template",
        "Infobox singer",
        "--write",
        str(written),
        home=home,
        local=True,
    )
    assert result.returncode == 0, result.stderr
    mapping = load_mapping(written)
    assert mapping.infobox_templates == ["Infobox singer"]
    assert set(mapping.fields) == {"genre", "fan_name", "agency"}
    assert "fandom" in mapping.fields["fan_name"].aliases
    assert yaml.safe_load(written.read_text("utf-8"))["fields"]["genre"]["answer"]["en"] == (
        "The genre of {name} is {value}."
    )

    # Building with the written mapping gives the new wiki's pairs.
    monkeypatch.setenv("WIKITUNE_MAPPING_PATH", str(written))
    built = build(home=str(home))
    assert built.counts["pages_parsed"] == 9
    assert _answers(home, "Singer 1")["genre"] == "The genre of Singer 1 is ロック."
    assert "agency" not in _answers(home, "星野灯")  # the VTuber infobox is no longer read
