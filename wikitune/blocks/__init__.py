"""Prefect Block classes, editable in the Prefect UI: each wraps a plain model of ``tasks``."""

from wikitune.blocks.recipe import TrainingRecipeBlock
from wikitune.blocks.source import WikiSourceBlock

__all__ = ["TrainingRecipeBlock", "WikiSourceBlock"]
