"""The decision rule: whether a candidate replaces the champion, from both models' scores on
the same questions, and the numbers and reasons that say why."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from wikitune.tasks.scoring import ModelScores, paired_bootstrap

__all__ = ["Decision", "Margins", "decide"]


_GAIN_LABELS = {"fresh": "fresh-fact F1", "all": "domain F1"}


class Margins(BaseModel):
    """The decision rule's knobs."""

    min_gain: float = Field(
        default=0.01,
        description="F1 the candidate must gain over the champion on the fresh facts' questions"
        " (on all questions when none is fresh).",
    )
    stable_tolerance: float = Field(
        default=0.02,
        description="Stable-fact F1, and stable-fact exact match, the candidate may lose.",
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
    gain_on: Literal["fresh", "all"] = "all"
    """The questions ``f1_gain`` is measured on: ``fresh`` (facts fresh to the champion) or
    ``all`` (when none is fresh)."""
    gain_questions: int = 0
    failed: list[str] = []
    """The reasons that stopped the candidate (empty when it won)."""

    def verdict(self) -> str:
        """One line: ``promote`` with the gain, or ``reject`` with what stopped it."""
        if self.promote:
            return f"{self.gain_label()} {self.f1_gain:+.4f} over {self.champion_name}"
        return "; ".join(self.failed) or "no gain"

    def one_line(self, outcome: str) -> str:
        """The outcome and the numbers it turned on, in one line (a version's description: the
        registry's versions table shows its first thirty characters, so they say the outcome
        and the verdict; the version page shows it all)."""
        pairs = [
            ("fresh-fact F1", "fresh_f1"),
            ("stable-fact exact match", "stable_exact_match"),
            ("exact match", "exact_match"),
            ("general loss", "general_loss"),
            ("general retention", "general_retention"),
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
        """What ``f1_gain`` is: ``fresh-fact F1`` or ``domain F1``."""
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
            f"Decision: {verdict}. {self.gain_label()} gain {self.f1_gain:+.4f} on"
            f" {self.gain_questions} questions, 95% paired bootstrap interval"
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
    """The candidate wins when its F1 on the questions about facts fresh to the champion (all
    questions when none is fresh) beats the champion's by ``min_gain``, its stable-fact F1 and
    exact match each drop by no more than ``stable_tolerance`` and its general loss is at most
    ``general_loss_tolerance`` above the bare base model's (``base_general_loss``; the
    champion's when not given). The gain is asked of what changed, so that a retrain after one
    edit can win; the stable tolerance guards the rest. Against the base, forgetting cannot
    compound across cycles, and a champion whose training lowered the general loss does not
    make its successor fail."""
    questions = len(candidate.per_question_f1)
    fresh = candidate.fresh_questions if len(candidate.fresh_questions) == questions else []
    picked = [i for i, is_fresh in enumerate(fresh) if is_fresh]
    gain_on = "fresh" if picked else "all"
    picked = picked or list(range(questions))
    ours = [candidate.per_question_f1[i] for i in picked]
    theirs = [champion.per_question_f1[i] for i in picked]
    gain, low, high = paired_bootstrap(ours, theirs)
    reasons: list[str] = []
    failed: list[str] = []
    wins = gain >= margins.min_gain
    reasons.append(
        f"{_GAIN_LABELS[gain_on]} {sum(ours) / len(ours):.4f} vs {sum(theirs) / len(theirs):.4f}"
        f" ({len(picked)} questions): gain {gain:+.4f}"
        f" {'>=' if wins else '<'} margin {margins.min_gain}"
    )
    if not wins:
        failed.append(reasons[-1])
    if candidate.stable_f1 is not None and champion.stable_f1 is not None:
        # F1 forgives an answer that kept most of its words; a wrong value is still wrong, so
        # exact match is guarded too. The reason names the measure that failed.
        tolerance = margins.stable_tolerance
        measures = [("F1", candidate.stable_f1, champion.stable_f1)]
        ours_em, theirs_em = candidate.stable_exact_match, champion.stable_exact_match
        if ours_em is not None and theirs_em is not None:
            measures.append(("exact match", ours_em, theirs_em))
        lost = [m for m in measures if m[1] < m[2] - tolerance]
        held = [m for m in measures if m not in lost]
        if lost:
            reason = "; ".join(
                f"stable-fact {what} fell {theirs - ours:.4f} ({ours:.4f} vs {theirs:.4f}),"
                f" beyond tolerance {tolerance}"
                for what, ours, theirs in lost
            )
            if held:
                reason += (
                    " ("
                    + ", ".join(
                        f"{what} {ours:.4f} vs {theirs:.4f} within it"
                        for what, ours, theirs in held
                    )
                    + ")"
                )
        else:
            reason = "stable-fact " + " and ".join(
                f"{what} {ours:.4f} vs {theirs:.4f}" for what, ours, theirs in held
            )
            reason += f": within tolerance {tolerance}"
        reasons.append(reason)
        failed += reasons[-1:] if lost else []
        wins = wins and not lost
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
        gain_on=gain_on,
        gain_questions=len(picked),
        failed=failed,
    )
