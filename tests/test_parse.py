"""Infobox parsing: data-driven cases (wikitext file + expected facts) and hostile input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wikitune.tasks.parse import PageFacts, ParseFailed, QualityLimits, parse_page, quality_problem
from wikitune.tasks.qa import Mapping, load_mapping

pytestmark = pytest.mark.unit

CASES = sorted((Path(__file__).parent / "infoboxes").glob("*.wikitext"))
MAPPING = load_mapping()


def _parse(title: str, text: str) -> PageFacts:
    return parse_page(
        title,
        text,
        infobox_templates=MAPPING.infobox_templates,
        field_aliases=MAPPING.field_aliases,
        name_aliases=MAPPING.name_aliases,
        keep_templates=MAPPING.keep_templates,
        limits=MAPPING.quality,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_infobox_cases(case: Path) -> None:
    expected = json.loads(case.with_suffix(".expected.json").read_text("utf-8"))
    facts = _parse(case.stem, case.read_text("utf-8"))
    assert facts.name == expected["name"]
    assert {k: list(v) for k, v in facts.fields.items()} == expected["fields"]
    assert facts.lead == expected["lead"]


def _hostile(rng: random.Random) -> str:
    pieces = [
        "{{",
        "}}",
        "[[",
        "]]",
        "{{{",
        "}}}",
        "<ref>",
        "</ref>",
        "<!--",
        "-->",
        "|",
        "=",
        "{{Infobox VTuber|",
        "name=",
        "\n== h ==\n",
        "<br>",
        "'''",
        "&nbsp;",
        "\ufffd",
        "<table>",
        "{|",
        "|}",
        "<nowiki>",
        "</span>",
    ]
    return "".join(
        rng.choice(pieces) + rng.choice(["x", "灯", " ", "\n", ""])
        for _ in range(rng.randint(1, 400))
    )


HOSTILE = {
    "unbalanced braces": "{{Infobox VTuber|name=A|agency={{{{[[x" * 50,
    "deep nesting": "{{Infobox VTuber|name=" + "{{a|" * 3000 + "x" + "}}" * 10,
    "huge page": "{{Infobox VTuber|name=Big}}\n" + "word " * 500_000,
    "binary junk": bytes(range(1, 256)).decode("latin-1") * 200,
    "nul bytes": "{{Infobox VTuber|name=\x00}}",
    "too large": "x" * (3 * 1024 * 1024),
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_wikitext_parses_or_fails_with_a_reason(text: str) -> None:
    try:
        facts = _parse("Hostile", text)
    except ParseFailed as failure:
        assert str(failure)
    else:
        assert isinstance(facts.lead, str)


def test_generated_hostile_wikitext_never_crashes() -> None:
    rng = random.Random(7)
    outcomes = {"parsed": 0, "failed": 0, "rejected": 0}
    for _ in range(300):
        try:
            facts = _parse("Fuzz", _hostile(rng))
        except ParseFailed:
            outcomes["failed"] += 1
            continue
        outcomes["parsed"] += 1
        outcomes["rejected"] += len(facts.rejected)
        # Whatever comes out of garbage passes the quality gate.
        for value in [v for values in facts.fields.values() for v in values]:
            assert quality_problem(value, MAPPING.quality) is None, value
        if facts.lead:
            assert quality_problem(facts.lead, MAPPING.quality, lead=True) is None, facts.lead
    assert outcomes["parsed"] + outcomes["failed"] == 300
    assert outcomes["rejected"] > 0


KEEP_CASES = {
    "{{lang|ja|ホロライブ}}": ("ホロライブ",),  # last positional
    "{{nihongo|Hololive|ホロライブ|Hororaibu}}": ("Hololive",),  # a position
    "{{hlist|YouTube|Twitch}}": ("YouTube", "Twitch"),  # all, as a list
    "{{font|text=Blue Sky|color=blue}}": ("Blue Sky",),  # a parameter name (custom rule below)
    "{{nowrap|{{lang|en|Deep}} Blue}}": ("Deep Blue",),  # nested wrappers
    "{{unknown|x}} Harbor Live": ("Harbor Live",),  # other templates dropped
    "[[A;B|A;B]]; C": ("A;B", "C"),  # a link's ";" does not split
    "A&#59;B&nbsp;C": ("A;B C",),  # neither does an entity's
    "A<br />B<br>C": ("A", "B", "C"),
    "\n* one\n* two": ("one", "two"),
}


@pytest.mark.parametrize("raw", list(KEEP_CASES), ids=range(len(KEEP_CASES)))
def test_values_are_what_a_reader_sees(raw: str) -> None:
    keep = {**MAPPING.keep_templates, "font": "text"}
    facts = parse_page(
        "P",
        f"{{{{Infobox VTuber|name=P|agency={raw}}}}}",
        infobox_templates=MAPPING.infobox_templates,
        field_aliases=MAPPING.field_aliases,
        keep_templates=keep,
    )
    assert facts.fields["agency"] == KEEP_CASES[raw]
    assert facts.rejected == ()


@pytest.mark.parametrize(
    ("text", "lead", "problem"),
    [
        ("Harbor Live", False, None),
        ("{{, |debut = 2020-01-01 }}}", False, "markup"),
        ("Pixel&nbsp; Pop", False, "entity"),
        ("x" * 201, False, "too long"),
        ("]] text", False, "markup"),
        ("Mira is a virtual YouTuber.", True, None),
        ("星川莉音是一名虚拟主播。", True, None),
        ("2020 — 2021 — 2022", True, "not prose"),
        ("Mira " * 250, True, "too long"),
    ],
)
def test_quality_gate(text: str, lead: bool, problem: str | None) -> None:
    assert quality_problem(text, QualityLimits(), lead=lead) == problem


def test_mapping_rejects_a_bad_keep_rule() -> None:
    data = MAPPING.model_dump(mode="json") | {"keep_templates": {"lang": 0}}
    with pytest.raises(ValueError, match=r"keep_templates\.lang must be a position from 1"):
        Mapping.model_validate(data)
