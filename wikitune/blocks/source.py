"""The wiki source as a Prefect Block, editable in the Prefect UI: the same fields as
``tasks.source.WikiSource``, which the sync takes (``plain()``)."""

from __future__ import annotations

from prefect.blocks.core import Block

from wikitune.tasks.source import WikiSource

__all__ = ["WikiSourceBlock"]


class WikiSourceBlock(Block, WikiSource):
    """A wiki source saved on the Prefect server (its bot password, if any, kept as a secret).

    Examples:
        >>> WikiSourceBlock(api_url="https://wiki.example.org/api.php",
        ...                 categories=["Category:VTuber"]).save("my-wiki")
        >>> source = WikiSourceBlock.load("my-wiki").plain()
    """

    _block_type_name = "wikitune wiki source"
    _description = "A MediaWiki api.php, the categories/namespaces in scope, and etiquette."
