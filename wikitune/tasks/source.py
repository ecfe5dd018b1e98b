"""The wiki source: where the wiki is, what part of it is in scope, and how to talk to it
politely. A plain model, built from CLI options; ``blocks.source`` wraps it as a Prefect Block,
editable in the Prefect UI."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from wikitune import __version__
from wikitune.tasks.mediawiki import MediaWikiClient

__all__ = ["DEFAULT_USER_AGENT", "WikiSource"]

DEFAULT_USER_AGENT = (
    f"wikitune/{__version__} (https://github.com/wikitune/wikitune; set-your-contact@example.org)"
)


class WikiSource(BaseModel):
    """A MediaWiki and the part of it wikitune follows.

    Scope is the members of ``categories`` in ``namespaces`` (in the wiki's content namespaces,
    usually only 0, when no namespace is set: a category's articles, not its subcategories or
    files), or every page of ``namespaces`` when no category is set. Redirects are never in
    scope.

    Examples:
        >>> source = WikiSource(api_url="https://wiki.example.org/api.php",
        ...                     categories=["Category:VTuber"], bot_user="Me@wikitune")
        >>> client = source.get_client(password=None)
    """

    api_url: str = Field(description="The wiki's api.php URL.")
    name: str = Field(
        default="",
        description="Key of this source in the store (default: the api.php host and path).",
    )
    categories: list[str] = Field(
        default_factory=list, description='Categories in scope, e.g. "Category:VTuber".'
    )
    namespaces: list[int] = Field(
        default_factory=list,
        description=(
            "Namespace numbers in scope (alone), or of the categories' members to follow"
            " (default: the wiki's content namespaces)."
        ),
    )
    user_agent: str = Field(
        default=DEFAULT_USER_AGENT,
        description="User-Agent naming the tool and a contact, as wiki operators ask.",
    )
    request_interval: float = Field(
        default=0.0, ge=0, description="Seconds to wait between requests (1.0 for strict wikis)."
    )
    bot_user: str | None = Field(
        default=None, description='Bot-password user, "User@appid" (Special:BotPasswords).'
    )
    bot_password: SecretStr | None = Field(
        default=None,
        description="The bot password. Left empty, WIKITUNE_BOT_PASSWORD is used.",
    )
    bot_password_secret: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the bot password, instead.",
    )

    @field_validator("categories")
    @classmethod
    def _category_prefix(cls, categories: list[str]) -> list[str]:
        return [c if ":" in c else f"Category:{c}" for c in categories]

    @model_validator(mode="after")
    def _defaults(self) -> WikiSource:
        if not self.categories and not self.namespaces:
            raise ValueError("a wiki source needs at least one category or namespace in scope")
        parts = urlsplit(self.api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an http(s) URL to api.php, got {self.api_url!r}")
        if not self.name:
            self.name = parts.netloc + parts.path
        return self

    def spec(self) -> dict[str, Any]:
        """The settings to remember in the store: everything but the secrets."""
        return self.model_dump(mode="json", include=_FIELDS - {"bot_password"}, exclude_none=True)

    def plain(self) -> WikiSource:
        """This source as the plain model (a Block that wraps it adds fields of its own)."""
        return WikiSource(**self.model_dump(include=_FIELDS))

    def get_client(
        self,
        *,
        password: SecretStr | None,
        maxlag: int = 5,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        timeout: float = 60,
    ) -> MediaWikiClient:
        """A client for this wiki, logged in with ``password`` when a bot user is set (the
        caller finds it: ``flows.sync.bot_password``)."""
        client = MediaWikiClient(
            self.api_url,
            user_agent=self.user_agent,
            request_interval=self.request_interval,
            maxlag=maxlag,
            retries=retries,
            backoff_seconds=backoff_seconds,
            timeout=timeout,
        )
        if self.bot_user:
            if password is None:
                raise ValueError(
                    f"bot user {self.bot_user!r} is set but no password: set"
                    " WIKITUNE_BOT_PASSWORD or bot_password_secret"
                )
            client.login(self.bot_user, password)
        return client


_FIELDS = set(WikiSource.model_fields)
