"""Prefect Block classes, editable in the Prefect UI."""

from wikitune.blocks.recipe import TrainingRecipeBlock
from wikitune.blocks.source import WikiSource

__all__ = ["TrainingRecipeBlock", "WikiSource"]
