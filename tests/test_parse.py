"""Infobox parsing: data-driven cases (wikitext file + expected facts) and hostile input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wikitune.tasks.parse import PageFacts, ParseFailed, parse_page
from wikitune.tasks.qa import load_mapping

CASES = sorted((Path(__file__).parent / "infoboxes").glob("*.wikitext"))
MAPPING = load_mapping()


def _parse(title: str, text: str) -> PageFacts:
    return parse_page(
        title,
        text,
        infobox_templates=MAPPING.infobox_templates,
        field_aliases=MAPPING.field_aliases,
        name_aliases=MAPPING.name_aliases,
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
    outcomes = {"parsed": 0, "failed": 0}
    for _ in range(300):
        try:
            _parse("Fuzz", _hostile(rng))
            outcomes["parsed"] += 1
        except ParseFailed:
            outcomes["failed"] += 1
    assert sum(outcomes.values()) == 300
