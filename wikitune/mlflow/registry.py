"""The MLflow model registry: one registered model per wiki source, its `champion` alias."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from wikitune.mlflow.tracking import use_tracking

__all__ = ["CHAMPION", "champion_adapter", "registered_model_name"]

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Where mlflow.transformers keeps a PEFT adapter inside a logged model.
_PEFT_DIR = "peft"


def registered_model_name(source: str) -> str:
    """The registered model of a wiki source's adapters."""
    return f"wikitune-{source}"


def champion_adapter(tracking_uri: str, source: str, dst: Path) -> str | None:
    """Download the champion adapter of ``source`` into ``dst`` and return its directory, or
    None when the source has no champion yet."""
    use_tracking(tracking_uri)
    name = registered_model_name(source)
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}@{CHAMPION}", dst_path=str(dst)
    )
    adapter = Path(local) / _PEFT_DIR
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"version {version.version} of {name} holds no PEFT adapter")
    log.info("warm start from %s version %s", name, version.version)
    return str(adapter)
