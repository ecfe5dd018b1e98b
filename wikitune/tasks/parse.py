"""Wikitext to facts with mwparserfromhell: one infobox's fields as clean text, the lead
paragraph as plain text, and the page's categories. Pure: no I/O, no store."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field

import mwparserfromhell
from mwparserfromhell.nodes import Comment, Heading, Tag, Template, Wikilink
from mwparserfromhell.wikicode import Wikicode

__all__ = ["MAX_WIKITEXT_CHARS", "PageFacts", "ParseFailed", "parse_page"]

# Larger pages are recorded as failed rather than parsed (MediaWiki's own default limit is 2 MiB).
MAX_WIKITEXT_CHARS = 2 * 1024 * 1024
# Separators that make one infobox value a list: line breaks, bullets and list punctuation.
LIST_SEPARATORS = re.compile(r"\s*(?:\n\s*[*#]*\s*|[、；;]|<br\s*/?>)\s*", re.IGNORECASE)
WHITESPACE = re.compile(r"\s+")


class ParseFailed(ValueError):
    """Wikitext that could not be turned into facts; the message says why."""


@dataclass(frozen=True)
class PageFacts:
    """What a page says: canonical field -> values, the lead paragraph, the categories."""

    title: str
    name: str
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lead: str = ""
    categories: tuple[str, ...] = ()


def _template_name(template: Template) -> str:
    return WHITESPACE.sub(" ", str(template.name).replace("_", " ")).strip().casefold()


def _clean(code: Wikicode) -> str:
    """Plain text of wikitext: references, comments, templates and markup removed."""
    for node in code.filter(recursive=False, forcetype=(Comment, Template)):
        code.remove(node)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).lower() in ("ref", "references", "gallery"):
            with suppress(ValueError):  # already gone with an enclosing node
                code.remove(tag)
    return code.strip_code(normalize=True, collapse=True)


def _values(raw: Wikicode) -> tuple[str, ...]:
    """A parameter's value as a list of clean strings (lists and line breaks split it)."""
    text = str(raw)
    text = re.sub(r"<br\s*/?>", "\n", text, flags=re.IGNORECASE)
    values = []
    for part in LIST_SEPARATORS.split(text):
        cleaned = WHITESPACE.sub(" ", _clean(mwparserfromhell.parse(part))).strip(" *#,，")
        if cleaned:
            values.append(cleaned)
    return tuple(values)


def _lead(code: Wikicode) -> str:
    """The first paragraph of prose before the first heading, as plain text."""
    before_heading = []
    for node in code.nodes:
        if isinstance(node, Heading):
            break
        if isinstance(node, Template | Comment):
            continue
        if isinstance(node, Wikilink) and str(node.title).split(":", 1)[0].strip().lower() in (
            "category",
            "file",
            "image",
            "分类",
            "文件",
        ):
            continue
        if isinstance(node, Tag) and str(node.tag).lower() in ("ref", "table"):
            continue
        before_heading.append(str(node))
    text = _clean(mwparserfromhell.parse("".join(before_heading)))
    for paragraph in re.split(r"\n\s*\n", text):
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
) -> PageFacts:
    """Facts from a page's wikitext.

    The first template whose name is one of ``infobox_templates`` is the infobox (MediaWiki
    shows every infobox, but one subject per page is the wiki convention). ``field_aliases``
    maps parameter names to canonical fields; a parameter given twice keeps its last value, as
    the MediaWiki parser does. Raises ParseFailed with the reason for wikitext that cannot be
    read.
    """
    if len(wikitext) > MAX_WIKITEXT_CHARS:
        raise ParseFailed(f"wikitext of {len(wikitext)} characters exceeds {MAX_WIKITEXT_CHARS}")
    if "\x00" in wikitext:
        raise ParseFailed("wikitext contains NUL characters")
    try:
        code = mwparserfromhell.parse(wikitext)
        wanted = {
            WHITESPACE.sub(" ", n.replace("_", " ")).strip().casefold() for n in infobox_templates
        }
        aliases = {k.strip().casefold(): v for k, v in field_aliases.items()}
        names = {n.strip().casefold() for n in name_aliases}
        fields: dict[str, tuple[str, ...]] = {}
        name = ""
        for template in code.filter_templates(recursive=False):
            if _template_name(template) not in wanted:
                continue
            for param in template.params:
                key = str(param.name).strip().casefold()
                if key in names:
                    name = " ".join(_values(param.value))
                elif key in aliases:
                    values = _values(param.value)
                    if values:
                        fields[aliases[key]] = values
                    else:
                        fields.pop(aliases[key], None)
            break
        lead = _lead(code)
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
    )
