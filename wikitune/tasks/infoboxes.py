"""What a wiki's infoboxes look like, for writing a mapping: the templates its pages use with
named parameters, how many pages use each parameter, sample values, and which parameters the
mapping reads. ``suggest_mapping`` turns one template's survey into a starting mapping."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import mwparserfromhell

from wikitune.tasks.parse import template_name, visible_values
from wikitune.tasks.qa import FieldMapping, Mapping

__all__ = ["ParameterUsage", "TemplateUsage", "suggest_mapping", "survey_infoboxes"]

# A template with at least this many named parameters on some page looks like an infobox.
MIN_NAMED_PARAMETERS = 3
SAMPLES = 3
# Phrasings for fields the current mapping does not know, by language; {label} is the
# parameter's name. Languages without an entry get the English ones to translate.
GENERIC_PHRASINGS: dict[str, tuple[list[str], str]] = {
    "en": (
        [
            "What is the {label} of {name}?",
            "What is {name}'s {label}?",
            "Tell me the {label} of {name}.",
            "Do you know the {label} of {name}?",
        ],
        "The {label} of {name} is {value}.",
    ),
    "zh": (
        [
            "{name}的{label}是什么？",
            "{name}的{label}是？",
            "请问{name}的{label}是什么？",
            "告诉我{name}的{label}。",
        ],
        "{name}的{label}是{value}。",
    ),
    "ja": (
        [
            "{name}の{label}は何ですか？",
            "{name}の{label}を教えてください。",
            "{name}の{label}は？",
            "{name}の{label}について教えて。",
        ],
        "{name}の{label}は{value}です。",
    ),
}


@dataclass
class ParameterUsage:
    """One parameter of a template: pages that give it a visible value, samples, and the
    mapping field that reads it (``name`` for the subject's name, None when ignored)."""

    name: str
    pages: int = 0
    samples: list[str] = field(default_factory=list)
    mapped_to: str | None = None


@dataclass
class TemplateUsage:
    """A template used with named parameters: its name as most pages write it, how many pages
    use it, whether the mapping reads it as an infobox, and its parameters by use."""

    name: str
    pages: int
    read_by_mapping: bool
    parameters: list[ParameterUsage]


def survey_infoboxes(pages: Iterable[str], mapping: Mapping) -> list[TemplateUsage]:
    """The templates on ``pages`` (wikitext) that look like infoboxes (the mapping's, and any
    top-level template with at least three named parameters), most used first."""
    wanted = {template_name(n) for n in mapping.infobox_templates}
    names = {n.strip().casefold() for n in mapping.name_aliases}
    aliases = {k.strip().casefold(): v for k, v in mapping.field_aliases.items()}
    spellings: dict[str, Counter[str]] = {}
    page_counts: Counter[str] = Counter()
    parameters: dict[str, dict[str, ParameterUsage]] = {}
    for wikitext in pages:
        try:
            templates = mwparserfromhell.parse(wikitext).filter_templates(recursive=False)
        except RecursionError:
            continue
        seen: set[str] = set()
        for template in templates:
            key = template_name(template)
            named = [p for p in template.params if p.showkey]
            if key in seen or (key not in wanted and len(named) < MIN_NAMED_PARAMETERS):
                continue
            seen.add(key)
            page_counts[key] += 1
            spellings.setdefault(key, Counter())[str(template.name).strip()] += 1
            usage = parameters.setdefault(key, {})
            for param in named:
                param_name = str(param.name).strip()
                values = visible_values(param.value, mapping.keep_templates)
                if not values:
                    continue
                found = usage.setdefault(param_name.casefold(), ParameterUsage(param_name))
                found.pages += 1
                sample = ", ".join(values)
                if len(found.samples) < SAMPLES and sample not in found.samples:
                    found.samples.append(sample if len(sample) <= 60 else sample[:59] + "…")
    surveyed = []
    for key, count in page_counts.most_common():
        params = sorted(parameters[key].values(), key=lambda p: (-p.pages, p.name.casefold()))
        for param in params:
            folded = param.name.casefold()
            param.mapped_to = "name" if folded in names else aliases.get(folded)
        name = spellings[key].most_common(1)[0][0]
        surveyed.append(TemplateUsage(name, count, key in wanted, params))
    return surveyed


def _field_key(parameter: str) -> str:
    return re.sub(r"\W+", "_", parameter.strip().casefold()).strip("_") or "field"


def _generic(parameter: str, languages: Sequence[str]) -> FieldMapping:
    label = re.sub(r"[_{}]+", " ", parameter).strip()
    questions: dict[str, list[str]] = {}
    answers: dict[str, str] = {}
    for lang in languages:
        asked, answer = GENERIC_PHRASINGS.get(lang, GENERIC_PHRASINGS["en"])
        questions[lang] = [q.replace("{label}", label) for q in asked]
        answers[lang] = answer.replace("{label}", label)
    return FieldMapping(aliases=[parameter], questions=questions, answer=answers)


def suggest_mapping(
    templates: Sequence[TemplateUsage], current: Mapping, *, min_pages: int = 1
) -> Mapping:
    """A starting mapping for ``templates``: their parameters used on at least ``min_pages``
    pages become fields. A parameter the current mapping reads keeps its field's phrasings (the
    parameter joins its aliases); others get generic phrasings to edit. Languages, name
    aliases, wrapper templates, the quality gate and the lead come from ``current``."""
    fields: dict[str, FieldMapping] = {}
    for template in templates:
        for param in template.parameters:
            if param.mapped_to == "name" or param.pages < min_pages:
                continue
            if param.mapped_to is not None:
                known = fields.get(param.mapped_to) or current.fields[param.mapped_to]
                aliases = [
                    *known.aliases,
                    *([param.name] if param.name not in known.aliases else []),
                ]
                fields[param.mapped_to] = known.model_copy(update={"aliases": aliases})
                continue
            key = _field_key(param.name)
            if key in fields:
                fields[key].aliases.append(param.name)
            else:
                fields[key] = _generic(param.name, current.languages)
    return Mapping(
        infobox_templates=[t.name for t in templates],
        languages=current.languages,
        name_aliases=current.name_aliases,
        keep_templates=current.keep_templates,
        quality=current.quality,
        lead=current.lead,
        fields=fields,
    )
