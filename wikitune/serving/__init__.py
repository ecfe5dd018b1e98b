"""`wikitune serve`: the champion behind an OpenAI-compatible endpoint that follows the registry
(``engine``: loading a version and batching generation; ``follow``: the alias and the swap;
``api``: the HTTP side)."""
