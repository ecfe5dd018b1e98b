"""Score a candidate adapter and the champion (or the bare base) on the same eval questions, in
one process: exact match and F1 of greedy answers, fresh and stable facts apart, loss on the
assistant tokens, loss on general chat; then the decision rule with a paired bootstrap interval.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from wikitune import progress
from wikitune.tasks import chat
from wikitune.tasks import model as models

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Decision",
    "Evaluation",
    "Margins",
    "ModelScores",
    "Promotion",
    "answer_tokens",
    "answer_with_champion",
    "ask",
    "assistant_loss",
    "decide",
    "evaluate_run",
    "exact_match",
    "f1_score",
    "load_adapter",
    "paired_bootstrap",
    "promote",
    "same_base",
    "score_model",
]

# Scripts whose text has no spaces between words: scored a character at a time.
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


def _loss_sum(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: list[Any]
) -> tuple[float, int]:
    """Summed cross-entropy over the loss-carrying tokens of one padded batch, and their count."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    device = next(model.parameters()).device
    ids = pad_sequence(
        [torch.tensor(i) for i, _ in encoded],
        batch_first=True,
        padding_value=tokenizer.pad_token_id,
    )
    attention = pad_sequence(
        [torch.ones(len(i), dtype=torch.long) for i, _ in encoded], batch_first=True
    )
    labels = pad_sequence(
        [torch.tensor(lab) for _, lab in encoded], batch_first=True, padding_value=-100
    )
    with torch.inference_mode():
        total, count = models.answer_loss_sum(
            model,
            {"input_ids": ids.to(device), "attention_mask": attention.to(device)},
            labels.to(device),
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
    wiki_loss: float
    general_loss: float | None
    per_question_f1: list[float] = Field(repr=False)
    answers: list[str] = Field(repr=False)

    def metrics(self) -> dict[str, float]:
        keys = ("exact_match", "f1", "fresh_exact_match", "fresh_f1", "stable_exact_match")
        keys += ("stable_f1", "wiki_loss", "general_loss")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_model(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    eval_rows: Sequence[dict[str, Any]],
    general_rows: Sequence[dict[str, Any]] = (),
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
) -> ModelScores:
    """Greedy answers (batched) to every eval question, scored against the references. Answers
    stop 8 tokens past the longest reference (or at ``max_new_tokens``): a longer one cannot
    match, and a rambling model would otherwise cost the whole budget on every question."""
    conversations = [row["messages"] for row in eval_rows]
    references = [conv[-1]["content"] for conv in conversations]
    longest = max(
        (len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0
    )
    answers = models.generate_answers(
        model,
        tokenizer,
        conversations,
        batch_size=batch_size,
        max_new_tokens=min(max_new_tokens, longest + 8),
        description=f"{name}: answering eval questions",
    )
    em = [exact_match(a, r) for a, r in zip(answers, references, strict=True)]
    f1 = [f1_score(a, r) for a, r in zip(answers, references, strict=True)]
    fresh = [bool(row.get("fresh")) for row in eval_rows]

    def part(values: list[float], want: bool) -> float | None:
        return _mean([v for v, f in zip(values, fresh, strict=True) if f == want])

    general = [row["messages"] for row in general_rows]
    return ModelScores(
        name=name,
        exact_match=_mean(em) or 0.0,
        f1=_mean(f1) or 0.0,
        fresh_exact_match=part(em, True),
        fresh_f1=part(f1, True),
        stable_exact_match=part(em, False),
        stable_f1=part(f1, False),
        wiki_loss=assistant_loss(
            model, tokenizer, conversations, batch_size=batch_size, description=f"{name}: wiki loss"
        ),
        general_loss=(
            assistant_loss(
                model,
                tokenizer,
                general,
                batch_size=batch_size,
                description=f"{name}: general loss",
            )
            if general
            else None
        ),
        per_question_f1=f1,
        answers=answers,
    )


def same_base(champion_tags: Mapping[str, str], run_params: Mapping[str, str]) -> bool:
    """Whether a champion version and a training run share their base model: the same weights'
    digest (a version registered before digests were recorded never matches)."""
    digest = champion_tags.get("base_model_digest")
    return bool(digest) and digest == run_params.get("base_model_digest")


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


class Margins(BaseModel):
    """The decision rule's knobs."""

    min_gain: float = Field(
        default=0.01, description="Domain F1 the candidate must gain over the champion."
    )
    stable_tolerance: float = Field(
        default=0.02, description="Stable-fact F1 the candidate may lose."
    )
    general_loss_tolerance: float = Field(
        default=0.10,
        description="Rise of general-chat loss over the bare base model's allowed (forgetting).",
    )


class Decision(BaseModel):
    """Whether the candidate replaces the champion, and why, with the numbers."""

    promote: bool
    reasons: list[str]
    f1_gain: float
    ci_low: float
    ci_high: float
    candidate: dict[str, float]
    champion: dict[str, float]
    champion_name: str
    base_general_loss: float | None = None
    failed: list[str] = []
    """The reasons that stopped the candidate (empty when it won)."""

    def verdict(self) -> str:
        """One line: ``promote`` with the gain, or ``reject`` with what stopped it."""
        if self.promote:
            return f"F1 {self.f1_gain:+.4f} over {self.champion_name}"
        return "; ".join(self.failed) or "no gain"

    def table(self) -> list[dict[str, Any]]:
        """Rows of metric, candidate, champion: for the model version and the UI artifacts."""
        keys = [k for k in self.candidate if k in self.champion]
        return [
            {
                "metric": k,
                "candidate": round(self.candidate[k], 4),
                self.champion_name: round(self.champion[k], 4),
            }
            for k in keys
        ]

    def markdown(self) -> str:
        lines = [f"| metric | candidate | {self.champion_name} |", "| --- | ---: | ---: |"]
        lines += [
            f"| {row['metric']} | {row['candidate']:.4f} | {row[self.champion_name]:.4f} |"
            for row in self.table()
        ]
        verdict = "**promote**" if self.promote else "**reject**"
        lines += [
            "",
            f"Decision: {verdict}. F1 gain {self.f1_gain:+.4f}, 95% paired bootstrap interval"
            f" [{self.ci_low:+.4f}, {self.ci_high:+.4f}].",
            "",
            *[f"- {reason}" for reason in self.reasons],
        ]
        return "\n".join(lines)


def decide(
    candidate: ModelScores,
    champion: ModelScores,
    margins: Margins,
    *,
    base_general_loss: float | None = None,
) -> Decision:
    """The candidate wins when its domain F1 beats the champion's by ``min_gain``, its stable-fact
    F1 drops by no more than ``stable_tolerance`` and its general loss is at most
    ``general_loss_tolerance`` above the bare base model's (``base_general_loss``; the
    champion's when not given). Against the base, forgetting cannot compound across cycles, and
    a champion whose training lowered the general loss does not make its successor fail."""
    gain, low, high = paired_bootstrap(candidate.per_question_f1, champion.per_question_f1)
    reasons: list[str] = []
    failed: list[str] = []
    wins = gain >= margins.min_gain
    reasons.append(
        f"domain F1 {candidate.f1:.4f} vs {champion.f1:.4f}: gain {gain:+.4f}"
        f" {'>=' if wins else '<'} margin {margins.min_gain}"
    )
    if not wins:
        failed.append(reasons[-1])
    if candidate.stable_f1 is not None and champion.stable_f1 is not None:
        kept = candidate.stable_f1 >= champion.stable_f1 - margins.stable_tolerance
        reasons.append(
            f"stable-fact F1 {candidate.stable_f1:.4f} vs {champion.stable_f1:.4f}"
            f" ({'within' if kept else 'beyond'} tolerance {margins.stable_tolerance})"
        )
        failed += [] if kept else reasons[-1:]
        wins = wins and kept
    reference, against = base_general_loss, "the bare base's"
    if reference is None:
        reference, against = champion.general_loss, f"{champion.name}'s"
    if candidate.general_loss is not None and reference is not None:
        kept = candidate.general_loss <= reference * (1 + margins.general_loss_tolerance)
        reasons.append(
            f"general loss {candidate.general_loss:.4f} vs {against} {reference:.4f}"
            f" ({'within' if kept else 'beyond'} +{margins.general_loss_tolerance:.0%})"
        )
        failed += [] if kept else reasons[-1:]
        wins = wins and kept
    return Decision(
        promote=wins,
        reasons=reasons,
        f1_gain=gain,
        ci_low=low,
        ci_high=high,
        candidate=candidate.metrics(),
        champion=champion.metrics(),
        champion_name=champion.name,
        base_general_loss=base_general_loss,
        failed=failed,
    )


class Evaluation(BaseModel):
    """A candidate run scored against the champion of its source on its snapshot."""

    run_id: str
    source: str
    model_uri: str
    snapshot_id: str
    snapshot_digest: str
    base_model: str
    base_model_spec: str = ""
    base_model_digest: str = ""
    method: str
    champion_version: str | None
    decision: Decision
    run_link: str


class Promotion(BaseModel):
    """What the registry now says about a candidate."""

    evaluation: Evaluation
    version: str
    outcome: str  # promoted, rejected or lost-race
    champion_version: str | None


def evaluate_run(
    run_id: str,
    *,
    tracking_uri: str,
    workdir: Path,
    margins: Margins,
    device: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    ui_url: str | None = None,
) -> Evaluation:
    """Score the adapter of training run ``run_id`` and the champion of its source (the bare base
    when there is none) on the run's snapshot, decide, and add the numbers to the run."""
    import torch
    from peft import PeftModel

    from wikitune.mlflow import registry, tracking
    from wikitune.tasks import train

    run = tracking.get_run(tracking_uri, run_id)
    params, tags = run.data.params, run.data.tags
    if tracking.MODEL_URI_TAG not in tags or run.info.status != "FINISHED":
        raise ValueError(f"run {run_id} has no finished, logged adapter to evaluate")
    source = tags[tracking.SOURCE_TAG]
    data = train.read_snapshot(params["snapshot_location"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quantize = params.get("method") == "qlora-nf4" and models.fourbit_available(device)
    current = registry.champion(tracking_uri, source)
    candidate = registry.download_logged_model(
        tracking_uri, tags[tracking.MODEL_URI_TAG], workdir / "candidate"
    )
    tokenizer = models.load_tokenizer(candidate.tokenizer_dir)
    base = models.load_base_model(params["base_model"], device=device, quantize=quantize)
    model = PeftModel.from_pretrained(base, candidate.adapter_dir, adapter_name="candidate")
    general = list(data.splits.get("general_eval") or [])
    # Both models answer the same questions with the same settings.
    score = partial(
        score_model,
        eval_rows=list(data.splits["eval"]),
        general_rows=general,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    candidate_scores = score("candidate", model, tokenizer)
    if current is None:
        with model.disable_adapter():
            champion_scores = score("base", model, tokenizer)
        base_general_loss = champion_scores.general_loss
    else:
        base_general_loss = None
        if general:
            with model.disable_adapter():
                base_general_loss = assistant_loss(
                    model,
                    tokenizer,
                    [row["messages"] for row in general],
                    batch_size=batch_size,
                    description="base: general loss",
                )
        name = registry.registered_model_name(source)
        held = registry.download_logged_model(
            tracking_uri, f"models:/{name}/{current.version}", workdir / "champion"
        )
        champion_tokenizer = tokenizer
        if not same_base(current.tags, params):
            # A champion on another base answers with its own base, tokenizer and template.
            other = models.load_base_model(
                current.tags["base_model"], device=device, quantize=quantize
            )
            champion_model = PeftModel.from_pretrained(other, held.adapter_dir)
            champion_tokenizer = models.load_tokenizer(held.tokenizer_dir)
        else:
            model.load_adapter(held.adapter_dir, adapter_name="champion")
            model.set_adapter("champion")
            champion_model = model
        champion_scores = score(f"version {current.version}", champion_model, champion_tokenizer)
    decision = decide(
        candidate_scores, champion_scores, margins, base_general_loss=base_general_loss
    )
    evaluation = Evaluation(
        run_id=run_id,
        source=source,
        model_uri=tags[tracking.MODEL_URI_TAG],
        snapshot_id=params["snapshot_id"],
        snapshot_digest=params["snapshot_digest"],
        base_model=params["base_model"],
        base_model_spec=params.get("base_model_spec", params["base_model"]),
        base_model_digest=params.get("base_model_digest", ""),
        method=params.get("method", "lora"),
        champion_version=str(current.version) if current else None,
        decision=decision,
        run_link=tracking.run_link(ui_url, run),
    )
    tracking.log_evaluation(
        tracking_uri,
        run_id,
        metrics={
            **{f"candidate_{k}": v for k, v in decision.candidate.items()},
            **{f"champion_{k}": v for k, v in decision.champion.items()},
            "f1_gain": decision.f1_gain,
            "f1_gain_ci_low": decision.ci_low,
            "f1_gain_ci_high": decision.ci_high,
            **({"base_general_loss": base_general_loss} if base_general_loss is not None else {}),
        },
        table=decision.table(),
        report=(
            f"Adapter of {evaluation.base_model_spec or evaluation.base_model} trained on snapshot"
            f" {evaluation.snapshot_id}, evaluated against {decision.champion_name} on the same"
            f" held-out questions.\n\n{decision.markdown()}"
        ),
        tags={
            "wikitune.compared_against": decision.champion_name,
            "wikitune.decision": "promote" if decision.promote else "reject",
        },
    )
    return evaluation


def promote(evaluation: Evaluation, *, tracking_uri: str, lock_path: Path) -> Promotion:
    """Register the candidate as a version with its numbers; move `champion` to it when it won
    and the champion is still the one it was compared against."""
    from wikitune.mlflow import registry, tracking

    decision = evaluation.decision
    version = registry.register_candidate(
        tracking_uri,
        evaluation.source,
        run_id=evaluation.run_id,
        model_uri=evaluation.model_uri,
        tags={
            "snapshot_id": evaluation.snapshot_id,
            "snapshot_digest": evaluation.snapshot_digest,
            "base_model": evaluation.base_model,
            "base_model_spec": evaluation.base_model_spec,
            "base_model_digest": evaluation.base_model_digest,
            "method": evaluation.method,
            "parent_version": evaluation.champion_version or "base",
            "compared_against": decision.champion_name,
            "f1_gain": f"{decision.f1_gain:.4f}",
            "f1_gain_ci": f"[{decision.ci_low:.4f}, {decision.ci_high:.4f}]",
            # Both models on the same questions, so versions compare across snapshots.
            **{f"candidate_{k}": f"{v:.4f}" for k, v in decision.candidate.items()},
            **{f"champion_{k}": f"{v:.4f}" for k, v in decision.champion.items()},
            "decision": "pending",
        },
        description=decision.markdown(),
    )
    outcome = "rejected"
    if decision.promote:
        moved = registry.move_champion(
            tracking_uri,
            evaluation.source,
            version,
            expected=evaluation.champion_version,
            lock_path=lock_path,
        )
        outcome = "promoted" if moved else "lost-race"
    registry.set_version_tags(
        tracking_uri,
        evaluation.source,
        version,
        {"decision": outcome, "verdict": decision.verdict()},
    )
    tracking.name_run(
        tracking_uri, evaluation.run_id, f"v{version}-{outcome}-{evaluation.snapshot_id}"
    )
    current = registry.champion(tracking_uri, evaluation.source)
    promotion = Promotion(
        evaluation=evaluation,
        version=version,
        outcome=outcome,
        champion_version=str(current.version) if current else None,
    )
    registry.describe_model(
        tracking_uri,
        evaluation.source,
        model_description(promotion, current.tags if current else {}),
        {
            "champion_version": promotion.champion_version or "none",
            "latest_version": version,
            "latest_decision": outcome,
        },
        lock_path=lock_path,
    )
    return promotion


def model_description(promotion: Promotion, champion_tags: Mapping[str, str]) -> str:
    """The registered model's description: who is champion and why, and the latest decision
    (the models list shows the latest version first, which may be a rejected one)."""
    evaluation = promotion.evaluation
    decision = evaluation.decision
    lines = [
        f"LoRA adapters of {evaluation.base_model_spec or evaluation.base_model} trained by"
        f" wikitune on the wiki source {evaluation.source}."
    ]
    if promotion.champion_version:
        lines.append(
            f"**Champion: version {promotion.champion_version}** (alias `champion`), trained on"
            f" snapshot {champion_tags.get('snapshot_id', '?')}; it won with"
            f" {champion_tags.get('verdict', 'no recorded verdict')}."
        )
    else:
        lines.append("**No champion yet**: `ask` and serving use none.")
    lines.append(
        f"Latest candidate: version {promotion.version}, **{promotion.outcome}**"
        f" against {decision.champion_name}: {decision.verdict()}."
    )
    return "\n\n".join(lines)


def load_adapter(
    base_model: str, adapter_dir: str, tokenizer_dir: str, *, device: str, quantize: bool
) -> tuple[Any, PreTrainedTokenizerBase]:
    """A trained adapter on its base model, with the tokenizer (and chat template) it trained
    with: what ``ask`` answers with."""
    from peft import PeftModel

    base = models.load_base_model(base_model, device=device, quantize=quantize)
    return PeftModel.from_pretrained(base, adapter_dir), models.load_tokenizer(tokenizer_dir)


def ask(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    system_prompt: str = "",
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answers to questions, each rendered as training rendered its rows."""
    from wikitune.tasks.dataset import with_system

    conversations = [
        with_system([{"role": "user", "content": question}], system_prompt)
        for question in questions
    ]
    return models.generate_answers(model, tokenizer, conversations, max_new_tokens=max_new_tokens)


def answer_with_champion(
    tracking_uri: str,
    source: str,
    question: str,
    *,
    system_prompt: str,
    workdir: Path,
    device: str | None = None,
    max_new_tokens: int = 64,
) -> str:
    """Answer ``question`` with ``models:/<name>@champion`` on its base model, rendered with the
    chat template the adapter was trained with."""
    import torch

    from wikitune.mlflow import registry

    current = registry.champion(tracking_uri, source)
    if current is None:
        name = registry.registered_model_name(source)
        raise LookupError(f"{name} has no champion yet: train and promote a model first")
    name = registry.registered_model_name(source)
    logged = registry.download_logged_model(
        tracking_uri, f"models:/{name}@{registry.CHAMPION}", workdir / str(current.version)
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quantize = current.tags.get("method") == "qlora-nf4" and models.fourbit_available(device)
    model, tokenizer = load_adapter(
        current.tags["base_model"],
        logged.adapter_dir,
        logged.tokenizer_dir,
        device=device,
        quantize=quantize,
    )
    (answer,) = ask(
        model, tokenizer, [question], system_prompt=system_prompt, max_new_tokens=max_new_tokens
    )
    return answer
