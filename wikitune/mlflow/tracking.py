"""MLflow tracking for training runs: the experiment, the run (resumable by id), parameters,
step metrics, the snapshot as a dataset input, sample generations, and the adapter as a logged
model that references its base model instead of copying it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.tracking import MlflowClient

from wikitune.config import source_slug

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = [
    "ADAPTER_ARTIFACT",
    "ensure_experiment",
    "experiment_name",
    "experiment_url",
    "get_run",
    "log_adapter",
    "log_evaluation",
    "log_metrics",
    "log_params",
    "log_sample_generations",
    "log_snapshot_inputs",
    "metric_key",
    "name_run",
    "run_link",
    "set_tags",
    "training_run",
    "use_tracking",
]

ADAPTER_ARTIFACT = "adapter"
MODEL_URI_TAG = "wikitune.model_uri"
SOURCE_TAG = "wikitune.source"
DESCRIPTION_TAG = "mlflow.note.content"
# MLflow's UI opens an experiment of this kind in its model-training view, not the GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# The metrics a person reviews; the trainer's other counters (runtime, samples per second,
# learning rate, gradient norm, epoch...) go under "trainer/", a section of their own in the UI.
OWN_METRICS = {
    "loss",
    "train_loss",
    "eval_wiki_loss",
    "final_eval_wiki_loss",
    "eval_fresh_loss",
    "final_eval_fresh_loss",
    "tokens_per_second",
    "mean_token_accuracy",
    "eval_wiki_mean_token_accuracy",
}
# MLflow's own limit on a parameter value's length.
_MAX_PARAM_LENGTH = 6000


def use_tracking(tracking_uri: str) -> None:
    """Point MLflow's tracking and registry at ``tracking_uri`` for this process."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def metric_key(name: str) -> str:
    """Where a training metric is logged: its own name, or under ``trainer/``."""
    return name if name in OWN_METRICS else f"trainer/{name}"


MODEL_TRAINING_VIEW = "?workflowType=machine_learning"
"""Appended to an MLflow UI link: open it in the model-training view, not the GenAI one."""


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI's model-training view."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs{MODEL_TRAINING_VIEW}"


def ensure_experiment(tracking_uri: str, source: str, artifact_root: Path | None = None) -> str:
    """The id of the source's experiment, created (in the model-training view) if missing."""
    use_tracking(tracking_uri)
    return _experiment_id(experiment_name(source), artifact_root if _local(tracking_uri) else None)


def _local(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri


def experiment_name(source: str) -> str:
    """The experiment of a source's training runs (and its registered model's name): the
    source's slug, since MLflow's UI reads '/' in an experiment name as a folder."""
    return f"wikitune-{source_slug(source)}"


def _experiment_id(name: str, artifact_root: Path | None) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if "mlflow.experimentKind" not in experiment.tags:
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


@contextmanager
def training_run(
    *,
    tracking_uri: str,
    experiment: str,
    artifact_root: Path | None,
    run_name: str,
    run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """An active MLflow run (a new one, or ``run_id`` resumed) that ends FINISHED when the block
    completes and FAILED, with the reason as the ``failure_reason`` tag, when it raises."""
    use_tracking(tracking_uri)
    # A tracking server chooses its own artifact store; a local SQLite store uses ours.
    experiment_id = _experiment_id(experiment, artifact_root if _local(tracking_uri) else None)
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id,
        run_name=None if run_id else run_name,
        tags=dict(tags or {}) if not run_id else None,
    )
    try:
        yield run.info.run_id
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"[:5000]
        mlflow.set_tag("failure_reason", reason)
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters of the active run; values already logged with the same value are skipped
    (a resumed run logs them again)."""
    run = mlflow.active_run()
    assert run is not None, "log_params needs an active run"
    existing = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {
        key: str(value)[:_MAX_PARAM_LENGTH]
        for key, value in params.items()
        if value is not None and key not in existing
    }
    if fresh:
        mlflow.log_params(fresh)


def set_tags(tags: Mapping[str, str]) -> None:
    """Tag the active run."""
    mlflow.set_tags(dict(tags))


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log training metrics of the active run, the trainer's counters under ``trainer/``."""
    mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_snapshot_inputs(
    splits: Mapping[str, Any], *, location: str, snapshot_id: str, digest: str
) -> None:
    """Log each split (a `datasets.Dataset`) of the snapshot as a dataset input, named after the
    snapshot and carrying its digest, with the split as the context."""
    for context, dataset in splits.items():
        mlflow.log_input(
            mlflow.data.from_huggingface(
                dataset,
                source=f"{location.rstrip('/')}/{context}.jsonl",
                name=f"{snapshot_id}/{context}",
                digest=digest[:32],
            ),
            context=context,
        )


def log_sample_generations(rows: Sequence[Mapping[str, Any]]) -> None:
    """A table of eval questions, references and the trained model's answers."""
    if rows:
        mlflow.log_table(data=_columns(rows), artifact_file="sample_generations.json")


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows of one shape as the columns MLflow's ``log_table`` takes."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def log_adapter(
    model: Any, tokenizer: Any, *, base: Mapping[str, str], pip_requirements: Sequence[str]
) -> str:
    """Log the PEFT adapter as a `transformers` model of the active run; its base's weights
    are never copied. MLflow references a local base by its path on this machine, a hub base by
    its id; the model's metadata names the base as any machine finds it (``base.params()``: the
    spec, e.g. a packaged name or a base published to the tracking server, and the digest), for
    ``mlflow.transformers.load_model(uri, base_model_path=...)`` elsewhere. Returns the model
    URI."""
    where = base["base_model"]
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=ADAPTER_ARTIFACT,
        task="text-generation",
        base_model_path=os.path.abspath(where) if Path(where).is_dir() else None,
        pip_requirements=list(pip_requirements),
        metadata={f"wikitune.{key}": value for key, value in base.items()},
    )
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def get_run(tracking_uri: str, run_id: str) -> Run:
    use_tracking(tracking_uri)
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise LookupError(f"no MLflow run {run_id!r} in {tracking_uri}") from error


def log_evaluation(
    tracking_uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    table: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]] = (),
    report: str,
    tags: Mapping[str, str],
) -> None:
    """Add an evaluation's metrics, table (``evaluation.json``), the two models' answer to each
    question (``evaluation_answers.json``) and report (``evaluation.md``, also the run's
    description) to a finished run."""
    use_tracking(tracking_uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    links = run.data.tags.get("prefect.flow_run_url")
    description = report + (f"\n\nTrained by Prefect flow run {links}" if links else "")
    client.set_tag(run_id, DESCRIPTION_TAG, description)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for rows, artifact in ((table, "evaluation.json"), (answers, "evaluation_answers.json")):
        if rows:
            client.log_table(run_id, data=_columns(rows), artifact_file=artifact)
    client.log_text(run_id, report, "evaluation.md")


def name_run(tracking_uri: str, run_id: str, name: str) -> None:
    """Rename a run, e.g. after the registry's decision: ``v3-promoted-<snapshot>``."""
    use_tracking(tracking_uri)
    MlflowClient().update_run(run_id, name=name)


def run_link(ui_url: str | None, run: Run) -> str:
    """The run's page in the MLflow UI when its URL is known, else ``runs:/<id>``."""
    if not ui_url:
        return f"runs:/{run.info.run_id}"
    experiment, run_id = run.info.experiment_id, run.info.run_id
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}{MODEL_TRAINING_VIEW}"
