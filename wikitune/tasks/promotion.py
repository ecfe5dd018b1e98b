"""Registry work after an evaluation: register the candidate as a version with its numbers,
move the ``champion`` alias when it won, and say on the registered model who is champion."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from wikitune.tasks.evaluate import Evaluation

__all__ = ["Promotion", "model_description", "promote"]


class Promotion(BaseModel):
    """What the registry now says about a candidate."""

    evaluation: Evaluation
    version: str
    outcome: str  # promoted, rejected or lost-race
    champion_version: str | None


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
            "training_scope": evaluation.training_scope,
            "delta_streak": evaluation.delta_streak,
            "mapping_digest": evaluation.mapping_digest,
            "parent_version": evaluation.champion_version or "base",
            "compared_against": decision.champion_name,
            "f1_gain": f"{decision.f1_gain:.4f}",
            "f1_gain_on": f"{decision.gain_on} ({decision.gain_questions} questions)",
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
