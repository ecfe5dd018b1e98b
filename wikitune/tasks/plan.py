"""When a retrain is due, and what it covers: the whole snapshot or, on the champion's adapter,
a delta (the rows fresh to it, a replay of stable ones and general rows), why, and the rows
that follow."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from wikitune.tasks.recipe import TrainingRecipe
from wikitune.tasks.snapshots import SnapshotManifest

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["TrainingPlan", "plan_training", "retrain_due", "training_rows"]


def retrain_due(changed_since_champion: int, threshold: int) -> bool:
    """Whether enough QA pairs were added or changed since the champion's snapshot to retrain:
    the one rule the build, the cycle, the poll and ``wikitune status`` go by."""
    return changed_since_champion >= threshold


class TrainingPlan(BaseModel):
    """What a training covers: the whole snapshot (``full``), or, on the champion's adapter,
    the pairs fresh to it, a replay sample of stable pairs and general rows (``delta``)."""

    scope: Literal["full", "delta"] = "full"
    reason: str = "the whole snapshot"
    # Delta retrains in a row up to this one (0 for a full one): full_retrain_every counts these.
    delta_streak: int = 0


def plan_training(
    manifest: SnapshotManifest,
    recipe: TrainingRecipe,
    champion_tags: Mapping[str, str] | None,
    *,
    full: bool = False,
) -> TrainingPlan:
    """Delta when training starts from a champion (``champion_tags``, None otherwise) that the
    snapshot counted its fresh pairs against, under the same mapping, and something is fresh;
    a full retrain otherwise, or when ``full`` or the recipe's ``full_retrain_every`` asks."""
    if champion_tags is None:
        return TrainingPlan(reason="training starts from the bare base model")
    trained_on = champion_tags.get("snapshot_id", "")
    streak = int(champion_tags.get("delta_streak", "0") or 0) + 1
    mapping = manifest.mapping_digest
    reasons = [
        (full, "a full retrain was asked for"),
        (
            bool(recipe.full_retrain_every) and streak >= recipe.full_retrain_every,
            "the recipe retrains on the whole snapshot every time (full_retrain_every: 1)"
            if recipe.full_retrain_every == 1
            else f"the recipe asks for a full retrain after {streak - 1} delta retrains"
            f" (full_retrain_every: {recipe.full_retrain_every})",
        ),
        (
            manifest.fresh_against != trained_on,
            f"the snapshot counts fresh pairs against {manifest.fresh_against or 'none'},"
            f" the champion was trained on {trained_on or 'an unrecorded snapshot'}",
        ),
        (
            not mapping or mapping != champion_tags.get("mapping_digest", ""),
            "the question mapping changed since the champion's training",
        ),
        (
            not manifest.counts.get("train_fresh"),
            "no training pair is fresh to the champion",
        ),
    ]
    for applies, reason in reasons:
        if applies:
            return TrainingPlan(reason=reason)
    return TrainingPlan(
        scope="delta",
        reason=f"{manifest.counts['train_fresh']} training pairs are fresh to the champion",
        delta_streak=streak,
    )


def training_rows(
    train: Dataset, plan: TrainingPlan, recipe: TrainingRecipe, general_share: float
) -> tuple[Dataset, dict[str, int]]:
    """The snapshot's training rows the plan covers, and how many of each kind: fresh and
    stable wiki rows, and general ones. A delta keeps every fresh row, samples stable rows to
    ``delta_replay_share`` of the wiki rows and general rows to their share of the result."""
    from wikitune.tasks.dataset import general_rows_needed

    kinds: dict[str, list[int]] = {"fresh": [], "stable": [], "general": []}
    for index, (kind, fresh) in enumerate(zip(train["kind"], train["fresh"], strict=True)):
        key = "general" if kind != "wiki" else "fresh" if fresh else "stable"
        kinds[key].append(index)
    if plan.scope == "delta":
        rng = random.Random(recipe.sft["seed"])
        share = recipe.delta_replay_share
        replay = round(len(kinds["fresh"]) * share / (1 - share))
        kinds["stable"] = sorted(rng.sample(kinds["stable"], min(replay, len(kinds["stable"]))))
        wiki = len(kinds["fresh"]) + len(kinds["stable"])
        mix = recipe.delta_general_share
        needed = general_rows_needed(wiki, general_share if mix is None else mix)
        kinds["general"] = sorted(rng.sample(kinds["general"], min(needed, len(kinds["general"]))))
        # Sorted indices keep the snapshot's own shuffled order.
        rows = train.select(sorted(kinds["fresh"] + kinds["stable"] + kinds["general"]))
    else:
        rows = train
    return rows, {f"train_{kind}_rows": len(indices) for kind, indices in kinds.items()}
