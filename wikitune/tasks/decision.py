"""The decision rule: whether a candidate replaces the champion, from both models' scores on
the same questions, and the numbers and reasons that say why."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from wikitune.tasks.scoring import ModelScores, paired_bootstrap

__all__ = ["Decision", "Margins", "decide"]


# Short: a version's description leads with the verdict, and the registry's versions table
# shows its first thirty characters ("Promoted: fresh facts +0.9000").
_GAIN_LABELS = {"fresh": "fresh facts", "all": "all facts"}


class Margins(BaseModel):
    """The decision rule's knobs."""

    min_gain: float = Field(
        default=0.01,
        description="Fact accuracy the candidate must gain over the champion on the questions"
        " about facts fresh to the champion (on all questions when none is fresh).",
    )
    stable_tolerance: float = Field(
        default=0.02,
        description="Stable-fact accuracy the candidate may lose: it is rejected when the 95%"
        " paired bootstrap interval of its change lies wholly below minus this, so that one"
        " question of a small eval set does not decide.",
    )
    min_retention: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of the general probes the bare base answers right that the candidate"
        " must still answer right (0.95 holds what the base knew; 0: not gated).",
    )
    max_leakage: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of the general probes the candidate may answer with wiki content"
        " where the bare base did not (the base's own is 0; 1: not gated).",
    )


class Decision(BaseModel):
    """Whether the candidate replaces the champion, and why, with the numbers."""

    promote: bool
    reasons: list[str]
    gain: float
    """Fact accuracy gained over the champion on the questions ``gain_on`` names."""
    ci_low: float
    ci_high: float
    candidate: dict[str, float]
    champion: dict[str, float]
    champion_name: str
    base_general_loss: float | None = None
    gain_on: Literal["fresh", "all"] = "all"
    """The questions ``gain`` is measured on: ``fresh`` (facts fresh to the champion) or
    ``all`` (when none is fresh)."""
    gain_questions: int = 0
    failed: list[str] = []
    """The reasons that stopped the candidate (empty when it won)."""

    def verdict(self) -> str:
        """One line: ``promote`` with the gain, or ``reject`` with what stopped it."""
        if self.promote:
            return f"{self.gain_label()} {self.gain:+.4f} over {self.champion_name}"
        return "; ".join(self.failed) or "no gain"

    def one_line(self, outcome: str) -> str:
        """The outcome and the numbers it turned on, in one line (a version's description: the
        registry's versions table shows its first thirty characters, so they say the outcome
        and the verdict; the version page shows it all)."""
        pairs = [
            ("fresh-fact accuracy", "fresh_fact_accuracy"),
            ("stable-fact accuracy", "stable_fact_accuracy"),
            ("fact accuracy", "fact_accuracy"),
            ("general retention", "general_retention"),
            ("wiki leakage", "wiki_leakage"),
        ]
        shown = [
            f"{label} {self.candidate[key]:.2f} vs {self.champion[key]:.2f}"
            for label, key in pairs
            if key in self.candidate and key in self.champion
        ]
        against = "" if self.promote else f" (against {self.champion_name})"
        return (
            f"{outcome.capitalize()}: {self.verdict()}{against}. Candidate vs"
            f" {self.champion_name}: " + ", ".join(shown)
        )

    def gain_label(self) -> str:
        """What ``gain`` is the accuracy on: ``fresh facts`` or ``all facts``."""
        return _GAIN_LABELS[self.gain_on]

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
            f"Decision: {verdict}. {self.gain_label()} gain {self.gain:+.4f} on"
            f" {self.gain_questions} questions, 95% paired bootstrap interval"
            f" [{self.ci_low:+.4f}, {self.ci_high:+.4f}].",
            "",
            *[f"- {reason}" for reason in self.reasons],
        ]
        return "\n".join(lines)


def _per_question(scores: ModelScores) -> list[float]:
    """Per question, whether the fact was right (F1 for scores made before facts were)."""
    if len(scores.per_question_fact) == len(scores.per_question_f1):
        return scores.per_question_fact
    return scores.per_question_f1


def decide(
    candidate: ModelScores,
    champion: ModelScores,
    margins: Margins,
    *,
    base_general_loss: float | None = None,
) -> Decision:
    """The candidate wins when all of these hold, each in its own reason with its numbers:

    - its fact accuracy on the questions about facts fresh to the champion (all questions when
      none is fresh) beats the champion's by ``min_gain``: asked of what changed, so a retrain
      after one edit can win;
    - it loses no more than ``stable_tolerance`` of stable-fact accuracy with confidence: the
      95% paired bootstrap interval of the change does not lie wholly below it;
    - it still answers right at least ``min_retention`` of the general probes the bare base
      answers right, and answers at most ``max_leakage`` of them with wiki content where the
      base did not: measured against the base, so forgetting cannot compound across cycles
      (both reported, not gated, at 0 and 1, the defaults).

    The general-chat loss against the bare base's (``base_general_loss``) is reported."""
    questions = len(candidate.per_question_f1)
    ours_all, theirs_all = _per_question(candidate), _per_question(champion)
    fresh = candidate.fresh_questions if len(candidate.fresh_questions) == questions else []
    fresh_ones = [i for i, is_fresh in enumerate(fresh) if is_fresh]
    gain_on = "fresh" if fresh_ones else "all"
    picked = fresh_ones or list(range(questions))
    ours = [ours_all[i] for i in picked]
    theirs = [theirs_all[i] for i in picked]
    gain, low, high = paired_bootstrap(ours, theirs)
    reasons: list[str] = []
    failed: list[str] = []

    def check(holds: bool, reason: str) -> None:
        reasons.append(reason)
        if not holds:
            failed.append(reason)

    gained = gain >= margins.min_gain
    check(
        gained,
        f"{_GAIN_LABELS[gain_on]} answered right {_mean(ours):.4f} vs {_mean(theirs):.4f}"
        f" ({len(picked)} questions): gain {gain:+.4f} {'>=' if gained else '<'} margin"
        f" {margins.min_gain}",
    )
    stable = sorted(set(range(questions)) - set(fresh_ones))
    if stable:
        ours_stable = [ours_all[i] for i in stable]
        theirs_stable = [theirs_all[i] for i in stable]
        change, stable_low, stable_high = paired_bootstrap(ours_stable, theirs_stable)
        lost = stable_high < -margins.stable_tolerance
        check(
            not lost,
            f"stable-fact accuracy {_mean(ours_stable):.4f} vs {_mean(theirs_stable):.4f}"
            f" ({len(stable)} questions): change {change:+.4f}, 95% interval"
            f" [{stable_low:+.4f}, {stable_high:+.4f}] "
            + (
                f"wholly beyond tolerance -{margins.stable_tolerance}"
                if lost
                else f"reaches within tolerance -{margins.stable_tolerance}"
            ),
        )
    if candidate.general_retention is not None:
        kept = candidate.general_retention >= margins.min_retention
        counted = candidate.retention_probes
        check(
            kept,
            f"general retention {candidate.general_retention:.4f}"
            + (f" (of {counted} probes the bare base answers right)" if counted else "")
            + (
                f" {'>=' if kept else '<'} min {margins.min_retention}"
                if margins.min_retention > 0
                else " (reported, not gated)"
            ),
        )
    if candidate.wiki_leakage is not None:
        clean = candidate.wiki_leakage <= margins.max_leakage
        asked = candidate.probes
        leaked = round(candidate.wiki_leakage * asked)
        check(
            clean,
            f"wiki leakage {candidate.wiki_leakage:.4f}"
            + (f" ({leaked} of {asked} probe answers)" if asked else "")
            + (
                f" {'<=' if clean else '>'} max {margins.max_leakage} (the bare base's is 0)"
                if margins.max_leakage < 1
                else " (reported, not gated)"
            ),
        )
    reference, against = base_general_loss, "the bare base's"
    if reference is None:
        reference, against = champion.general_loss, f"{champion.name}'s"
    if candidate.general_loss is not None and reference is not None:
        reasons.append(
            f"general loss {candidate.general_loss:.4f} vs {against} {reference:.4f}"
            f" ({candidate.general_loss / reference - 1:+.1%}; reported, not gated)"
        )
    return Decision(
        promote=not failed,
        reasons=reasons,
        gain=gain,
        ci_low=low,
        ci_high=high,
        candidate=candidate.metrics(),
        champion=champion.metrics(),
        champion_name=champion.name,
        base_general_loss=base_general_loss,
        gain_on=gain_on,
        gain_questions=len(picked),
        failed=failed,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
