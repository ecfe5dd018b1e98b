"""wikitune keeps a domain language model fresh with its wiki."""

__version__ = "0.1.0"
