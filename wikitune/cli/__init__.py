"""The ``wikitune`` command: each command is a thin call into flows/ or storage, in modules by
what it works on (``wiki``, ``training``, ``registry``, ``deploy``, ``demo``); ``common`` holds
the Typer app, the options and how a flow's errors are reported."""

# Importing a module registers its commands, in the order `wikitune --help` lists them.
# isort: off
from wikitune.cli import wiki, training, registry, demo, deploy  # noqa: F401
from wikitune.cli.common import app

# isort: on

__all__ = ["app"]
