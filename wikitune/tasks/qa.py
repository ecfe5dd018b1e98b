"""Facts to chat-format QA pairs through a user-editable mapping, and the build step that keeps
the store's pairs in step with its pages."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from wikitune.storage import QaPair, Store, ValueRejection
from wikitune.tasks.parse import (
    DEFAULT_KEEP_TEMPLATES,
    KeepRule,
    PageFacts,
    ParseFailed,
    QualityLimits,
    parse_page,
)
from wikitune.tasks.scoring import main_script

__all__ = [
    "BuildCounts",
    "Mapping",
    "build_pairs",
    "count_by_reason",
    "load_mapping",
    "pairs_for",
]

log = logging.getLogger(__name__)

LEAD_FIELD = "lead"
# One phrasing in this many (at least one per field and language) is held out for evaluation.
EVAL_EVERY = 4


PAIR_RULES = 2
"""The version of how a mapping becomes pairs (2: a bare-value answer only in its own script)."""


class Phrasing(BaseModel):
    """Questions (several phrasings) and one answer template per language."""

    questions: dict[str, list[str]]
    answer: dict[str, str]


class FieldMapping(Phrasing):
    aliases: list[str] = Field(min_length=1)


class Mapping(BaseModel):
    """How infobox fields become questions (the default ships as wikitune/data/mapping.yaml)."""

    model_config = {"extra": "forbid"}

    infobox_templates: list[str] = Field(min_length=1)
    languages: list[str] = Field(min_length=1)
    name_aliases: list[str] = Field(default_factory=lambda: ["name"])
    keep_templates: dict[str, KeepRule] = Field(
        default_factory=lambda: dict(DEFAULT_KEEP_TEMPLATES)
    )
    quality: QualityLimits = Field(default_factory=QualityLimits)
    lead: Phrasing | None = None
    fields: dict[str, FieldMapping]

    @field_validator("keep_templates")
    @classmethod
    def _keep_rules(cls, rules: dict[str, KeepRule]) -> dict[str, KeepRule]:
        for template, rule in rules.items():
            if (isinstance(rule, int) and rule < 1) or (isinstance(rule, str) and not rule.strip()):
                raise ValueError(
                    f"keep_templates.{template} must be a position from 1, 'last', 'all' or a"
                    f" parameter name, not {rule!r}"
                )
        return rules

    @model_validator(mode="after")
    def _complete(self) -> Mapping:
        entries: dict[str, Phrasing] = dict(self.fields)
        if self.lead is not None:
            entries[LEAD_FIELD] = self.lead
        for name, entry in entries.items():
            for lang in self.languages:
                questions = entry.questions.get(lang, [])
                if len(questions) < 2:
                    raise ValueError(
                        f"field {name!r} needs at least two {lang} questions (one is held out)"
                    )
                if lang not in entry.answer:
                    raise ValueError(f"field {name!r} has no {lang} answer")
        return self

    @cached_property
    def field_aliases(self) -> dict[str, str]:
        return {alias: name for name, entry in self.fields.items() for alias in entry.aliases}

    @cached_property
    def digest(self) -> str:
        """The mapping's identity with the rules that turn it into pairs: a change to either
        rebuilds every page's pairs and retrains in full."""
        text = f"{PAIR_RULES}|{self.model_dump_json()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def entries(self) -> dict[str, Phrasing]:
        entries: dict[str, Phrasing] = dict(self.fields)
        if self.lead is not None:
            entries[LEAD_FIELD] = self.lead
        return entries


def load_mapping(path: Path | None = None) -> Mapping:
    """The mapping file at ``path``, or the default that ships with wikitune."""
    if path is None:
        text = resources.files("wikitune.data").joinpath("mapping.yaml").read_text("utf-8")
        origin = "the default mapping"
    else:
        text = Path(path).read_text("utf-8")
        origin = str(path)
    try:
        return Mapping.model_validate(yaml.safe_load(text))
    except Exception as error:
        raise ValueError(f"invalid QA mapping in {origin}: {error}") from None


def is_held_out(field: str, lang: str, index: int, count: int) -> bool:
    """Whether phrasing ``index`` of ``count`` is an evaluation phrasing: deterministic, and at
    least one phrasing per field and language on each side."""
    held = {i for i in range(count) if _stable_int(f"{field}|{lang}|{i}") % EVAL_EVERY == 0}
    if not held:
        held = {count - 1}
    if len(held) == count:
        held.discard(0)
    return index in held


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _join(values: tuple[str, ...], lang: str) -> str:
    return ("、" if lang == "zh" else ", ").join(values)


_BRACKETED = re.compile(r"[(（][^()（）]*[)）]")


def _answer_languages(
    entry: Phrasing, values: tuple[str, ...], name: str, languages: list[str]
) -> list[str]:
    """The languages a field's pairs are written in. A language whose answer is the bare value
    (the lead's "{value}") is kept only when its questions are written in the value's script:
    an English lead taught as the answer to "X是谁？" becomes the answer to every Chinese question
    about X; text in brackets (a name's reading, "（ほしかわ りおん）") does not count. Every
    language is kept when none would be."""
    bare = {lang for lang in languages if not entry.answer[lang].replace("{value}", "").strip()}
    if not bare:
        return languages
    script = main_script(_BRACKETED.sub(" ", " ".join(values)), leave_out=[name])
    if script is None:
        return languages

    def answers_in_it(lang: str) -> bool:
        asked = " ".join(entry.questions[lang]).replace("{name}", " ")
        return lang not in bare or main_script(asked) == script

    return [lang for lang in languages if answers_in_it(lang)] or languages


def pairs_for(
    source: str, pageid: int, revid: int, facts: PageFacts, mapping: Mapping
) -> list[QaPair]:
    """Every QA pair the page's facts support, one per field, language and phrasing.

    A pair's id hashes the page, field, language and phrasing index, so an edited value keeps
    the id (the pair changes) and a move keeps it too.
    """
    values: dict[str, tuple[str, ...]] = dict(facts.fields)
    if facts.lead:
        values[LEAD_FIELD] = (facts.lead,)
    pairs = []
    for field_name, entry in mapping.entries().items():
        if field_name not in values:
            continue
        fact = hashlib.sha256(f"{pageid}|{field_name}|{values[field_name]}".encode()).hexdigest()
        for lang in _answer_languages(entry, values[field_name], facts.name, mapping.languages):
            value = _join(values[field_name], lang)
            answer = entry.answer[lang].format(name=facts.name, value=value)
            questions = entry.questions[lang]
            for index, template in enumerate(questions):
                key = f"{source}|{pageid}|{field_name}|{lang}|{index}"
                pairs.append(
                    QaPair(
                        pair_id=hashlib.sha256(key.encode()).hexdigest()[:20],
                        pageid=pageid,
                        revid=revid,
                        title=facts.title,
                        field=field_name,
                        lang=lang,
                        split="eval"
                        if is_held_out(field_name, lang, index, len(questions))
                        else "train",
                        question=template.format(name=facts.name),
                        answer=answer,
                        fact_hash=fact[:20],
                        fact_values=values[field_name],
                    )
                )
    return pairs


@dataclass
class BuildCounts:
    """What a build changed: pairs new, changed, retired and unchanged; pages parsed and failed;
    values and leads the quality gate refused on the pages parsed."""

    pages_parsed: int = 0
    pages_failed: int = 0
    values_rejected: int = 0
    new: int = 0
    changed: int = 0
    retired: int = 0
    unchanged: int = 0


def count_by_reason(rejections: Iterable[ValueRejection]) -> dict[str, int]:
    """How many refused values there are for each reason, most frequent first."""
    return dict(Counter(r.reason for r in rejections).most_common())


def build_pairs(store: Store, source: str, mapping: Mapping) -> BuildCounts:
    """Re-parse the pages whose revision (or the mapping) changed since they were last built,
    write the pairs they support, and retire the pairs no longer supported."""
    counts = BuildCounts()
    rebuild_all = store.build_mapping_digest(source) != mapping.digest
    todo = store.pages_to_build(source, rebuild_all=rebuild_all)
    log.info("build of %s: %d pages to parse", source, len(todo.pages))
    for start in range(0, len(todo.pages), 200):
        chunk = todo.pages[start : start + 200]
        built: dict[int, list[QaPair]] = {}
        failures: dict[int, str] = {}
        rejected: list[ValueRejection] = []
        for page in chunk:
            try:
                facts = parse_page(
                    page.title,
                    page.wikitext or "",
                    infobox_templates=mapping.infobox_templates,
                    field_aliases=mapping.field_aliases,
                    name_aliases=mapping.name_aliases,
                    categories=page.categories,
                    keep_templates=mapping.keep_templates,
                    limits=mapping.quality,
                )
            except ParseFailed as error:
                failures[page.pageid] = str(error)
                log.warning("page %s (%d) not built: %s", page.title, page.pageid, error)
                continue
            built[page.pageid] = pairs_for(source, page.pageid, page.revid or 0, facts, mapping)
            rejected += [
                ValueRejection(page.pageid, page.title, r.field, r.reason, r.value)
                for r in facts.rejected
            ]
        result = store.apply_build(
            source, {p.pageid: p.revid or 0 for p in chunk}, built, failures, rejected
        )
        counts.pages_parsed += len(built)
        counts.pages_failed += len(failures)
        counts.values_rejected += len(rejected)
        counts.new += result.new
        counts.changed += result.changed
        counts.retired += result.retired
        counts.unchanged += result.unchanged
    counts.retired += store.retire_pages(source, todo.gone)
    store.set_build_mapping_digest(source, mapping.digest)
    return counts
