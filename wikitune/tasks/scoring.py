"""How well a model answers: exact match and F1 of its greedy answers against the references
(CJK text a character at a time), fresh and stable facts apart, loss on the assistant tokens and
on general chat, and the paired bootstrap that compares two models on the same questions."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from wikitune import progress
from wikitune.tasks import chat
from wikitune.tasks import model as models
from wikitune.tasks.dataset import fact_values, previous_values, probe_accepts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelScores",
    "answer_tokens",
    "answers_with_old_value",
    "assistant_loss",
    "dates_in",
    "exact_match",
    "f1_score",
    "fact_right",
    "general_retention",
    "in_language",
    "main_script",
    "paired_bootstrap",
    "probe_answers",
    "score_models",
    "states",
    "states_previous_value",
    "wiki_leakage",
    "wiki_markers",
]


_CJK = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3100-\u312f]"
)


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def answer_tokens(text: str) -> list[str]:
    """Tokens for scoring: NFKC, lower case, punctuation dropped; each CJK character is a
    token, other text splits into words."""
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for word in _WORD.findall(text):
        run = ""
        for char in word:
            if _CJK.match(char):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(char)
            else:
                run += char
        if run:
            tokens.append(run)
    return tokens


def exact_match(prediction: str, reference: str) -> float:
    return float(answer_tokens(prediction) == answer_tokens(reference))


def f1_score(prediction: str, reference: str) -> float:
    predicted, expected = answer_tokens(prediction), answer_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def answers_with_old_value(prediction: str, previous: str, reference: str) -> bool:
    """Whether ``prediction`` answers with the old value (the champion snapshot's answer,
    ``previous``) rather than the new one (``reference``): it is the old answer, or it holds
    every token only the old answer has and lacks some token only the new one has (a value
    that only grew, 晨星社 to 晨星社二期, has no such tokens: then only the old answer counts)."""
    if exact_match(prediction, previous):
        return True
    old, new = Counter(answer_tokens(previous)), Counter(answer_tokens(reference))
    answered = Counter(answer_tokens(prediction))
    only_old, only_new = old - new, new - old
    return bool(only_old) and not (only_old - answered) and bool(only_new - answered)


def states(answer: str, accepted: Sequence[str], *, asked: str = "") -> bool:
    """Whether ``answer`` states one of the ``accepted`` answers: its scoring tokens appear
    among the answer's, together and in order ("Paris" in "The capital of France is Paris."),
    more often than in the question ``asked`` (三 in "三角形有几条边？" echoed back is not
    an answer; "三角形有三条边" is), the question repeated whole left out."""
    question = answer_tokens(asked)
    # The question echoed back whole is no answer ("蜜蜂会酿造什么？: 蜜蜂会…" holds 蜜 twice).
    tokens = _without(answer_tokens(answer), [question])
    return any(
        _count(tokens, wanted) > _count(question, wanted)
        for a in accepted
        if (wanted := answer_tokens(a))
    )


_MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_FORMS = [
    # 2021-03-14, 2021/3/14, 2021.03.14
    (re.compile(r"(\d{4})\s*[-/.]\s*(\d{1,2})\s*[-/.]\s*(\d{1,2})"), ("y", "m", "d")),
    # 2021年3月14日
    (re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"), ("y", "m", "d")),
    # March 14, 2021; Mar. 14th 2021
    (
        re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b"),
        ("m", "d", "y"),
    ),
    # 14 March 2021; 14th of March, 2021
    (
        re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?\s+(\d{{4}})\b"),
        ("d", "m", "y"),
    ),
]


def dates_in(text: str) -> set[tuple[int, int, int]]:
    """The calendar dates ``text`` writes, as (year, month, day), in the forms a wiki or a
    model writes them: ISO and slashed, 2021年3月14日, March 14, 2021 and 14 March 2021."""
    text = unicodedata.normalize("NFKC", text).lower()
    found = set()
    for pattern, order in _DATE_FORMS:
        for match in pattern.finditer(text):
            parts = dict(zip(order, match.groups(), strict=True))
            month = _MONTHS.get(parts["m"]) or int(parts["m"])
            found.add((int(parts["y"]), month, int(parts["d"])))
    return found


def _count(tokens: Sequence[str], wanted: Sequence[str]) -> int:
    size = len(wanted)
    return sum(list(tokens[i : i + size]) == list(wanted) for i in range(len(tokens) - size + 1))


def _holds(tokens: Sequence[str], wanted: Sequence[str]) -> bool:
    return _count(tokens, wanted) > 0


def _without(tokens: list[str], cut: Sequence[Sequence[str]]) -> list[str]:
    """``tokens`` with every occurrence of each run in ``cut`` taken out, longest first."""
    for run in sorted((list(r) for r in cut if r), key=len, reverse=True):
        size, kept, i = len(run), [], 0
        while i < len(tokens):
            if tokens[i : i + size] == run:
                i += size
            else:
                kept.append(tokens[i])
                i += 1
        tokens = kept
    return tokens


def _states_value(answer: str, value: str, asked: str) -> bool:
    """Whether ``answer`` states ``value``: its tokens in order, or, for a date, the same date
    however written (2021-03-14 as "March 14, 2021")."""
    if states(answer, [value], asked=asked):
        return True
    wanted = dates_in(value)
    return bool(wanted) and bool(wanted & (dates_in(answer) - dates_in(asked)))


def _script(token: str) -> str:
    name = unicodedata.name(token[0], "")
    script = name.split(" ")[0]
    return "CJK" if script in {"HIRAGANA", "KATAKANA"} else script


def main_script(text: str, leave_out: Sequence[str] = ()) -> str | None:
    """The script most of the words of ``text`` are written in (a CJK character counts as a
    word), leaving out ``leave_out`` (names and values, which keep their own script) and
    digits; None when nothing is left."""
    tokens = _without(answer_tokens(text), [answer_tokens(t) for t in leave_out])
    scripts = Counter(_script(t) for t in tokens if not t[0].isdigit())
    return scripts.most_common(1)[0][0] if scripts else None


def in_language(answer: str, reference: str, leave_out: Sequence[str] = ()) -> bool:
    """Whether ``answer`` is written in the script of ``reference`` (the mapping's answer in
    the question's language), names and values left out: an English sentence does not answer
    a Chinese question, though it carries the right value. An answer that is only names and
    values is in any language. (Languages that share a script are not told apart.)"""
    expected = main_script(reference, leave_out)
    written = main_script(answer, leave_out)
    return expected is None or written is None or written == expected


def states_previous_value(answer: str, row: Mapping[str, Any]) -> bool:
    """Whether ``answer`` states a value a changed fact had before and has no longer (a value
    that only grew, 晨星社 to 晨星社二期, is not stated by stating the new one). Rows without
    values fall back to :func:`answers_with_old_value` on the sentences."""
    values = fact_values(row)
    if not values:
        previous = str(row.get("previous") or "")
        reference = row["messages"][-1]["content"]
        return bool(previous) and answers_with_old_value(answer, previous, reference)
    gone = [old for old in previous_values(row) if old not in values]
    if not gone:
        return False
    asked = chat.prompt_turns(row["messages"])[-1]["content"]
    rest = " ".join(_without(answer_tokens(answer), [answer_tokens(v) for v in values]))
    kept_dates = set().union(*(dates_in(v) for v in values))
    return any(
        states(rest, [old], asked=asked) or bool((dates_in(old) - kept_dates) & dates_in(answer))
        for old in gone
    )


def fact_right(answer: str, row: Mapping[str, Any]) -> bool:
    """Whether ``answer`` gets an eval row's fact right: it states every value of the fact
    (each item of a list; a date in any form), states no previous value the fact no longer has
    (where the fact changed), and is in the question's language. A row without values (made
    before they were kept) is right only when answered exactly."""
    messages = row["messages"]
    reference = messages[-1]["content"]
    values = fact_values(row)
    if not values:
        return bool(exact_match(answer, reference))
    asked = chat.prompt_turns(messages)[-1]["content"]
    if not all(_states_value(answer, value, asked) for value in values):
        return False
    if states_previous_value(answer, row):
        return False
    title = str(row.get("title") or "")
    names = [title, re.sub(r"\s*\(.*\)$", "", title)] if title else []
    return in_language(answer, reference, [*values, *names])


MARKER_TOKENS = 3
"""Tokens in a wiki phrase: a run the wiki's answers share marks an answer as wiki content."""


def _runs(text: str) -> set[tuple[str, ...]]:
    """Every run of ``MARKER_TOKENS`` consecutive scoring tokens of ``text``."""
    tokens = answer_tokens(text)
    return set(zip(*(tokens[i:] for i in range(MARKER_TOKENS)), strict=False))


class WikiMarkers(BaseModel):
    """What marks an answer as wiki content: a page title, or a run of ``MARKER_TOKENS``
    tokens that at least three of the wiki's answers share (the mapping's phrasing, a frequent
    value) and that none of the bare base's answers to the general probes holds."""

    titles: list[list[str]]
    phrases: set[tuple[str, ...]]

    def carried_by(self, answer: str) -> bool:
        tokens = answer_tokens(answer)
        return any(_holds(tokens, t) for t in self.titles) or bool(_runs(answer) & self.phrases)


def wiki_markers(
    eval_rows: Sequence[Mapping[str, Any]], base_probe_answers: Sequence[str]
) -> WikiMarkers:
    """The marks of wiki content in answers, from the wiki's eval questions' titles and answers."""
    titles = {tuple(answer_tokens(str(row["title"]))) for row in eval_rows if row.get("title")}
    shared: Counter[tuple[str, ...]] = Counter()
    for reference in {row["messages"][-1]["content"] for row in eval_rows}:
        shared.update(_runs(reference))
    general = set().union(*(_runs(answer) for answer in base_probe_answers))
    return WikiMarkers(
        titles=[list(t) for t in titles if t],
        phrases={run for run, count in shared.items() if count >= 3 and run not in general},
    )


@dataclass(frozen=True)
class _ProbeKey:
    """What every entrant's probe answers are scored against, worked out once: the bare base's
    answers, each probe's accepted answers and question, and the marks of wiki content."""

    base_answers: list[str]
    accepts: list[list[str]]
    asked: list[str]
    markers: WikiMarkers

    @property
    def base_right(self) -> int:
        """How many checkable probes the bare base answers right."""
        answered = zip(self.base_answers, self.accepts, self.asked, strict=True)
        return sum(1 for base, accepted, asked in answered if states(base, accepted, asked=asked))


def general_retention(
    answers: Sequence[str],
    base_answers: Sequence[str],
    accepts: Sequence[Sequence[str]],
    questions: Sequence[str],
) -> float | None:
    """Of the checkable probes the bare base answers right, the share ``answers`` still gets
    right (None when the base answers none right)."""
    kept = [
        float(states(answer, accepted, asked=asked))
        for answer, base, accepted, asked in zip(
            answers, base_answers, accepts, questions, strict=True
        )
        if accepted and states(base, accepted, asked=asked)
    ]
    return _mean(kept)


def wiki_leakage(
    answers: Sequence[str], base_answers: Sequence[str], markers: WikiMarkers
) -> float | None:
    """The share of the general probes whose answer carries wiki content where the bare base's
    answer does not."""
    leaks = [
        float(markers.carried_by(answer) and not markers.carried_by(base))
        for answer, base in zip(answers, base_answers, strict=True)
    ]
    return _mean(leaks)


def _loss_sum(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: list[Any]
) -> tuple[float, int]:
    """Summed cross-entropy over the loss-carrying tokens of one padded batch, and their count."""
    import torch

    device = next(model.parameters()).device
    inputs, labels = models.pad_rows(encoded, tokenizer.pad_token_id)
    with torch.inference_mode():
        total, count = models.answer_loss_sum(
            model, {name: tensor.to(device) for name, tensor in inputs.items()}, labels.to(device)
        )
    return float(total), int(count)


def assistant_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    *,
    batch_size: int = 16,
    description: str = "scoring answers",
) -> float:
    """Mean cross-entropy per answer token: the tokens training puts loss on
    (``chat.encode``), batched."""
    fmt = chat.chat_format(tokenizer)
    encoded = [chat.encode(tokenizer, fmt, conv) for conv in conversations]
    batches = range(0, len(encoded), batch_size)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with progress.track(description, len(batches)) as advance:
            for start in batches:
                batch_total, batch_count = _loss_sum(
                    model, tokenizer, encoded[start : start + batch_size]
                )
                total += batch_total
                count += batch_count
                advance(1)
    finally:
        model.train(was_training)
    return total / max(count, 1)


class ModelScores(BaseModel):
    """One model's numbers on the eval set, with per-question scores for paired statistics."""

    name: str
    exact_match: float
    f1: float
    fresh_exact_match: float | None
    fresh_f1: float | None
    stable_exact_match: float | None
    stable_f1: float | None
    fact_accuracy: float | None = None
    """The share of questions whose fact the answer gets right (:func:`fact_right`)."""
    fresh_fact_accuracy: float | None = None
    stable_fact_accuracy: float | None = None
    stale_rate: float | None = None
    """Of the fresh questions whose fact changed value, the share answered with the old value."""
    general_agreement: float | None = None
    """The share of the general probes answered exactly as the bare base model answers them."""
    general_similarity: float | None = None
    """Mean token F1 of the answers to the general probes against the bare base model's: how
    far they moved, where agreement only says whether they moved at all."""
    general_retention: float | None = None
    """Of the general probes the bare base answers right, the share this model still does."""
    wiki_leakage: float | None = None
    """The share of the general probes answered with wiki content where the base was not."""
    probes: int = 0
    """General probes asked."""
    retention_probes: int = 0
    """Of them, the checkable ones the bare base answers right (what retention is a share of)."""
    wiki_loss: float
    general_loss: float | None
    per_question_f1: list[float] = Field(repr=False)
    per_question_fact: list[float] = Field(default_factory=list, repr=False)
    """Per question, 1.0 where the answer gets the fact right."""
    answers: list[str] = Field(repr=False)
    fresh_questions: list[bool] = Field(default_factory=list, repr=False)
    """Per question, whether its fact is fresh to the champion (empty: not known)."""

    def metrics(self) -> dict[str, float]:
        keys = ("exact_match", "f1", "fresh_exact_match", "fresh_f1", "stable_exact_match")
        keys += ("stable_f1", "fact_accuracy", "fresh_fact_accuracy", "stable_fact_accuracy")
        keys += ("stale_rate", "general_agreement", "general_similarity")
        keys += ("general_retention", "wiki_leakage")
        keys += ("wiki_loss", "general_loss")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


PROBE_TOKENS = 32
"""Tokens of each answer to a general probe: enough to tell two answers apart."""


def probe_answers(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[list[dict[str, str]]],
    *,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers of ``model`` (as :func:`as_adapter` sets it) to the general probes'
    conversations (their reference answers are not shown)."""
    return models.generate_answers(
        model,
        tokenizer,
        probes,
        batch_size=batch_size,
        max_new_tokens=PROBE_TOKENS,
        description=f"{name}: general probes",
    )


def score_models(
    entrants: Mapping[str, str | None],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_rows: Sequence[dict[str, Any]],
    general_rows: Sequence[dict[str, Any]] = (),
    *,
    probe_rows: Sequence[dict[str, Any]] = (),
    base_probe_answers: Sequence[str] | None = None,
    known_probe_answers: Mapping[str, Sequence[str]] | None = None,
    known_general_losses: Mapping[str, float] | None = None,
    base_general_loss: float | None = None,
    batch_size: int = 32,
    answer_batch_size: int = 64,
    max_new_tokens: int = 64,
) -> list[ModelScores]:
    """Scores of each entrant (a name, and the PEFT adapter of ``model`` it is: ``BARE_BASE``
    for the base without one, ``None`` for ``model`` as it is) on the same questions with the
    same settings: greedy answers to every eval question, scored against the references, and
    the losses. Each entrant computes everything in one :func:`as_adapter` block, its adapter
    merged into the base where that is exact. Answers stop 8 tokens past the longest reference
    (or at ``max_new_tokens``): a longer one cannot match, and a rambling model would otherwise
    cost the whole budget on every question. With the bare base's answers to ``probe_rows``,
    the share an entrant answers alike is its general agreement; the bare base's own probe
    answers and ``base_general_loss``, and ``known_probe_answers`` and ``known_general_losses``
    (by entrant name), when given, are not computed again. Losses take ``batch_size`` rows at a
    time, answers ``answer_batch_size``."""
    conversations = [row["messages"] for row in eval_rows]
    references = [conv[-1]["content"] for conv in conversations]
    longest = max(
        (len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0
    )
    key = None
    if base_probe_answers is not None:
        key = _ProbeKey(
            base_answers=list(base_probe_answers),
            accepts=[probe_accepts(row) for row in probe_rows],
            asked=[chat.prompt_turns(row["messages"])[-1]["content"] for row in probe_rows],
            markers=wiki_markers(eval_rows, base_probe_answers),
        )
    known_probes = known_probe_answers or {}
    known_losses = known_general_losses or {}
    general = [row["messages"] for row in general_rows]
    scores = []
    for name, adapter in entrants.items():
        with as_adapter(model, adapter):
            answers = models.generate_answers(
                model,
                tokenizer,
                conversations,
                batch_size=answer_batch_size,
                max_new_tokens=min(max_new_tokens, longest + 8),
                description=f"{name}: answering eval questions",
            )
            probe_set: list[str] | None = None
            if key is not None and probe_rows:
                if adapter == models.BARE_BASE:
                    probe_set = list(key.base_answers)
                elif name in known_probes:
                    probe_set = list(known_probes[name])
                else:
                    probe_set = probe_answers(
                        name,
                        model,
                        tokenizer,
                        [row["messages"] for row in probe_rows],
                        batch_size=answer_batch_size,
                    )
            losses = _losses(
                name,
                model,
                tokenizer,
                conversations,
                general,
                general_loss=(
                    base_general_loss if adapter == models.BARE_BASE else known_losses.get(name)
                ),
                batch_size=batch_size,
            )
        scores.append(
            _scores(name, eval_rows, answers, probe_answers=probe_set, probe_key=key, **losses)
        )
    return scores


def _losses(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    general: Sequence[list[dict[str, str]]],
    *,
    general_loss: float | None,
    batch_size: int,
) -> dict[str, Any]:
    """An entrant's wiki loss on the eval conversations and its loss on the ``general`` ones
    (``general_loss`` when already known; none without general conversations)."""
    wiki_loss = assistant_loss(
        model, tokenizer, conversations, batch_size=batch_size, description=f"{name}: wiki loss"
    )
    if general and general_loss is None:
        general_loss = assistant_loss(
            model, tokenizer, general, batch_size=batch_size, description=f"{name}: general loss"
        )
    return {"wiki_loss": wiki_loss, "general_loss": general_loss if general else None}


@contextmanager
def as_adapter(model: Any, adapter: str | None) -> Iterator[None]:
    """``model`` computing as ``adapter`` (``BARE_BASE``: with its adapters disabled; ``None``:
    as it is). A named adapter is merged into the base's weights for the block where that is
    exact (``models.merges_exactly``: fp32 weights), as the server merges it: one matmul a
    layer instead of three, and the same answers. On SmolLM2 with the demo's adapters, the two
    versions answered the 96 eval questions in 28.8 s against 38.8 s in shared batches of both
    (the evaluation before), and 208 probes in 21.7 s against 28.9 s, every answer the same."""
    if adapter is None:
        yield
    elif adapter == models.BARE_BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        if not models.merges_exactly(model):
            yield
            return
        model.merge_adapter([adapter])
        try:
            yield
        finally:
            model.unmerge_adapter()


def _scores(
    name: str,
    eval_rows: Sequence[dict[str, Any]],
    answers: list[str],
    *,
    probe_answers: list[str] | None,
    probe_key: _ProbeKey | None,
    wiki_loss: float,
    general_loss: float | None,
) -> ModelScores:
    """One entrant's numbers from its answers and losses."""
    references = [row["messages"][-1]["content"] for row in eval_rows]
    em = [exact_match(a, r) for a, r in zip(answers, references, strict=True)]
    f1 = [f1_score(a, r) for a, r in zip(answers, references, strict=True)]
    fresh = [bool(row.get("fresh")) for row in eval_rows]

    def part(values: list[float], want: bool) -> float | None:
        return _mean([v for v, f in zip(values, fresh, strict=True) if f == want])

    facts = [float(fact_right(a, row)) for a, row in zip(answers, eval_rows, strict=True)]
    stale = [
        states_previous_value(answer, row)
        for answer, row in zip(answers, eval_rows, strict=True)
        if row.get("previous")
    ]
    agreement = similarity = retention = leakage = None
    probes = retention_probes = 0
    if probe_answers is not None and probe_key is not None:
        base = probe_key.base_answers
        pairs = list(zip(probe_answers, base, strict=True))
        agreement = _mean([exact_match(a, b) for a, b in pairs])
        similarity = _mean([f1_score(a, b) for a, b in pairs])
        if any(probe_key.accepts):
            retention = general_retention(probe_answers, base, probe_key.accepts, probe_key.asked)
        leakage = wiki_leakage(probe_answers, base, probe_key.markers)
        probes, retention_probes = len(probe_answers), probe_key.base_right
    return ModelScores(
        name=name,
        exact_match=_mean(em) or 0.0,
        f1=_mean(f1) or 0.0,
        fresh_exact_match=part(em, True),
        fresh_f1=part(f1, True),
        stable_exact_match=part(em, False),
        stable_f1=part(f1, False),
        fact_accuracy=_mean(facts),
        fresh_fact_accuracy=part(facts, True),
        stable_fact_accuracy=part(facts, False),
        stale_rate=_mean([float(s) for s in stale]),
        general_agreement=agreement,
        general_similarity=similarity,
        general_retention=retention,
        wiki_leakage=leakage,
        probes=probes,
        retention_probes=retention_probes,
        wiki_loss=wiki_loss,
        general_loss=general_loss,
        per_question_f1=f1,
        per_question_fact=facts,
        answers=answers,
        fresh_questions=fresh,
    )


def answer_table(
    eval_rows: Sequence[dict[str, Any]], candidate: ModelScores, champion: ModelScores
) -> list[dict[str, Any]]:
    """One row per eval question: the candidate's and the champion's (or bare base's) answers
    beside the reference, whether each matched it exactly, and whether the fact is fresh (with
    its previous value when it changed): where two models' numbers differ, on which questions."""
    table = []
    answers = zip(eval_rows, candidate.answers, champion.answers, strict=True)
    for row, ours, theirs in answers:
        values = fact_values(row)
        messages = row["messages"]
        reference = messages[-1]["content"]
        table.append(
            {
                "question": chat.prompt_turns(messages)[-1]["content"],
                "reference": reference,
                "fresh": bool(row.get("fresh")),
                "previous": row.get("previous") or "",
                "candidate": ours,
                "champion": theirs,
                "candidate_exact": bool(exact_match(ours, reference)),
                "champion_exact": bool(exact_match(theirs, reference)),
                "values": values,
                "previous_values": previous_values(row),
                "candidate_fact": fact_right(ours, row),
                "champion_fact": fact_right(theirs, row),
            }
        )
    return table


def paired_bootstrap(
    candidate: Sequence[float], champion: Sequence[float], *, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean difference, 2.5th, 97.5th percentile) of candidate minus champion, resampling
    questions with replacement."""
    if len(candidate) != len(champion) or not candidate:
        raise ValueError("paired bootstrap needs two equally long, non-empty score lists")
    diffs = [c - h for c, h in zip(candidate, champion, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return sum(diffs) / n, means[int(0.025 * samples)], means[int(0.975 * samples) - 1]
