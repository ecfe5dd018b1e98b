"""Prefect Block classes, editable in the Prefect UI."""

from wikitune.blocks.recipe import TrainingRecipe
from wikitune.blocks.source import WikiSource

__all__ = ["TrainingRecipe", "WikiSource"]
