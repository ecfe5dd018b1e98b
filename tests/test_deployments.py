"""`wikitune up`, `deploy` and `down` for real: a Prefect server, an MLflow server and a `cpu`
worker, and a `gpu` worker as on a second machine (its own home; the first one's hidden from it);
an edit burst leads to a sync run, the data-ready event, the automation's retrain on the gpu
pool and a new registered version. Headless Chromium shows both UIs."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from helpers import TEST_RECIPE, cli
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from wikitune.demo import INFOBOX_TEMPLATE, SAMPLE_VTUBERS, TOY_MARGINS, sample_page
from wikitune.localwiki import LocalWiki, free_port
from wikitune.mlflow.registry import registered_model_name
from wikitune.services import tagged_processes
from wikitune.tasks import basemodel

SOURCE = "deploywiki"


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 420) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


class PrefectApi:
    """The few REST calls the test needs, straight to the server `up` started."""

    def __init__(self, url: str) -> None:
        self.url = url
        # The server answers 503 when its SQLite database is busy (a training on the same two
        # cores); Prefect's own client retries those, and so does this one. Prefect 3.8's
        # server can also hold SQLite's lock for a whole minute while workers poll
        # (`mark_work_queues_ready`, PrefectHQ/prefect#23051): a request waits that out.
        retry = Retry(
            total=5, backoff_factor=2, status_forcelist=(502, 503, 504), allowed_methods=None
        )
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=retry))

    def get(self, path: str) -> Any:
        response = self.session.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.session.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get(f"/deployments/name/{name}")

    def run_deployment(self, name: str, **parameters: Any) -> str:
        deployment = self.deployment(name)
        run = self.post(
            f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters}
        )
        return str(run["id"])

    def runs_of(self, name: str) -> list[dict[str, Any]]:
        """The deployment's runs, leaving out those its schedule created for later."""
        deployment = self.deployment(name)
        runs = self.post(
            "/flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment["id"]]}}, "sort": "START_TIME_ASC"},
        )
        return [run for run in runs if not run["auto_scheduled"]]

    def finished(self, run_id: str) -> dict[str, Any] | None:
        run = self.get(f"/flow_runs/{run_id}")
        return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


@pytest.fixture
def services(wiki: LocalWiki, world: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`wikitune up` on free ports against the test wiki; `down` however the test ends."""
    home = tmp_path / "home"
    # The base is a directory only this machine has: the gpu worker gets it through MLflow.
    shutil.copytree(world["root"] / "base", home / "base")
    env = {
        "WIKITUNE_BASE_MODEL": str(home / "base"),
        "WIKITUNE_RECIPE_PATH": str(world["recipe"]),
        "WIKITUNE_RETRAIN_THRESHOLD": "120",
        "WIKITUNE_DEVICE": "cpu",
        **TOY_MARGINS,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    # The source is the one the store recorded (as a user who synced first runs `up`): the
    # deployments must carry it, and runs be named after it.
    first_sync = cli(
        *("sync", "--api-url", wiki.api_url, "--category", "Category:VTuber", "--name", SOURCE),
        home=home,
        local=True,
        **env,
    )
    assert first_sync.returncode == 0, first_sync.stderr[-3000:]
    prefect_port, mlflow_port, serve_port = free_port(), free_port(), free_port()
    started = cli(
        "up",
        *("--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)),
        *("--serve-port", str(serve_port), "--no-gpu-worker"),
        *("--timezone", "Asia/Shanghai"),
        home=home,
        local=True,
        **env,
    )
    gpu_machine = tmp_path / "gpu-machine"
    gpu_worker = None
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        record = json.loads((home / "services.json").read_text())
        gpu_worker = _worker_on_another_machine(
            gpu_machine,
            hidden=home,
            prefect_api=f"http://127.0.0.1:{prefect_port}/api",
            mlflow=f"http://127.0.0.1:{mlflow_port}",
            env=env,
        )
        yield {
            "home": home,
            "gpu_machine": gpu_machine,
            "env": env,
            "base": env["WIKITUNE_BASE_MODEL"],
            "stdout": started.stdout,
            "record": record,
            "prefect": PrefectApi(f"http://127.0.0.1:{prefect_port}/api"),
            "prefect_ui": f"http://127.0.0.1:{prefect_port}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "serve": f"http://127.0.0.1:{serve_port}",
        }
    finally:
        if gpu_worker is not None:
            os.killpg(gpu_worker.pid, signal.SIGTERM)
            try:
                gpu_worker.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a Prefect server too busy to answer its goodbye
                os.killpg(gpu_worker.pid, signal.SIGKILL)
                gpu_worker.wait(timeout=60)
        cli("down", home=home, local=True)


def _worker_on_another_machine(
    machine: Path, *, hidden: Path, prefect_api: str, mlflow: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A `gpu` worker as on a second machine: its own WIKITUNE_HOME and PREFECT_HOME, and, in a
    mount namespace of its own, an empty tmpfs over the first machine's home, which it cannot
    see; it reaches the first machine through the Prefect and MLflow servers only, and learns
    the MLflow server's URL from the deployment's parameters, not from its environment."""
    machine.mkdir()
    worker_env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREFECT_") and k != "WIKITUNE_HOME"
        },
        **{k: v for k, v in env.items() if k != "WIKITUNE_MLFLOW_TRACKING_URI"},
        "WIKITUNE_HOME": str(machine),
        "WIKITUNE_MODELS_DIR": str(machine / "models"),
        "PREFECT_HOME": str(machine / "prefect"),
        "PREFECT_API_URL": prefect_api,
        "WIKITUNE_MLFLOW_UI_URL": mlflow,
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    hide = f'mount -t tmpfs tmpfs {shlex.quote(str(hidden))} && exec "$@"'
    worker = [sys.executable, "-m", "wikitune.worker", "start", "--pool", "gpu"]
    with open(machine / "worker.log", "ab") as log:
        return subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", hide, "sh", *worker, "--type", "process"],
            env=worker_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _chromium(url: str, screenshot: Path, shows: Sequence[str] = ()) -> str:
    """Load a page in headless Chromium: save a screenshot and return the rendered DOM. A page
    whose data had not arrived when the DOM was dumped (a busy server: the list still loading)
    is loaded again until it ``shows`` each text, as a person would wait; at most four times."""
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium package is required (scripts/setup.sh installs it)"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    common += ["--window-size=1400,900", "--virtual-time-budget=20000"]
    for _ in range(4):
        subprocess.run(
            [*common, f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
        dom = subprocess.run(
            [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        if all(text in dom for text in shows):
            break
    return dom


def _mlflow_get(base: str, path: str, **params: str) -> Any:
    response = requests.get(f"{base}/api/2.0/mlflow/{path}", params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def test_edit_burst_leads_to_event_retrain_and_new_version(
    services: dict[str, Any], wiki: LocalWiki, tmp_path: Path
) -> None:
    api: PrefectApi = services["prefect"]
    assert "Prefect UI: " + services["prefect_ui"] in services["stdout"]
    assert "MLflow UI:  " + services["mlflow"] in services["stdout"]

    # What deploy applied: pools, the 15-minute sync, the nightly cron, the automation.
    assert api.get("/work_pools/gpu")["concurrency_limit"] == 1
    assert api.get("/work_pools/cpu")["concurrency_limit"] is None
    sync_deployment = api.deployment("pipeline/sync-every-15-minutes")
    assert sync_deployment["schedules"][0]["schedule"]["interval"] == 900
    assert sync_deployment["parameters"]["retrain_when"] == "never"
    nightly = api.deployment("pipeline/retrain")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["schedules"][0]["schedule"]["timezone"] == "Asia/Shanghai"
    assert nightly["parameters"]["retrain_when"] == "new-data"
    assert nightly["global_concurrency_limit"]["limit"] == 1, nightly
    assert nightly["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    # What trains is on the deployment page: the base, the recipe, the source block by name.
    # The base is a directory only this machine has: the deployments name it as published to
    # the MLflow server, where the gpu worker on the other machine fetches it.
    published_base = nightly["parameters"]["base_model"]
    assert published_base.startswith("runs:/") and published_base.endswith("/base")
    assert (
        f"`{services['base']}` (published to MLflow as `{published_base}`)"
        in (nightly["description"])
    )
    for shown in (nightly, api.deployment("retrain/gpu")):
        assert shown["parameters"]["base_model"] == published_base
        shown_sft = shown["parameters"]["recipe"]["sft"]  # as it goes to TRL's SFTConfig
        assert shown_sft["learning_rate"] == TEST_RECIPE["sft"]["learning_rate"]
    assert nightly["parameters"]["source"] == sync_deployment["parameters"]["source"] == SOURCE
    # And what decides: the retrain threshold and the promotion margins, from deploy's settings.
    assert sync_deployment["parameters"]["retrain_threshold"] == 120
    assert nightly["parameters"]["retrain_threshold"] == 120
    margins = nightly["parameters"]["margins"]
    assert api.deployment("retrain/gpu")["parameters"]["margins"] == margins
    # And where runs and versions go: the MLflow server `up` started, which the gpu worker on
    # the other machine has in no environment variable.
    assert nightly["parameters"]["tracking_uri"] == services["mlflow"]
    assert api.deployment("retrain/gpu")["parameters"]["tracking_uri"] == services["mlflow"]
    # And on what the retrains train: the device deploy was given, not the worker's guess.
    assert api.deployment("retrain/gpu")["parameters"]["device"] == "cpu"
    assert margins["max_leakage"] == float(TOY_MARGINS["WIKITUNE_PROMOTE_MAX_LEAKAGE"])
    assert set(margins) == {"min_gain", "stable_tolerance", "min_retention", "max_leakage"}
    assert "wikitune.dataset.ready" in nightly["description"]
    # Which recipe trains, in `up`'s output and on the deployment page.
    assert (
        f"retrains train {services['base']} (published as {published_base}) with the recipe "
        in (services["stdout"])
    )
    assert "with the recipe " in nightly["description"]
    (automation,) = api.post("/automations/filter", {})
    assert automation["trigger"]["expect"] == ["wikitune.dataset.ready"]
    assert automation["actions"][0]["deployment_id"] == nightly["id"]
    assert api.deployment("retrain/gpu")["work_pool_name"] == "gpu"

    # Deploying again, with the same settings, changes nothing.
    again = cli(
        *("deploy", "--timezone", "Asia/Shanghai", "--source-block", SOURCE),
        home=services["home"],
        local=True,
        PREFECT_API_URL=api.url,
        **services["env"],
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "promotions' lock: global concurrency limit wikitune-promotions" in again.stdout
    redeployed = api.deployment("pipeline/retrain")
    assert redeployed["id"] == nightly["id"]
    assert redeployed["parameters"] == nightly["parameters"]
    assert len(api.post("/automations/filter", {})) == 1

    # One page: below the threshold of 120 pairs (one page gives 88), the sync run emits nothing.
    wiki.edit("Template:Infobox VTuber", INFOBOX_TEMPLATE)
    first_page = SAMPLE_VTUBERS[0][1:]
    wiki.edit(first_page[0], sample_page(*first_page))
    wiki.run_jobs()
    quiet = api.run_deployment("pipeline/sync-every-15-minutes")
    assert _wait_for("the first sync", lambda: api.finished(quiet))["state_type"] == "COMPLETED"
    time.sleep(5)
    assert api.runs_of("pipeline/retrain") == []

    # An edit burst beyond the threshold: the next sync emits the event; the automation starts
    # the retrain cycle, which trains, evaluates and promotes on the gpu pool.
    for _, *fields in SAMPLE_VTUBERS[1:3]:
        wiki.edit(fields[0], sample_page(*fields))
    wiki.run_jobs()
    burst = api.run_deployment("pipeline/sync-every-15-minutes")
    assert _wait_for("the burst's sync", lambda: api.finished(burst))["state_type"] == "COMPLETED"
    (cycle,) = _wait_for("the automation's retrain cycle", lambda: api.runs_of("pipeline/retrain"))
    assert cycle["created_by"]["type"] == "AUTOMATION"
    assert api.get(f"/flow_runs/{burst}")["name"] == f"poll-{SOURCE}"

    # Another burst while the cycle runs: its poll sees the cycle in flight and starts none.
    _wait_for("the cycle's training on the gpu pool", lambda: api.runs_of("retrain/gpu"))
    for _, *fields in SAMPLE_VTUBERS[3:5]:
        wiki.edit(fields[0], sample_page(*fields))
    wiki.run_jobs()
    during = api.run_deployment("pipeline/sync-every-15-minutes")
    polled = _wait_for("the poll during the cycle", lambda: api.finished(during))
    assert polled["state_type"] == "COMPLETED"
    assert f"cycle-{SOURCE} is in flight" in polled["state"]["message"], polled["state"]
    event_filter = {"filter": {"event": {"name": ["wikitune.dataset.ready"]}}}
    (ready,) = _wait_for(
        "the event", lambda: api.post("/events/filter", event_filter)["events"], timeout=60
    )
    assert ready["resource"]["prefect.resource.name"] == SOURCE
    assert ready["payload"]["changed_since_champion"] >= 120
    changed = ready["resource"]["wikitune.changed-pairs"]
    assert int(changed) == ready["payload"]["changed_since_champion"]
    # 264 pairs for 20 epochs on the toy model: about 10 minutes on 2 cores. The wait guards
    # against a hang, not a slow machine.
    done = _wait_for("the retrain cycle", lambda: api.finished(cycle["id"]), timeout=1500)
    assert done["state_type"] == "COMPLETED", done["state"]
    assert done["state"]["message"].startswith("promoted v1: fresh facts +"), done["state"]
    # The outcome is the state's name and the run's tags: the runs list shows it unopened.
    assert done["state"]["name"] == "Promoted" and {"promoted", "v1"} <= set(done["tags"])
    assert done["name"] == f"cycle-{SOURCE}"
    # One cycle, one version: the poll during the cycle started no second one.
    time.sleep(5)
    assert [run["id"] for run in api.runs_of("pipeline/retrain")] == [cycle["id"]]
    (gpu_run,) = api.runs_of("retrain/gpu")
    assert gpu_run["state_type"] == "COMPLETED"
    assert gpu_run["parent_task_run_id"] is not None  # a child of the cycle, not a stray run
    snapshot_id = gpu_run["name"].removeprefix("retrain-")
    assert gpu_run["parameters"]["margins"] == margins  # the cycle handed its margins on
    # It ran on the other machine: the snapshot came through the MLflow server into that
    # machine's home, and it trained there; the first machine's home holds no run of it, and
    # its `wikitune models` shows the champion the other machine promoted.
    machine = services["gpu_machine"]
    assert (machine / "snapshots" / snapshot_id / "manifest.json").is_file()
    assert list((machine / "runs").glob(f"{snapshot_id}-*"))
    assert not list((services["home"] / "runs").glob(f"{snapshot_id}-*"))
    # The base, which only the first machine's disk holds, came the same way, once per digest;
    # the training run and its logged model name it so that any machine finds it again.
    published = gpu_run["parameters"]["base_model"]
    assert published == published_base
    assert len(list((machine / "models" / "published").iterdir())) == 1
    digest = basemodel.directory_digest(Path(services["base"]))
    elsewhere = basemodel.resolve_base_model(published, tmp_path / "third", services["mlflow"])
    assert elsewhere.digest == digest and Path(elsewhere.path, "config.json").is_file()
    shown = cli("models", home=services["home"], local=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "champion" in shown.stdout, shown.stdout

    model = registered_model_name(SOURCE)
    versions = _mlflow_get(services["mlflow"], "model-versions/search", filter=f"name='{model}'")
    (version,) = versions["model_versions"]
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["snapshot_id"] == snapshot_id
    # A handful of tags, one of them the Prefect run that trained it; a one-line description.
    # (The server adds live_since and live_on once it serves the version: checked below.)
    assert set(tags) - {"live_since", "live_on"} == {
        *("decision", "verdict", "snapshot_id", "base", "training_scope", "parent_version"),
        "prefect_run",
    }
    assert tags["prefect_run"].endswith(f"/runs/flow-run/{gpu_run['id']}")
    assert version["description"].startswith("Promoted: fresh facts +")
    assert "\n" not in version["description"]
    champion = _mlflow_get(
        services["mlflow"], "registered-models/alias", name=model, alias="champion"
    )
    assert champion["model_version"]["version"] == version["version"]
    # up's server follows the alias: the new champion answers its OpenAI-compatible API.
    assert (
        f"OpenAI-compatible API (the champion of {SOURCE}): {services['serve']}/v1"
        in (services["stdout"])
    )
    deadline = time.monotonic() + 120
    while requests.get(f"{services['serve']}/health", timeout=10).json()["version"] is None:
        assert time.monotonic() < deadline, "the server never loaded the champion"
        time.sleep(1)
    reply = openai.OpenAI(base_url=f"{services['serve']}/v1", api_key="none").chat.completions
    answered = reply.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], temperature=0, max_tokens=8
    )
    assert answered.system_fingerprint == f"{model}/v{version['version']}"
    live = _mlflow_get(
        services["mlflow"], "model-versions/get", name=model, version=version["version"]
    )["model_version"]
    live_tags = {t["key"]: t["value"] for t in live.get("tags", [])}
    assert live_tags["live_on"] == f"{services['serve']}/v1" and live_tags["live_since"]

    def latest_artifact(key: str) -> dict[str, Any]:
        (found,) = api.post("/artifacts/latest/filter", {"artifacts": {"key": {"any_": [key]}}})
        return found

    evaluation = latest_artifact(f"evaluation-{SOURCE}")
    assert "**promote**" in evaluation["description"]
    assert f"{services['mlflow']}/#/experiments/" in evaluation["description"]
    promotion = latest_artifact(f"promotion-{SOURCE}")
    version_page = (
        f"{services['mlflow']}/#/models/{model}/versions/{version['version']}"
        "?workflowType=machine_learning"
    )
    assert f"[{version['version']}]({version_page})" in promotion["data"]
    assert "**promoted**" in promotion["data"]
    snapshot_artifact = latest_artifact(f"snapshot-{SOURCE}")
    assert snapshot_id in snapshot_artifact["data"]
    # The cycle card keeps the decision: polls report under their own key.
    cycle_artifact = latest_artifact(f"cycle-{SOURCE}")
    assert cycle_artifact["flow_run_id"] == cycle["id"]
    poll_artifact = latest_artifact(f"poll-{SOURCE}")
    assert poll_artifact["flow_run_id"] == during
    # What changed is named: each page once, with a link to its diff on the wiki.
    assert "**3 distinct pages**" in cycle_artifact["data"], cycle_artifact["data"]
    for _, title, *_ in SAMPLE_VTUBERS[:3]:
        assert f"| {title} | " in cycle_artifact["data"]
    sync_artifact = latest_artifact(f"sync-{SOURCE}")
    assert "&diff=" in sync_artifact["data"] and SAMPLE_VTUBERS[4][1] in sync_artifact["data"]
    assert cycle_artifact["description"] == f"{SOURCE}: {done['state']['message']}"
    assert f"[{version['version']}]({version_page})" in cycle_artifact["data"]
    # The cycle waited for up's server to swap the new version in, and says when.
    assert f"Live on `wikitune serve` at {services['serve']}/v1 since" in cycle_artifact["data"]
    training = latest_artifact(f"training-{SOURCE}")
    # Done at 100%, early stopping or not, saying how many steps it trained.
    assert training["type"] == "progress" and training["data"] == 100.0
    assert (
        training["description"].startswith("trained ") and "MLflow run [" in training["description"]
    )

    # The MLflow run leads back to the Prefect run that trained it, and says what it is.
    run = _mlflow_get(services["mlflow"], "runs/get", run_id=version["run_id"])["run"]
    run_tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run_tags["prefect.flow_run_id"] == gpu_run["id"]
    assert run_tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{gpu_run['id']}")
    assert run["info"]["run_name"] == f"v1-promoted-{snapshot_id}"
    assert "**promote**" in run_tags["mlflow.note.content"]
    assert run_tags["mlflow.source.name"] == "prefect flow retrain"

    # The gpu pool runs one retrain at a time: two more, started together, do not overlap. They
    # train 10 steps each: two epochs of the snapshot take 7 minutes here.
    # The snapshot as the cycle handed it over: published to the MLflow server, since the gpu
    # machine cannot see the first one's path.
    published = gpu_run["parameters"]["snapshot"]
    assert published.startswith("runs:/") and published.endswith(f"/{snapshot_id}"), published
    extra = [
        api.run_deployment(
            "retrain/gpu",
            snapshot=published,
            promote=False,
            recipe={**TEST_RECIPE, "max_steps": 10, "seed": seed},
        )
        for seed in (1, 2)
    ]
    for run_id in extra:
        assert (
            _wait_for("an extra retrain", lambda run_id=run_id: api.finished(run_id))["state_type"]
            == "COMPLETED"
        )
    spans = sorted((r["start_time"], r["end_time"]) for r in api.runs_of("retrain/gpu"))
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"gpu runs overlap: {spans}"

    # A candidate that lost: one training step leaves it near the bare base, and it is rejected
    # (the burst during the first cycle is still new to the champion). The runs list says so.
    lost_id = api.run_deployment(
        "pipeline/retrain",
        retrain_when="always",
        recipe={**TEST_RECIPE, "max_steps": 1, "eval_steps": 1},
    )
    lost = _wait_for("the losing cycle", lambda: api.finished(lost_id), timeout=900)
    assert lost["state_type"] == "COMPLETED", lost["state"]
    assert lost["state"]["name"] == "Rejected", lost["state"]
    assert lost["state"]["message"].startswith("rejected v2: ")
    assert {"rejected", "v2"} <= set(lost["tags"])
    assert (
        _mlflow_get(services["mlflow"], "registered-models/alias", name=model, alias="champion")[
            "model_version"
        ]["version"]
        == version["version"]
    )

    # The UIs, in a real browser; what they show exists in each server's API.
    screens = tmp_path / "screens"
    screens.mkdir()
    # The runs list shows which cycles promoted and which were rejected, unopened.
    runs_list = _chromium(
        f"{services['prefect_ui']}/runs",
        screens / "prefect-runs.png",
        shows=("Promoted", "Rejected", f"cycle-{SOURCE}"),
    )
    assert "Promoted" in runs_list and "Rejected" in runs_list
    assert f"cycle-{SOURCE}" in runs_list and "stored-source" not in runs_list
    deployments_dom = _chromium(
        f"{services['prefect_ui']}/deployments", screens / "prefect.png", shows=("gpu",)
    )
    for name in ("sync-every-15-minutes", "retrain", "gpu"):
        assert name in deployments_dom
    model_dom = _chromium(
        f"{services['mlflow']}/#/models/{model}?workflowType=machine_learning",
        screens / "mlflow.png",
        shows=("Rejected: fresh facts",),
    )
    assert model in model_dom
    assert "Champion: version 1" in model_dom  # the model's description
    # The versions table: each version's outcome in one line, no raw markdown table.
    assert "Promoted: fresh facts +" in model_dom and "Rejected: fresh facts" in model_dom
    assert "| metric |" not in model_dom and "champion_f1" not in model_dom
    # The cycle run's page shows its outcome; its artifact, the decision.
    cycle_dom = _chromium(
        f"{services['prefect_ui']}/runs/flow-run/{cycle['id']}",
        screens / "cycle.png",
        shows=(done["state"]["message"],),
    )
    assert done["state"]["message"] in cycle_dom
    artifact_dom = _chromium(
        f"{services['prefect_ui']}/artifacts/artifact/{cycle_artifact['latest_id']}",
        screens / "cycle-artifact.png",
        shows=("Decision: ",),
    )
    assert "Decision: " in artifact_dom and "promote" in artifact_dom
    # The experiment's runs table (model-training view) and the run's link to its Prefect run.
    experiment_url = (
        f"{services['mlflow']}/#/experiments/{run['info']['experiment_id']}/runs"
        "?workflowType=machine_learning"
    )
    assert experiment_url in services["stdout"]  # `up` printed it
    runs_dom = _chromium(
        experiment_url, screens / "mlflow-runs.png", shows=(f"v1-promoted-{snapshot_id}",)
    )
    assert f"v1-promoted-{snapshot_id}" in runs_dom
    run_dom = _chromium(
        f"{services['mlflow']}/#/experiments/{run['info']['experiment_id']}/runs/"
        f"{version['run_id']}",
        screens / "mlflow-run.png",
        shows=(run_tags["prefect.flow_run_url"],),
    )
    assert run_tags["prefect.flow_run_url"] in run_dom
    assert _mlflow_get(services["mlflow"], "registered-models/get", name=model)
    for png in screens.glob("*.png"):
        assert png.stat().st_size > 20_000, f"{png} looks blank"

    # `promote --run` on the first machine, in the shell `up` set up, for a run the gpu machine
    # trained and did not promote: the worker's snapshot path is hidden here, so the evaluation
    # reads the snapshot the cycle published; the alias moves under the Prefect server's lock.
    from mlflow.tracking import MlflowClient

    (extra_run,) = MlflowClient(services["mlflow"]).search_runs(
        [run["info"]["experiment_id"]], filter_string=f"tags.`prefect.flow_run_id` = '{extra[0]}'"
    )
    assert not Path(extra_run.data.params["snapshot_location"]).is_relative_to(services["home"])
    hide = f'mount -t tmpfs tmpfs {shlex.quote(str(services["gpu_machine"]))} && exec "$@"'
    promoted = subprocess.run(
        [
            *("unshare", "--mount", "sh", "-c", hide, "sh", sys.executable, "-m"),
            *("wikitune.cli", "promote", "--run", extra_run.info.run_id),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            **services["env"],
            **services["record"]["env"],
            "WIKITUNE_HOME": str(services["home"]),
            "COLUMNS": "200",
        },
    )
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert re.search(r"version 3: (promoted|rejected);", promoted.stdout), promoted.stdout

    # down stops every process up started, and the flow runs its workers started.
    services_id = services["record"]["id"]
    assert tagged_processes(services_id)
    stopped = cli("down", home=services["home"], local=True)
    assert stopped.returncode == 0, stopped.stderr
    assert tagged_processes(services_id) == []
    assert not (services["home"] / "services.json").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(services["prefect_ui"], timeout=5)
