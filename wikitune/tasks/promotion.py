"""Registry work after an evaluation: register the candidate as a version with its numbers,
move the ``champion`` alias when it won, and say on the registered model who is champion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel

from wikitune.tasks.evaluate import Evaluation

if TYPE_CHECKING:
    from wikitune.mlflow.registry import RegistryLock

__all__ = ["Promotion", "already_decided", "model_description", "promote"]


class Promotion(BaseModel):
    """What the registry now says about a candidate (the run ``run_id`` of ``source``)."""

    source: str
    run_id: str
    evaluation: Evaluation | None
    """None when the run was already a decided version: nothing was evaluated again."""
    version: str
    outcome: str  # promoted, rejected or lost-race
    champion_version: str | None
    already_registered: bool = False
    """The run was a version before this promotion, which changed nothing."""


def already_decided(tracking_uri: str, source: str, run_id: str) -> Promotion | None:
    """The registry's decision on training run ``run_id`` when it is already a decided
    version (a cycle queued behind the one that trained it, on the same snapshot and recipe,
    got the same run back): one run, one version, one evaluation. None when it is not."""
    from wikitune.mlflow import registry

    known = registry.version_of_run(tracking_uri, source, run_id)
    if known is None or known.tags.get("decision", "pending") == "pending":
        return None
    current = registry.champion(tracking_uri, source)
    return Promotion(
        source=source,
        run_id=run_id,
        evaluation=None,
        version=str(known.version),
        outcome=known.tags["decision"],
        champion_version=str(current.version) if current else None,
        already_registered=True,
    )


def promote(evaluation: Evaluation, *, tracking_uri: str, lock: RegistryLock) -> Promotion:
    """Register the candidate as a version with its numbers; move `champion` to it when it won
    and the champion is still the one it was compared against."""
    from wikitune.mlflow import registry, tracking

    decision = evaluation.decision
    version = registry.register_candidate(
        tracking_uri,
        evaluation.source,
        run_id=evaluation.run_id,
        model_uri=evaluation.model_uri,
        # A handful of tags a person reads in the versions table; the numbers are the
        # training run's metrics, the table its evaluation.md, what code needs its params.
        tags={
            "decision": "pending",
            "snapshot_id": evaluation.snapshot_id,
            "base": evaluation.base_model_spec or evaluation.base_model,
            "training_scope": evaluation.training_scope,
            "parent_version": evaluation.champion_version or "base",
            "prefect_run": evaluation.prefect_run_url or None,
        },
        description=f"being decided against {decision.champion_name}",
        lock=lock,
    )
    outcome = "rejected"
    if decision.promote:
        moved = registry.move_champion(
            tracking_uri,
            evaluation.source,
            version,
            expected=evaluation.champion_version,
            lock=lock,
        )
        outcome = "promoted" if moved else "lost-race"
    trained_by = (
        f" [Prefect run]({evaluation.prefect_run_url})." if evaluation.prefect_run_url else ""
    )
    registry.set_version_tags(
        tracking_uri,
        evaluation.source,
        version,
        {"decision": outcome, "verdict": decision.verdict()},
        description=decision.one_line(outcome) + "." + trained_by,
    )
    tracking.name_run(
        tracking_uri, evaluation.run_id, f"v{version}-{outcome}-{evaluation.snapshot_id}"
    )
    current = registry.champion(tracking_uri, evaluation.source)
    promotion = Promotion(
        source=evaluation.source,
        run_id=evaluation.run_id,
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
        lock=lock,
    )
    return promotion


def model_description(promotion: Promotion, champion_tags: Mapping[str, str]) -> str:
    """The registered model's description: who is champion and why, and the latest decision
    (the models list shows the latest version first, which may be a rejected one)."""
    evaluation = promotion.evaluation
    assert evaluation is not None, "only a promotion that evaluated describes the model"
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
