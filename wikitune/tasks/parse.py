"""Wikitext to facts with mwparserfromhell: one infobox's fields as clean text, the lead
paragraph as plain text, and the page's categories. Pure: no I/O, no store.

A value is what a reader of the page sees: wrapper templates (``{{lang|ja|…}}``,
``{{nowrap|…}}``) are rendered to the parameter they show, other templates are dropped, HTML
entities are decoded, and lists split on line breaks, bullets and list punctuation in the text
only (never inside a link, a comment or an entity). Every value and lead then passes a quality
gate; what fails it is returned as a Rejection and never becomes a fact.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field

import mwparserfromhell
from mwparserfromhell.nodes import Comment, Heading, Node, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

__all__ = [
    "DEFAULT_KEEP_TEMPLATES",
    "MAX_WIKITEXT_CHARS",
    "KeepRule",
    "PageFacts",
    "ParseFailed",
    "QualityLimits",
    "Rejection",
    "parse_page",
    "quality_problem",
    "template_name",
    "visible_values",
]

# Larger pages are recorded as failed rather than parsed (MediaWiki's own default limit is 2 MiB).
MAX_WIKITEXT_CHARS = 2 * 1024 * 1024
# Separators, in the text of a value, that make it a list: line breaks, bullets, list punctuation.
LIST_SEPARATORS = re.compile(r"\s*(?:\n\s*[*#]*\s*|[、；;])\s*")
WHITESPACE = re.compile(r"\s+")
COMMENTS = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
MARKUP = re.compile(r"[{}|<>]|\[\[|\]\]")
ENTITY = re.compile(r"&(?:#[0-9]+|#x[0-9a-f]+|[a-z][a-z0-9]*);", re.IGNORECASE)
NOT_LEAD_LINKS = ("category", "file", "image", "分类", "文件", "分類", "ファイル", "カテゴリ")

# Which parameter of a wrapper template the reader sees: a 1-based position, "last" (the last
# positional parameter), "all" (every positional parameter, as a list) or a parameter name.
KeepRule = int | str
DEFAULT_KEEP_TEMPLATES: dict[str, KeepRule] = {
    "lang": "last",
    "lj": 1,
    "lang-ja": 1,
    "lang-zh": 1,
    "lang-en": 1,
    "nihongo": 1,
    "nowrap": 1,
    "nobr": 1,
    "color": "last",
    "colour": "last",
    "font color": "last",
    "font": 1,
    "small": 1,
    "big": 1,
    "abbr": 1,
    "tooltip": 1,
    "ruby": 1,
    "黑幕": 1,
    "heimu": 1,
    "plainlist": 1,
    "flatlist": 1,
    "hlist": "all",
    "ubl": "all",
    "unbulleted list": "all",
    "plain list": 1,
}


class ParseFailed(ValueError):
    """Wikitext that could not be turned into facts; the message says why."""


@dataclass(frozen=True)
class QualityLimits:
    """What the quality gate allows: value and lead lengths, and how much of a lead is letters."""

    max_value_chars: int = 200
    max_lead_chars: int = 1000
    min_lead_letters: int = 6
    min_lead_letter_share: float = 0.5


@dataclass(frozen=True)
class Rejection:
    """A value or lead the quality gate refused: the field, why, and the text (cut to 120)."""

    field: str
    reason: str
    value: str


@dataclass(frozen=True)
class PageFacts:
    """What a page says: canonical field -> values, the lead paragraph, the categories, and the
    values refused by the quality gate."""

    title: str
    name: str
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lead: str = ""
    categories: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()


def template_name(template: Template | str) -> str:
    """A template's name as wikitune compares names: underscores as spaces, casefolded."""
    name = str(template.name) if isinstance(template, Template) else template
    return WHITESPACE.sub(" ", name.replace("_", " ")).strip().casefold()


def _shown(template: Template, rule: KeepRule) -> Wikicode:
    """The wikitext a wrapper template shows, by its keep rule."""
    positional = [p.value for p in template.params if not p.showkey]
    if isinstance(rule, int):
        return positional[rule - 1] if 0 < rule <= len(positional) else Wikicode([])
    if rule == "last":
        return positional[-1] if positional else Wikicode([])
    if rule == "all":
        return mwparserfromhell.parse("\n".join(map(str, positional)))
    return template.get(rule).value if template.has(rule) else Wikicode([])


def _render_templates(code: Wikicode, keep: Mapping[str, KeepRule]) -> None:
    """Replace wrapper templates by what they show and drop every other template, at any
    depth (inside links and tags too), in one walk over the tree."""
    for index in range(len(code.nodes) - 1, -1, -1):
        node = code.nodes[index]
        if isinstance(node, Template):
            rule = keep.get(template_name(node))
            shown = _shown(node, rule) if rule is not None else Wikicode([])
            _render_templates(shown, keep)
            code.nodes[index : index + 1] = list(shown.nodes)
        else:
            for child in node.__children__():
                _render_templates(child, keep)


def _plain(code: Wikicode, *, collapse: bool = True) -> str:
    """Plain text of template-free wikitext: references, comments and markup removed, HTML
    entities decoded, whitespace collapsed (or, with ``collapse=False``, paragraphs kept)."""
    for node in code.filter(recursive=False, forcetype=Comment):
        code.remove(node)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).lower() in ("ref", "references", "gallery"):
            with suppress(ValueError):  # already gone with an enclosing node
                code.remove(tag)
    text = html.unescape(code.strip_code(normalize=True, collapse=True))
    return WHITESPACE.sub(" ", text).strip() if collapse else text


def _list_items(code: Wikicode) -> list[Wikicode]:
    """A value split into list items at <br> tags and at separators in its top-level text."""
    items: list[list[Node]] = [[]]
    for node in code.nodes:
        if isinstance(node, Tag) and str(node.tag).lower() == "br":
            items.append([])
        elif isinstance(node, Text):
            first, *rest = LIST_SEPARATORS.split(node.value)
            items[-1].append(Text(first))
            items.extend([Text(part)] for part in rest)
        else:
            items[-1].append(node)
    return [Wikicode(nodes) for nodes in items]


def visible_values(raw: Wikicode | str, keep: Mapping[str, KeepRule]) -> tuple[str, ...]:
    """A parameter's value as a reader sees it: wrapper templates rendered, other templates
    dropped, entities decoded, split into list items; no quality gate."""
    code = raw if isinstance(raw, Wikicode) else mwparserfromhell.parse(raw)
    _render_templates(code, keep)
    values = (v.strip(" *#,，") for v in map(_plain, _list_items(code)))
    return tuple(v for v in values if v)


def quality_problem(text: str, limits: QualityLimits, *, lead: bool = False) -> str | None:
    """Why ``text`` cannot be an answer (markup or entities left in it, too long, a lead that is
    not prose), or None when it can."""
    if ENTITY.search(text):
        return "entity"
    if MARKUP.search(text):
        return "markup"
    if len(text) > (limits.max_lead_chars if lead else limits.max_value_chars):
        return "too long"
    if lead:
        letters = sum(c.isalpha() for c in text)
        visible = sum(not c.isspace() for c in text)
        if letters < limits.min_lead_letters or letters < limits.min_lead_letter_share * visible:
            return "not prose"
    return None


def _cut(text: str) -> str:
    text = WHITESPACE.sub(" ", text).strip()
    return text if len(text) <= 120 else text[:119] + "…"


class _Gate:
    def __init__(self, limits: QualityLimits) -> None:
        self.limits = limits
        self.rejected: list[Rejection] = []

    def values(
        self, field_name: str, raw: Wikicode, keep: Mapping[str, KeepRule]
    ) -> tuple[str, ...]:
        """A parameter's clean values; none when any of them fails the gate (a partial list
        would teach a wrong answer), or when visible wikitext renders to nothing."""
        source = str(raw)
        values = visible_values(raw, keep)
        for value in values:
            problem = quality_problem(value, self.limits)
            if problem:
                self.rejected.append(Rejection(field_name, problem, _cut(value)))
                return ()
        if not values and COMMENTS.sub("", source).strip():
            self.rejected.append(Rejection(field_name, "empty", _cut(source)))
        return tuple(values)

    def lead(self, text: str) -> str:
        problem = quality_problem(text, self.limits, lead=True) if text else None
        if problem:
            self.rejected.append(Rejection("lead", problem, _cut(text)))
            return ""
        return text


def _lead(code: Wikicode, keep: Mapping[str, KeepRule]) -> str:
    """The first paragraph of prose before the first heading, as plain text."""
    before_heading: list[Node] = []
    for node in code.nodes:
        if isinstance(node, Heading):
            break
        if isinstance(node, Template) and template_name(node) not in keep:
            continue
        if isinstance(node, Comment):
            continue
        if isinstance(node, Wikilink) and (
            str(node.title).split(":", 1)[0].strip().lower() in NOT_LEAD_LINKS
        ):
            continue
        if isinstance(node, Tag) and str(node.tag).lower() in ("ref", "table"):
            continue
        before_heading.append(node)
    lead = Wikicode(before_heading)
    _render_templates(lead, keep)
    for paragraph in re.split(r"\n\s*\n", _plain(lead, collapse=False)):
        paragraph = WHITESPACE.sub(" ", paragraph).strip()
        if paragraph:
            return paragraph
    return ""


def parse_page(
    title: str,
    wikitext: str,
    *,
    infobox_templates: Collection[str],
    field_aliases: Mapping[str, str],
    name_aliases: Collection[str] = ("name",),
    categories: Collection[str] = (),
    keep_templates: Mapping[str, KeepRule] = DEFAULT_KEEP_TEMPLATES,
    limits: QualityLimits = QualityLimits(),
) -> PageFacts:
    """Facts from a page's wikitext.

    The first template whose name is one of ``infobox_templates`` is the infobox (MediaWiki
    shows every infobox, but one subject per page is the wiki convention). ``field_aliases``
    maps parameter names to canonical fields; a parameter given twice keeps its last value, as
    the MediaWiki parser does. ``keep_templates`` says which wrapper templates show which
    parameter. Values and the lead that fail the quality gate are left out and listed in
    ``rejected``. Raises ParseFailed with the reason for wikitext that cannot be read.
    """
    if len(wikitext) > MAX_WIKITEXT_CHARS:
        raise ParseFailed(f"wikitext of {len(wikitext)} characters exceeds {MAX_WIKITEXT_CHARS}")
    if "\x00" in wikitext:
        raise ParseFailed("wikitext contains NUL characters")
    wanted = {template_name(n) for n in infobox_templates}
    aliases = {k.strip().casefold(): v for k, v in field_aliases.items()}
    names = {n.strip().casefold() for n in name_aliases}
    keep = {template_name(k): v for k, v in keep_templates.items()}
    gate = _Gate(limits)
    try:
        code = mwparserfromhell.parse(wikitext)
        lead = gate.lead(_lead(code, keep))
        fields: dict[str, tuple[str, ...]] = {}
        name = ""
        for template in code.filter_templates(recursive=False):
            if template_name(template) not in wanted:
                continue
            for param in template.params:
                key = str(param.name).strip().casefold()
                if key in names:
                    name = " ".join(gate.values("name", param.value, keep))
                elif key in aliases:
                    values = gate.values(aliases[key], param.value, keep)
                    if values:
                        fields[aliases[key]] = values
                    else:
                        fields.pop(aliases[key], None)
            break
    except RecursionError:
        raise ParseFailed("wikitext nests too deeply to parse") from None
    except (ValueError, TypeError, IndexError, AttributeError) as error:
        raise ParseFailed(f"mwparserfromhell could not parse it: {error}") from None
    return PageFacts(
        title=title,
        name=name or title,
        fields=fields,
        lead=lead,
        categories=tuple(sorted(categories)),
        rejected=tuple(gate.rejected),
    )
