"""The training recipe as a Prefect Block, editable in the Prefect UI: the same fields as
``tasks.recipe.TrainingRecipe``, which training takes (``plain()``)."""

from __future__ import annotations

from prefect.blocks.core import Block

from wikitune.tasks.recipe import TrainingRecipe

__all__ = ["TrainingRecipeBlock"]


class TrainingRecipeBlock(Block, TrainingRecipe):
    """A training recipe saved on the Prefect server.

    Examples:
        >>> TrainingRecipeBlock(sft={"num_train_epochs": 1}).save("short")
        >>> recipe = TrainingRecipeBlock.load("short").plain()
    """

    _block_type_name = "wikitune training recipe"
    _description = "LoRA/QLoRA hyper-parameters for wikitune's retrain (defaults: 7B on one GPU)."
