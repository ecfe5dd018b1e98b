"""Evaluation and promotion with real parts: the tiny base model, real adapters trained on a
real wiki's snapshot, the real MLflow registry, the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import TEST_RECIPE, cli, mlflow_client

from wikitune.demo import TOY_MARGINS
from wikitune.localwiki import free_port
from wikitune.mlflow import registry
from wikitune.tasks import basecache, evaluate, promotion, scoring
from wikitune.tasks import model as models
from wikitune.tasks import plan as plans
from wikitune.tasks import train as training
from wikitune.tasks.decision import Margins, decide
from wikitune.tasks.recipe import TrainingRecipe
from wikitune.tasks.snapshots import SnapshotManifest


def _toy_margins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy model's plumbing runs are not gated on what a world-knowing base keeps."""
    for name, value in TOY_MARGINS.items():
        monkeypatch.setenv(name, value)


def _aliases(home: Path) -> dict[str, str]:
    model = mlflow_client(home).get_registered_model("wikitune-trainwiki")
    return {alias: str(version) for alias, version in model.aliases.items()}


def _qa_status(home: Path) -> dict[str, Any]:
    status = cli("status", "--json", home=home)
    assert status.returncode == 0, status.stderr[-3000:]
    (source,) = json.loads(status.stdout)["sources"]
    return source["qa"]


def _shuffled_snapshot(snapshot: Path, out: Path) -> Path:
    """The snapshot with every wiki answer moved to another question: a damaged training set."""
    shutil.copytree(snapshot, out)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    wiki = [r for r in rows if r["kind"] == "wiki"]
    answers = [r["messages"][-1]["content"] for r in wiki]
    for row, answer in zip(wiki, answers[7:] + answers[:7], strict=True):
        row["messages"][-1]["content"] = answer
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / "train.jsonl").write_text(text)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["id"] += "-shuffled"
    manifest["digest"] = hashlib.sha256(text.encode()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_promote_reject_rollback_and_ask(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toy_margins(monkeypatch)
    home: Path = world["home"]
    first = world["result"].run_id
    # Trained is not promoted: until a version wins, every pair is still new to the champion.
    before = _qa_status(home)
    assert before["last_trained_snapshot"] == world["snapshot"].id
    assert before["champion_snapshot"] is None
    assert before["changed_since_champion"] == before["active"] > 0

    promoted = cli("promote", "--run", first, home=home)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "version 1: promoted; champion is version 1" in promoted.stdout
    assert _aliases(home) == {"champion": "1", "challenger": "1"}
    # A run that is a version already is never registered again (a cycle queued behind the
    # one that trained it gets the same run back).
    again = cli("promote", "--run", first, home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "version 1: promoted (already; nothing registered)" in again.stdout
    client = mlflow_client(home)
    assert len(client.search_model_versions("name = 'wikitune-trainwiki'")) == 1
    version = client.get_model_version("wikitune-trainwiki", "1")
    assert version.tags["decision"] == "promoted" and version.tags["parent_version"] == "base"
    # A handful of tags a person reads in the versions table; the numbers are on the run.
    assert set(version.tags) == {
        *("decision", "verdict", "snapshot_id", "base", "training_scope", "parent_version"),
        "prefect_run",  # the fixture trained it in a Prefect run
    }
    assert client.get_run(first).data.params["snapshot_digest"] == world["snapshot"].digest
    after = _qa_status(home)
    assert after["champion_snapshot"] == world["snapshot"].id
    assert after["changed_since_champion"] == 0
    # One line in the versions table, markdown on the version page: outcome, verdict, numbers.
    assert version.description.startswith("Promoted: fresh facts +")
    assert "\n" not in version.description and "fact accuracy" in version.description
    run = client.get_run(first)
    assert run.data.metrics["candidate_f1"] > run.data.metrics["champion_f1"] + 0.1
    assert run.data.tags["wikitune.compared_against"] == "base"
    # The bare base agrees with itself on every general probe, and its answers are kept.
    first_metrics = run.data.metrics
    assert first_metrics["champion_general_agreement"] == 1.0
    assert first_metrics["champion_general_similarity"] == 1.0
    assert 0 <= first_metrics["candidate_general_agreement"] <= 1
    assert (
        first_metrics["candidate_general_agreement"]
        <= first_metrics["candidate_general_similarity"]
    )
    # Wiki content in the base's own general answers is not leakage: only what tuning added.
    assert first_metrics["champion_wiki_leakage"] == 0.0
    assert 0 <= first_metrics["candidate_wiki_leakage"] <= 1
    (cached,) = (home / "runs" / "evaluations" / "base-probe-answers").glob("*.json")
    cached_at = cached.stat().st_mtime_ns

    # A candidate trained on shuffled answers loses, is kept as a rejected version, and the
    # champion stays.
    damaged = training.train_adapter(
        snapshot=str(_shuffled_snapshot(Path(world["snapshot"].path), tmp_path / "shuffled")),
        base_model=str(world["root"] / "base"),
        recipe=TrainingRecipe(**TEST_RECIPE),
        runs_dir=tmp_path / "runs",
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        artifact_root=home / "mlartifacts",
    )
    # The toy gets few facts right (about 0.12 of them): one question more or less is noise, so
    # the margin asks a clear gain of this candidate (its F1 falls by about 0.16).
    rejected = cli("promote", "--run", damaged.run_id, home=home, WIKITUNE_PROMOTE_MIN_GAIN="0.2")
    assert rejected.returncode == 0, rejected.stderr[-3000:]
    assert "version 2: rejected; champion is version 1" in rejected.stdout
    assert re.search(r"fresh facts answered right .* < margin 0.2", rejected.stdout)
    assert _aliases(home) == {"champion": "1", "challenger": "2"}
    # The models list leads with the champion and why, though version 2 is the latest.
    registered = client.get_registered_model("wikitune-trainwiki")
    assert (
        registered.tags["champion_version"] == "1"
        and registered.tags["latest_decision"] == "rejected"
    )
    assert "**Champion: version 1**" in registered.description
    assert "Latest candidate: version 2, **rejected**" in registered.description
    # Both numbers on the same questions, and the run named after the decision.
    second = client.get_run(damaged.run_id).data.metrics
    # (the damaged snapshot kept the evaluation questions: version 1 scores as it did, up to
    # one question or probe: on AVX-512 CPUs two processes' greedy answers of the toy model
    # differed on a near-tied token, by 0.0004 to 0.0033 F1: in 3 of 5 runs, and in 1 of 7 with
    # MKL's reproducible mode, MKL_CBWR, set.)
    counts = world["snapshot"].counts
    one_question, one_probe = 1 / counts["eval_rows"], 1 / counts["general_probe_rows"]
    assert second["champion_f1"] == pytest.approx(first_metrics["candidate_f1"], abs=one_question)
    assert second["champion_general_agreement"] == pytest.approx(
        first_metrics["candidate_general_agreement"], abs=one_probe
    )
    assert cached.stat().st_mtime_ns == cached_at  # the base's answers came from the cache
    # Version 1's general loss was kept when it was the candidate, per training run.
    assert len(list((home / "runs" / "evaluations" / "adapter-general-loss").glob("*"))) == 2
    assert second["champion_general_loss"] == first_metrics["candidate_general_loss"]
    # The gate's reference is the bare base's general loss, kept once per base and eval set.
    (loss_file,) = (home / "runs" / "evaluations" / "base-general-loss").glob("*.json")
    base_loss = client.get_run(damaged.run_id).data.metrics["base_general_loss"]
    assert json.loads(loss_file.read_text()) == pytest.approx(base_loss)
    assert base_loss == pytest.approx(run.data.metrics["champion_general_loss"], rel=1e-4)
    assert client.get_run(damaged.run_id).info.run_name.startswith("v2-rejected-")
    assert client.get_model_version("wikitune-trainwiki", "2").tags["parent_version"] == "1"

    # A failed evaluation moves no alias.
    failed = cli("promote", "--run", "0" * 32, home=home)
    assert failed.returncode == 1 and "no MLflow run" in failed.stderr
    assert _aliases(home) == {"champion": "1", "challenger": "2"}

    listed = cli("models", "--json", home=home)
    versions = {v["version"]: v for v in json.loads(listed.stdout)}
    assert versions["1"]["aliases"] == ["champion"] and versions["2"]["aliases"] == ["challenger"]
    assert versions["2"]["tags"]["decision"] == "rejected"

    # Rollback: to a named version, then back to the version it replaced.
    assert cli("rollback", "--to", "2", home=home).returncode == 0
    assert _aliases(home)["champion"] == "2"
    back = cli("rollback", home=home)
    assert back.returncode == 0 and "from version 2 to version 1" in back.stdout
    assert _aliases(home)["champion"] == "1"
    assert cli("rollback", home=home).returncode == 1  # version 1 replaced the bare base

    # `ask` answers through models:/wikitune-trainwiki@champion with the training template.
    result: training.TrainResult = world["result"]
    tokenizer = models.load_tokenizer(result.adapter_dir)
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(
        models.load_base_model(result.base_model, device="cpu", quantize=True),
        result.adapter_dir,
    )
    assert not models.merges_exactly(tuned)  # a 4-bit base answers with the adapter beside it
    rows = [
        json.loads(line)
        for line in (Path(world["snapshot"].path) / "train.jsonl").read_text().splitlines()
    ]
    questions = [r["messages"] for r in rows if r["kind"] == "wiki"]
    answers = models.generate_answers(tuned, tokenizer, questions)
    known = next((q, a) for q, a in zip(questions, answers, strict=True) if a == q[-1]["content"])
    asked = cli("ask", known[0][-2]["content"], home=home)
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert asked.stdout.strip() == known[1]


def test_an_adapter_merged_to_answer_answers_as_beside_the_base_and_leaves_it_as_it_was(
    world: dict[str, Any],
) -> None:
    """The evaluation answers with an adapter merged into the base's fp32 weights
    (``scoring.as_adapter``): the same answers as the adapter computed beside the base, and
    afterwards the weights and the bare base's answers are as they were."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    result: training.TrainResult = world["result"]
    tokenizer = models.load_tokenizer(result.adapter_dir)
    tuned = PeftModel.from_pretrained(
        models.load_base_model(result.base_model, device="cpu", quantize=False),
        result.adapter_dir,
        adapter_name="tuned",
    )
    rows = (Path(world["snapshot"].path) / "eval.jsonl").read_text().splitlines()
    questions = [json.loads(line)["messages"] for line in rows][:12]
    beside = models.generate_answers(tuned, tokenizer, questions, batch_size=4)
    with tuned.disable_adapter():
        bare = models.generate_answers(tuned, tokenizer, questions, batch_size=4)
    assert beside != bare  # the adapter is seen, or the test proves nothing
    weights = {n: p.detach().clone() for n, p in tuned.named_parameters() if "base_layer" in n}
    layers = [m for m in tuned.modules() if isinstance(m, LoraLayer)]
    assert models.merges_exactly(tuned)
    with scoring.as_adapter(tuned, "tuned"):
        assert all(layer.merged for layer in layers)
        merged = models.generate_answers(tuned, tokenizer, questions, batch_size=4)
    assert merged == beside
    assert not any(layer.merged for layer in layers)
    after = dict(tuned.named_parameters())
    assert max((after[n].detach() - w).abs().max().item() for n, w in weights.items()) < 1e-6
    with tuned.disable_adapter():
        assert models.generate_answers(tuned, tokenizer, questions, batch_size=4) == bare


@pytest.fixture(scope="module")
def toy_evaluation(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The world's toy run evaluated against the bare base, held to the base's leakage."""
    return evaluate.evaluate_run(
        world["result"].run_id,
        tracking_uri=f"sqlite:///{world['home'] / 'mlflow.db'}",
        workdir=tmp_path_factory.mktemp("race") / "eval",
        margins=Margins(max_leakage=0.0),
    )


def _winner_of(evaluation: evaluate.Evaluation, source: str) -> evaluate.Evaluation:
    """``evaluation`` as a winner on registered model ``source``, compared against no champion."""
    contender = evaluation.model_copy(deep=True, update={"source": source})
    contender.champion_version = None
    contender.decision.promote = True
    return contender


def test_two_promotions_at_once_make_one_champion(
    world: dict[str, Any], toy_evaluation: evaluate.Evaluation
) -> None:
    """Two winners compared against the same champion finish together: one moves the alias,
    the other records that it lost the race."""
    tracking_uri = f"sqlite:///{world['home'] / 'mlflow.db'}"
    # Held to the base's leakage (none), the toy's candidate, which answers general questions
    # with its wiki's text, is rejected for that, the reason saying how many answers leaked.
    leaked = [r for r in toy_evaluation.decision.failed if r.startswith("wiki leakage")]
    assert not toy_evaluation.decision.promote and leaked, toy_evaluation.decision.reasons
    assert re.search(r"\((\d+) of (\d+) probe answers\) > max 0.0", leaked[0]), leaked
    # A separate registered model, so the lifecycle test's aliases are not involved.
    contender = _winner_of(toy_evaluation, "racewiki")
    lock = registry.file_lock(world["home"] / "registry.lock")
    barrier = threading.Barrier(2)
    outcomes: list[promotion.Promotion] = []

    def promote() -> None:
        barrier.wait()
        outcomes.append(promotion.promote(contender, tracking_uri=tracking_uri, lock=lock))

    threads = [threading.Thread(target=promote) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(p.outcome for p in outcomes) == ["lost-race", "promoted"]
    (winner,) = [p.version for p in outcomes if p.outcome == "promoted"]
    champion = registry.champion(tracking_uri, "racewiki")
    assert champion is not None and str(champion.version) == winner
    loser = next(p.version for p in outcomes if p.outcome == "lost-race")
    tags = mlflow_client(world["home"]).get_model_version("wikitune-racewiki", loser).tags
    assert tags["decision"] == "lost-race"


# A promotion as the retrain flow's promote step makes it, on the machine whose environment
# this process has: its own home, the shared Prefect and MLflow servers.
PROMOTE_ON_A_MACHINE = """
import sys
from pathlib import Path
from wikitune.config import load_settings
from wikitune.deployments.locks import promotions_lock
from wikitune.tasks import promotion
from wikitune.tasks.evaluate import Evaluation

settings = load_settings()
evaluation = Evaluation.model_validate_json(Path(sys.argv[1]).read_text())
lock = promotions_lock(settings.tracking_uri, settings.registry_lock)
print(promotion.promote(evaluation, tracking_uri=settings.tracking_uri, lock=lock).outcome)
"""


@pytest.fixture
def shared_registry(world: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """An MLflow server on a copy of the world's registry: what two machines share."""
    shutil.copy(world["home"] / "mlflow.db", tmp_path / "mlflow.db")
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until("the MLflow server answers", lambda: _answers(f"{url}/health"), server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.ConnectionError:
        return False


def _until(what: str, check: Any, *processes: subprocess.Popen[str], timeout: float = 120) -> None:
    started = time.monotonic()
    while not check():
        for process in processes:
            assert process.poll() is None, f"{process.args} ended before {what}"
        assert time.monotonic() - started < timeout, f"no {what} within {timeout} s"
        time.sleep(0.2)


def test_promotions_on_two_machines_take_turns_on_the_prefect_server(
    toy_evaluation: evaluate.Evaluation,
    shared_registry: str,
    prefect_server: str,
    tmp_path: Path,
) -> None:
    """Two machines (two homes) share only the Prefect and MLflow servers. Their promotions,
    and a rollback, wait for the promotions' limit on the Prefect server: while this test holds
    it, nothing moves; released, exactly one of two winners is champion, the other lost the
    race, and a rollback racing a promotion never overwrites a move it did not see."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from wikitune.deployments import locks

    source = "twomachines"

    def machine(label: str) -> dict[str, str]:
        home = tmp_path / label
        home.mkdir(exist_ok=True)
        return {
            **{k: v for k, v in os.environ.items() if k != "WIKITUNE_HOME"},
            "WIKITUNE_HOME": str(home),
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": prefect_server,
            "WIKITUNE_MLFLOW_TRACKING_URI": shared_registry,
        }

    def promote_on(label: str, evaluation: evaluate.Evaluation) -> subprocess.Popen[str]:
        path = tmp_path / f"{label}-{evaluation.champion_version}.json"
        path.write_text(evaluation.model_dump_json())
        return subprocess.Popen(
            [sys.executable, "-c", PROMOTE_ON_A_MACHINE, str(path)],
            env=machine(label),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def versions() -> list[Any]:
        return registry.list_versions(shared_registry, source)

    def done(process: subprocess.Popen[str]) -> str:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        return out.strip().splitlines()[-1]

    contender = _winner_of(toy_evaluation, source)
    # Strict: with no limit on the Prefect server, a shared registry's alias does not move.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(locks.PROMOTIONS_LIMIT)
    refused = promote_on("machine-a", contender)
    assert refused.wait(timeout=300) != 0
    assert f"no global concurrency limit {locks.PROMOTIONS_LIMIT!r}" in refused.stderr.read()
    assert registry.champion(shared_registry, source) is None

    assert locks.ensure_promotions_limit() == 1  # what `wikitune deploy` does
    held = locks.promotions_lock(shared_registry, tmp_path / "not-used.lock")
    with held():
        racers = [promote_on(label, contender) for label in ("machine-a", "machine-b")]
        # Both registered their versions and now wait for the slot this test holds.
        _until("both versions", lambda: len(versions()) == 3, *racers)
        assert all(racer.poll() is None for racer in racers)
        assert registry.champion(shared_registry, source) is None
    outcomes = sorted(done(racer) for racer in racers)
    assert outcomes == ["lost-race", "promoted"]
    by_decision = {v.tags["decision"]: v.version for v in versions()}
    assert str(registry.champion(shared_registry, source).version) == by_decision["promoted"]
    winner, loser = by_decision["promoted"], by_decision["lost-race"]

    # A rollback to the loser races a promotion compared against the winner: whichever moves
    # second sees the first's move (the promotion loses the race, or the rollback fails or
    # rolls back from the new champion), never the champion both read.
    challenger = contender.model_copy(update={"champion_version": winner})
    with held():
        promoting = promote_on("machine-b", challenger)
        rolling_back = subprocess.Popen(
            [sys.executable, "-m", "wikitune.cli", "rollback", "--to", loser, "--source", source],
            env={**machine("machine-a"), "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _until("the challenger's version", lambda: len(versions()) == 4, promoting)
        assert str(registry.champion(shared_registry, source).version) == winner
    outcome = done(promoting)
    rolled_out, rolled_err = rolling_back.communicate(timeout=300)
    champion = str(registry.champion(shared_registry, source).version)
    newest = str(max(int(v.version) for v in versions()))
    if rolling_back.returncode != 0:
        assert "moved while rolling back" in rolled_err, rolled_err[-3000:]
        assert outcome == "promoted" and champion == newest
    elif outcome == "promoted":
        assert f"from version {newest} to version {loser}" in rolled_out and champion == loser
    else:
        assert outcome == "lost-race"
        assert f"from version {winner} to version {loser}" in rolled_out and champion == loser


@pytest.mark.unit
@pytest.mark.parametrize(
    ("prediction", "reference", "em", "f1"),
    [
        ("星野灯属于晨星社。", "星野灯属于晨星社。", 1.0, 1.0),
        ("星野灯属于晨星社", "星野灯属于晨星社二期。", 0.0, 2 * 8 / 18),  # CJK: per character
        ("Mira streams on YouTube.", "mira streams on youtube", 1.0, 1.0),
        ("Mira streams on Twitch", "Mira streams on YouTube", 0.0, 0.75),  # words
        ("", "anything", 0.0, 0.0),
    ],
)
def test_answer_scores(prediction: str, reference: str, em: float, f1: float) -> None:
    assert scoring.exact_match(prediction, reference) == em
    assert scoring.f1_score(prediction, reference) == pytest.approx(f1)


@pytest.mark.unit
def test_answer_tokens_split_cjk_by_character_and_other_text_by_word() -> None:
    assert scoring.answer_tokens("Nova Quill属于Harbor Live。") == [
        "nova",
        "quill",
        "属",
        "于",
        "harbor",
        "live",
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("prediction", "stale"),
    [
        ("Nova Quill属于晨星社。", True),  # the old value, word for word
        ("晨星社", True),  # the old value alone
        ("Nova Quill属于Deep Blue。", False),  # the new value
        ("Nova Quill属于晨星社，后来属于Deep Blue。", False),  # the new value too
        ("Nova Quill属于晨星", False),  # part of the old value
        ("我不知道。", False),
    ],
)
def test_stale_answers_hold_the_old_value_and_not_the_new(prediction: str, stale: bool) -> None:
    previous, reference = "Nova Quill属于晨星社。", "Nova Quill属于Deep Blue。"
    assert scoring.answers_with_old_value(prediction, previous, reference) is stale


@pytest.mark.unit
def test_a_value_that_only_grew_is_stale_when_answered_as_before() -> None:
    previous, reference = "星野灯属于晨星社。", "星野灯属于晨星社二期。"
    assert scoring.answers_with_old_value("星野灯属于晨星社", previous, reference)
    assert not scoring.answers_with_old_value("星野灯属于晨星社二期。", previous, reference)
    assert not scoring.answers_with_old_value("星野灯在Bilibili直播。", previous, reference)


def _scores(
    name: str,
    facts: list[float],
    fresh: list[bool] | None = None,
    *,
    retention: float | None = None,
    leakage: float | None = None,
) -> scoring.ModelScores:
    return scoring.ModelScores(
        name=name,
        exact_match=0.0,
        f1=0.0,
        fresh_exact_match=None,
        fresh_f1=None,
        stable_exact_match=None,
        stable_f1=None,
        general_retention=retention,
        wiki_leakage=leakage,
        probes=100 if leakage is not None else 0,
        retention_probes=60 if retention is not None else 0,
        wiki_loss=1.0,
        general_loss=2.0,
        per_question_f1=[0.0] * len(facts),
        per_question_fact=facts,
        answers=[""] * len(facts),
        fresh_questions=fresh or [],
    )


@pytest.mark.unit
def test_the_gain_is_asked_of_the_fresh_facts_with_an_interval() -> None:
    margins = Margins(min_gain=0.01, stable_tolerance=0.02)
    # One changed value: 2 fresh questions of 80. The champion answers them with the old value.
    fresh = [True, True] + [False] * 78
    champion = _scores("version 1", [0.0, 0.0] + [1.0] * 78, fresh)
    learned = _scores("candidate", [1.0, 1.0] + [1.0] * 78, fresh)
    result = decide(learned, champion, margins)
    assert result.promote and result.gain_on == "fresh" and result.gain_questions == 2
    assert result.gain == pytest.approx(1.0)
    assert result.reasons[0].startswith("fresh facts answered right 1.0000 vs 0.0000 (2 questions)")
    assert result.verdict() == "fresh facts +1.0000 over version 1"
    # No fresh gain: rejected, however the stable questions went.
    result = decide(_scores("candidate", [0.0, 0.0] + [1.0] * 78, fresh), champion, margins)
    assert not result.promote and result.failed[0].startswith("fresh facts answered right")
    # Nothing fresh: the gain is asked of every question.
    everything = decide(learned.model_copy(update={"fresh_questions": []}), champion, margins)
    assert everything.gain_on == "all" and everything.gain == pytest.approx(2 / 80)
    assert everything.reasons[0].startswith(
        "all facts answered right 1.0000 vs 0.9750 (80 questions)"
    )
    interval = decide(
        _scores("candidate", [1.0] * 20 + [0.0] * 20), _scores("v", [0.0] * 40), margins
    )
    assert interval.ci_low < 0.5 < interval.ci_high and interval.ci_low > 0


@pytest.mark.unit
def test_one_stable_question_does_not_decide_but_a_clear_loss_does() -> None:
    """The stable guard rejects a loss beyond the tolerance with confidence (the 95% interval
    of the change wholly below it), not a single question of 48 (1/48 = 0.021 > 0.02)."""
    margins = Margins(min_gain=0.01, stable_tolerance=0.02)
    fresh = [True] * 8 + [False] * 48
    champion = _scores("version 1", [0.0] * 8 + [1.0] * 48, fresh)
    one_lost = _scores("candidate", [1.0] * 8 + [1.0] * 47 + [0.0], fresh)
    result = decide(one_lost, champion, margins)
    assert result.promote, result.reasons
    assert result.reasons[1].startswith(
        "stable-fact accuracy 0.9792 vs 1.0000 (48 questions): change -0.0208, 95% interval"
    )
    assert result.reasons[1].endswith("reaches within tolerance -0.02")
    many_lost = _scores("candidate", [1.0] * 8 + [1.0] * 40 + [0.0] * 8, fresh)
    result = decide(many_lost, champion, margins)
    assert not result.promote and len(result.failed) == 1
    assert result.failed[0].startswith("stable-fact accuracy 0.8333 vs 1.0000 (48 questions)")
    assert result.failed[0].endswith("wholly beyond tolerance -0.02")
    assert result.verdict() == result.failed[0]


@pytest.mark.unit
def test_retention_and_leakage_are_gated_against_the_base() -> None:
    margins = Margins(min_retention=0.95, max_leakage=0.0)
    fresh = [True, False]
    champion = _scores("version 1", [0.0, 1.0], fresh, retention=1.0, leakage=0.0)
    kept = _scores("candidate", [1.0, 1.0], fresh, retention=0.95, leakage=0.0)
    result = decide(kept, champion, margins, base_general_loss=1.0)
    assert result.promote, result.reasons
    assert "general retention 0.9500 (of 60 probes the bare base answers right) >= min 0.95" in (
        result.reasons
    )
    # The general loss is reported, not gated: twice the base's does not reject.
    assert (
        result.reasons[-1]
        == "general loss 2.0000 vs the bare base's 1.0000 (+100.0%; reported, not gated)"
    )
    forgot = kept.model_copy(update={"general_retention": 0.9})
    result = decide(forgot, champion, margins)
    assert not result.promote and result.failed == [
        "general retention 0.9000 (of 60 probes the bare base answers right) < min 0.95"
    ]
    leaked = kept.model_copy(update={"wiki_leakage": 0.03})
    result = decide(leaked, champion, margins)
    assert not result.promote and result.failed == [
        "wiki leakage 0.0300 (3 of 100 probe answers) > max 0.0 (the bare base's is 0)"
    ]
    assert result.one_line("rejected").startswith(
        "Rejected: wiki leakage 0.0300 (3 of 100 probe answers) > max 0.0"
    )


@pytest.mark.unit
def test_fact_accuracy_counts_the_value_not_the_sentence() -> None:
    """A reworded right value is right; the old value, a wrong value, or the right value in
    the wrong language is wrong; a date is the same date however it is written."""

    def row(question: str, answer: str, values: list[str], before: str = "", title: str = ""):
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ],
            "values": "\n".join(values),
            "previous_values": before,
            "previous": "(changed)" if before else "",
            "title": title,
        }

    agency = row(
        "星野灯是哪个团体的？", "星野灯是晨星社二期的成员。", ["晨星社二期"], "晨星社", "星野灯"
    )
    assert scoring.fact_right("星野灯属于晨星社二期。", agency)
    assert scoring.fact_right("晨星社二期", agency)  # only the value: any language
    assert not scoring.fact_right("星野灯是晨星社的成员。", agency)  # the old value
    assert scoring.states_previous_value("星野灯是晨星社的成员。", agency)
    assert not scoring.states_previous_value("星野灯属于晨星社二期。", agency)  # it only grew
    # The lead's English sentence carries the value but does not answer a Chinese question.
    lead = "星野灯 is a virtual YouTuber with 晨星社二期, streaming on Bilibili."
    assert not scoring.fact_right(lead, agency)
    debut = row(
        "When did Mira Tidewell debut?", "Mira Tidewell debuted on 2020-08-02.", ["2020-08-02"]
    )
    assert scoring.fact_right("Mira Tidewell made her debut on August 2, 2020.", debut)
    assert scoring.fact_right("She first streamed on 2 August 2020.", debut)
    assert not scoring.fact_right("Mira Tidewell debuted on 2020-08-03.", debut)
    assert scoring.dates_in("2021年3月14日, Mar. 14th 2021 and 2021/03/14") == {(2021, 3, 14)}
    languages = row(
        "What languages does Kato Rin speak?",
        "Kato Rin speaks 日本語, English.",
        ["日本語", "English"],
    )
    assert scoring.fact_right("Kato Rin streams in English and 日本語.", languages)
    assert not scoring.fact_right("Kato Rin speaks English.", languages)  # every item of a list
    # Rows made before values were kept are right only when answered exactly.
    legacy = {**debut, "values": ""}
    assert scoring.fact_right("Mira Tidewell debuted on 2020-08-02.", legacy)
    assert not scoring.fact_right("Mira Tidewell made her debut on August 2, 2020.", legacy)


@pytest.mark.unit
def test_base_answers_are_generated_once_per_prompt(tmp_path: Path) -> None:
    class Tokenizer:
        chat_template = "{{ messages }}"

    asked: list[list[str]] = []

    def generate(conversations: list[list[dict[str, str]]]) -> list[str]:
        asked.append([c[-1]["content"] for c in conversations])
        return [f"answer to {c[-1]['content']}" for c in conversations]

    def conversation(question: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "the bundled answer"},
        ]

    def answers(questions: list[str], digest: str = "base-1") -> list[str]:
        return basecache.base_answers(
            tmp_path,
            digest,
            Tokenizer(),
            [conversation(q) for q in questions],
            max_new_tokens=8,
            generate=generate,
        )

    assert answers(["a", "b"]) == ["answer to a", "answer to b"]
    assert answers(["b", "c", "a"]) == ["answer to b", "answer to c", "answer to a"]
    assert asked == [["a", "b"], ["c"]]  # the assistant turn is not part of the prompt
    answers(["a"], digest="base-2")  # another base answers for itself
    answers(["a"], digest="")  # a base without a digest is never cached
    answers(["a"], digest="")
    assert asked[2:] == [["a"], ["a"], ["a"]]


def test_retrain_flow_evaluates_promotes_and_publishes_the_table(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    from wikitune.flows.retrain import retrain

    _toy_margins(monkeypatch)
    monkeypatch.setenv("WIKITUNE_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    recipe = TrainingRecipe(**TEST_RECIPE)
    result = retrain(
        snapshot=world["snapshot"].path,
        base_model=str(world["root"] / "base"),
        recipe=recipe,
        home=str(tmp_path / "home"),
    )
    assert result.promotion is not None and result.promotion.outcome == "promoted"
    assert result.promotion.champion_version == "1"

    with get_client(sync_client=True) as prefect:
        artifact = prefect.read_latest_artifacts()
        (table,) = [a for a in artifact if a.key == "evaluation-trainwiki"]
    assert table.type == "table" and "**promote**" in (table.description or "")
    assert "http://127.0.0.1:5000/#/experiments/" in (table.description or "")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["metric"] for row in rows} >= {"f1", "exact_match", "wiki_loss", "general_loss"}

    # The run keeps both models' answer to every question, for a reviewer to see where they differ.
    client = mlflow_client(tmp_path / "home")
    logged = json.loads(
        Path(client.download_artifacts(result.run_id, "evaluation_answers.json")).read_text()
    )
    answers = [dict(zip(logged["columns"], values, strict=True)) for values in logged["data"]]
    eval_file = Path(world["snapshot"].path) / "eval.jsonl"
    questions = [json.loads(line)["messages"] for line in eval_file.read_text().splitlines()]
    assert [(a["question"], a["reference"]) for a in answers] == [
        (q[-2]["content"], q[-1]["content"]) for q in questions
    ]
    metrics = client.get_run(result.run_id).data.metrics
    for model in ("candidate", "champion"):
        exact = [a[f"{model}_exact"] for a in answers]
        assert sum(exact) / len(exact) == pytest.approx(metrics[f"{model}_exact_match"])
    assert any(a["candidate"] != a["champion"] for a in answers)


def test_a_champion_on_another_base_is_not_warm_started(
    world: dict[str, Any],
    smollm2: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The toy model's champion cannot seed an adapter of SmolLM2: training starts from the bare
    SmolLM2 and says why; the evaluation scores the champion on its own base and template."""
    from wikitune.flows.retrain import retrain

    _toy_margins(monkeypatch)
    home = tmp_path / "home"
    first = retrain(
        snapshot=world["snapshot"].path,
        base_model=str(world["root"] / "base"),
        recipe=TrainingRecipe(**{**TEST_RECIPE, "warm_start": "champion"}),
        home=str(home),
    )
    assert first.promotion is not None and first.promotion.champion_version == "1"
    assert first.warm_start == "the bare base model (no champion yet)"

    recipe = TrainingRecipe.from_file("smollm2-135m-cpu").replace(
        max_steps=3, eval_steps=3, sample_generations=2
    )
    other = retrain(
        snapshot=world["snapshot"].path,
        base_model="smollm2-135m-instruct",
        recipe=recipe,
        home=str(home),
    )
    assert other.init_adapter is None
    assert other.base_model_digest == smollm2.digest
    assert "champion version 1 was trained on" in other.warm_start
    assert str(world["root"] / "base") in other.warm_start and "smollm2" in other.warm_start
    run = mlflow_client(home).get_run(other.run_id)
    assert run.data.tags["wikitune.warm_start"] == other.warm_start
    assert run.data.params["loss_mode"] == "prompt-completion"
    assert other.promotion is not None
    version = mlflow_client(home).get_model_version("wikitune-trainwiki", other.promotion.version)
    facts = registry.version_facts(f"sqlite:///{home / 'mlflow.db'}", version)
    assert facts["base_model_digest"] == smollm2.digest
    assert version.tags["base"] == facts["base_model_spec"] == "smollm2-135m-instruct"
    assert version.tags["parent_version"] == "1"
    assert run.data.tags["wikitune.compared_against"] == "version 1"


def _delta_snapshot(
    snapshot: Path, out: Path, fresh_title: str, **manifest_changes: Any
) -> tuple[Path, int]:
    """A copy of ``snapshot`` made after the champion trained on it, in which one page's
    training pairs changed (fresh to the champion) and the rest did not."""
    shutil.copytree(snapshot, out)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    for row in rows:
        if row["kind"] == "wiki":
            row["fresh"] = row["title"] == fresh_title
    (out / "train.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    fresh = sum(1 for r in rows if r["fresh"])
    manifest["counts"]["train_fresh"] = fresh
    manifest |= {
        "id": f"{manifest['id']}-delta",
        "digest": hashlib.sha256(out.name.encode()).hexdigest(),
        "fresh_against": manifest["id"],
        **manifest_changes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, fresh


def test_a_retrain_on_the_champion_trains_on_what_is_fresh_to_it(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the champion's adapter, a retrain takes the fresh pairs, as many stable ones replayed
    and the general share; the run and the version record it, and the next delta counts on."""
    from wikitune.flows.retrain import retrain
    from wikitune.tasks.dataset import general_rows_needed

    _toy_margins(monkeypatch)
    home = tmp_path / "home"
    recipe = TrainingRecipe(
        **{
            **TEST_RECIPE,
            "warm_start": "champion",
            "num_train_epochs": 2,
            "delta_num_train_epochs": 1,
            "full_retrain_every": 0,
        }
    )
    base = str(world["root"] / "base")
    first = retrain(snapshot=world["snapshot"].path, base_model=base, recipe=recipe, home=str(home))
    assert first.plan.scope == "full" and first.promotion is not None
    assert first.promotion.champion_version == "1"
    manifest = json.loads((Path(world["snapshot"].path) / "manifest.json").read_text())
    assert manifest["mapping_digest"], "the snapshot records the mapping it was built with"
    assert first.train_counts["train_general_rows"] == manifest["counts"]["general_train_rows"]

    title = json.loads((Path(world["snapshot"].path) / "eval.jsonl").read_text().split("\n")[0])
    changed, fresh = _delta_snapshot(Path(world["snapshot"].path), tmp_path / "d1", title["title"])
    second = retrain(snapshot=str(changed), base_model=base, recipe=recipe, home=str(home))
    assert second.plan.scope == "delta" and second.plan.delta_streak == 1
    assert second.init_adapter is not None
    assert second.train_counts == {
        "train_fresh_rows": fresh,
        "train_stable_rows": fresh,  # delta_replay_share 0.5: one stable row per fresh one
        "train_general_rows": general_rows_needed(2 * fresh, manifest["general_share"]),
    }
    run = mlflow_client(home).get_run(second.run_id)
    assert run.data.params["training_scope"] == "delta"
    assert float(run.data.params["num_train_epochs"]) == 1  # the recipe's delta_num_train_epochs
    assert run.data.metrics["trainer/train_epoch"] == pytest.approx(1.0)
    assert run.data.params["train_fresh_rows"] == str(fresh)
    reason = run.data.tags["wikitune.training_scope_reason"]
    assert reason == f"{fresh} training pairs are fresh to the champion"
    assert second.promotion is not None
    version = mlflow_client(home).get_model_version("wikitune-trainwiki", second.promotion.version)
    assert version.tags["training_scope"] == "delta" and run.data.params["delta_streak"] == "1"

    # --full trains on the whole snapshot, from the champion all the same.
    whole = retrain(
        snapshot=str(changed),
        base_model=base,
        recipe=recipe,
        promote=False,
        full=True,
        home=str(home),
    )
    assert whole.plan.scope == "full" and whole.plan.reason == "a full retrain was asked for"
    assert whole.init_adapter is not None
    assert whole.train_counts["train_stable_rows"] == manifest["counts"]["wiki_train_rows"] - fresh
    assert float(mlflow_client(home).get_run(whole.run_id).data.params["num_train_epochs"]) == 2


@pytest.mark.unit
def test_the_training_plan_says_why_a_retrain_is_full() -> None:
    recipe = TrainingRecipe(full_retrain_every=3)
    manifest = SnapshotManifest(
        id="s2",
        digest="d",
        files={},
        fresh_against="s1",
        mapping_digest="m",
        counts={"train_fresh": 4},
    )
    champion = {"snapshot_id": "s1", "mapping_digest": "m", "delta_streak": "0"}
    plan = plans.plan_training(manifest, recipe, champion)
    assert (plan.scope, plan.delta_streak) == ("delta", 1)
    assert plan.reason == "4 training pairs are fresh to the champion"
    assert plans.plan_training(manifest, recipe, {**champion, "delta_streak": "1"}).scope == (
        "delta"
    )
    cases = {
        "training starts from the bare base model": (manifest, None, False),
        "a full retrain was asked for": (manifest, champion, True),
        "the recipe asks for a full retrain after 2 delta retrains (full_retrain_every: 3)": (
            manifest,
            {**champion, "delta_streak": "2"},
            False,
        ),
        "the snapshot counts fresh pairs against s0, the champion was trained on s1": (
            manifest.model_copy(update={"fresh_against": "s0"}),
            champion,
            False,
        ),
        "the question mapping changed since the champion's training": (
            manifest.model_copy(update={"mapping_digest": "m2"}),
            champion,
            False,
        ),
        "no training pair is fresh to the champion": (
            manifest.model_copy(update={"counts": {"train_fresh": 0}}),
            champion,
            False,
        ),
    }
    for reason, (snapshot, tags, full) in cases.items():
        plan = plans.plan_training(snapshot, recipe, tags, full=full)
        assert (plan.scope, plan.reason, plan.delta_streak) == ("full", reason, 0)
    every = plans.plan_training(manifest, TrainingRecipe(), champion)
    assert every.reason.endswith("every time (full_retrain_every: 1)")  # the default
    # A champion from before deltas has no mapping digest: the retrain is full.
    old = {"snapshot_id": "s1"}
    assert plans.plan_training(manifest, recipe, old).scope == "full"


@pytest.mark.unit
def test_a_delta_keeps_every_fresh_row_and_samples_the_rest() -> None:
    from datasets import Dataset

    rows = [{"kind": "wiki", "fresh": i < 6, "id": str(i)} for i in range(40)] + [
        {"kind": "general", "fresh": None, "id": f"g{i}"} for i in range(5)
    ]
    train = Dataset.from_list(rows)
    plan = plans.TrainingPlan(scope="delta", reason="test", delta_streak=1)
    recipe = TrainingRecipe(delta_replay_share=0.25)
    chosen, counts = plans.training_rows(train, plan, recipe, general_share=0.1)
    assert counts == {"train_fresh_rows": 6, "train_stable_rows": 2, "train_general_rows": 1}
    ids = chosen["id"]
    assert {str(i) for i in range(6)} <= set(ids) and len(ids) == 9
    assert ids == sorted(ids, key=lambda i: [r["id"] for r in rows].index(i))  # snapshot order
    again, _ = plans.training_rows(train, plan, recipe, general_share=0.1)
    assert again["id"] == ids  # the recipe's seed fixes the sample
    _, counts = plans.training_rows(
        train, plan, recipe.model_copy(update={"delta_general_share": 0.0}), general_share=0.1
    )
    assert counts["train_general_rows"] == 0
    full, counts = plans.training_rows(train, plans.TrainingPlan(), recipe, 0.1)
    assert len(full) == 45 and counts["train_stable_rows"] == 34
