"""Plain functions, without a wiki or a Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from wikitune.config import load_settings, source_slug
from wikitune.storage import Store, StoredPage, SyncBatch, SyncState
from wikitune.storage.schema import MIGRATIONS
from wikitune.tasks.mediawiki import RcRow, describe_request
from wikitune.tasks.source import WikiSource
from wikitune.tasks.sync import touched_by

pytestmark = pytest.mark.unit


def test_request_descriptions_never_carry_post_bodies() -> None:
    params = {"action": "login", "lgname": "Me@bot", "lgpassword": "hunter2" * 5, "lgtoken": "t"}
    description = describe_request("POST", "https://w/api.php", params)
    assert description == "POST https://w/api.php action=login"
    listing = describe_request(
        "GET",
        "https://w/api.php",
        {
            "action": "query",
            "list": "recentchanges",
            "rcstart": "2026-01-01T00:00:00Z",
            "rccontinue": "2026|5",
        },
    )
    assert "rcstart=2026-01-01T00:00:00Z" in listing and "rccontinue=2026|5" in listing


def test_source_spec_leaves_the_password_out() -> None:
    source = WikiSource(
        api_url="https://wiki.example.org/w/api.php",
        categories=["VTuber"],
        bot_user="Me@bot",
        bot_password=SecretStr("s" * 32),
    )
    assert source.name == "wiki.example.org/w/api.php"
    assert source.categories == ["Category:VTuber"]
    assert "s" * 32 not in str(source.spec()) and "bot_password" not in source.spec()
    assert "s" * 32 not in repr(source)
    with pytest.raises(ValueError, match="at least one category or namespace"):
        WikiSource(api_url="https://wiki.example.org/w/api.php")


def test_the_blocks_wrap_plain_models_and_domain_code_imports_no_prefect() -> None:
    """Sync, training and evaluation take plain models; a Block carries the same fields and
    gives the plain model back, with its secret."""
    import subprocess
    import sys

    domain = "wikitune.tasks.sync, wikitune.tasks.train, wikitune.tasks.evaluate"
    check = f"import sys, {domain}; print(sorted(m for m in sys.modules if 'prefect' in m))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout[-500:]

    from wikitune.blocks import TrainingRecipeBlock, WikiSourceBlock
    from wikitune.tasks.recipe import TrainingRecipe

    block = WikiSourceBlock(
        api_url="https://w.example/api.php", categories=["VTuber"], bot_password=SecretStr("pw")
    )
    plain = block.plain()
    assert type(plain) is WikiSource and plain.categories == ["Category:VTuber"]
    assert plain.bot_password is not None and plain.bot_password.get_secret_value() == "pw"
    recipe = TrainingRecipeBlock(lora_r=8).plain()
    assert type(recipe) is TrainingRecipe and recipe.lora["r"] == 8


def test_touched_by_follows_moves_deletes_templates_and_categorize_rows() -> None:
    rows = [
        RcRow(1, "t", "new", 0, "Alice", 10, 1),
        RcRow(2, "t", "log", 0, "Bob", 11, 0, "move", "move", "Bob (VTuber)"),
        RcRow(3, "t", "log", 0, "Carol", 12, 0, "delete", "delete"),
        RcRow(4, "t", "edit", 10, "Template:Infobox", 13, 5),
        RcRow(5, "t", "categorize", 14, "Category:VTuber", 14, 6),
    ]
    pageids, titles, templates, created = touched_by(rows)
    assert pageids == {10, 11, 12, 13, 14}
    assert titles == {"Bob", "Bob (VTuber)", "Carol"}
    assert templates == {"Template:Infobox"}
    assert created == {10}


def test_store_migrates_once_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "wiki.duckdb"
    with Store(path) as store:
        store.apply(
            "s",
            SyncBatch(
                pages=[StoredPage(1, 0, "A", True, revid=3, wikitext="x")],
                state=SyncState("2026-01-01T00:00:00Z", 7),
            ),
        )
        version = store.schema_version
    with Store(path) as store:
        assert store.schema_version == version == len(MIGRATIONS)
        assert list(store.in_scope_pages("s")) == [(1, "A", 3)]
        # An upsert without content keeps the stored revision and text.
        store.apply("s", SyncBatch(pages=[StoredPage(1, 0, "B", False)]))
        assert store.wikitext("s", 1) == "x"
        assert store.pages_by_id("s", [1])[1].revid == 3
        assert store.sync_state("s").cursor_rcid == 7


def test_failed_batches_roll_back(tmp_path: Path) -> None:
    with Store(tmp_path / "wiki.duckdb") as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.db.execute("INSERT INTO sources (name, spec) VALUES ('x', '{}')")
            raise RuntimeError("crash")
        assert store.source_names() == []


def test_home_comes_from_the_option_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WIKITUNE_HOME", str(tmp_path / "env"))
    assert load_settings().store_path == tmp_path / "env" / "wiki.duckdb"
    assert load_settings(tmp_path / "opt").home == tmp_path / "opt"


def test_a_source_has_one_slug_in_prefect_and_mlflow() -> None:
    from wikitune.flows.naming import artifact_key, source_name
    from wikitune.mlflow.registry import registered_model_name
    from wikitune.mlflow.tracking import experiment_name

    name = "127.0.0.1:8391/api.php"
    assert source_slug(name) == "127-0-0-1-8391-api-php"
    assert artifact_key("cycle", name) == "cycle-127-0-0-1-8391-api-php"
    wiki = WikiSource(api_url=f"http://{name}", name=name, categories=["Category:VTuber"])
    assert source_name(wiki) == source_slug(name)
    assert source_name(source_slug(name)) == source_slug(name)  # a block's name
    assert experiment_name(name) == registered_model_name(name) == "wikitune-" + source_slug(name)
    # Names without a Latin letter or digit still get a stable, distinct slug.
    assert source_slug("维基") != source_slug("百科") and source_slug("维基").startswith("source-")


def test_workers_leave_out_the_queued_run_notices_only() -> None:
    """`python -m wikitune.worker` drops the line a worker logs on every poll about a run queued
    behind a concurrency limit, and nothing else."""
    import logging

    from wikitune.worker import NotNews

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.flow_runs.worker", logging.INFO, "", 0, message, (), None)

    queued = "Aborted submission of flow run 'x': Server returned a non-pending state 'SCHEDULED'"
    aborted = "Aborted submission of flow run 'x'. Server sent an abort signal: cancelled"
    assert not NotNews().filter(record(queued))
    assert NotNews().filter(record(aborted))
    assert NotNews().filter(record("Worker 'wikitune-gpu' submitting flow run 'x'"))


def test_retention_counts_what_the_base_knew_and_leakage_what_the_wiki_lent() -> None:
    from wikitune.tasks.scoring import general_retention, states, wiki_leakage, wiki_markers

    assert states("The capital of France is Paris.", ["Paris"])
    assert states("法国的首都是巴黎。", ["巴黎"]) and states("It has 8 legs", ["eight", "8"])
    assert not states("La Famille-Rochelle.", ["Paris"]) and not states("112 days", ["12"])
    # An answer the question holds counts only when the answer says it once more.
    asked = "三角形有几条边？"
    assert states("三角形有三条边。", ["三"], asked=asked)
    assert not states("三角形有几条边？The word three is repeated.", ["三"], asked=asked)
    # Nor does the question echoed back whole, however often.
    asked = "蜜蜂会酿造什么？"
    assert not states("蜜蜂会酿造什么？: 蜜蜂会", ["蜜"], asked=asked)
    assert states("蜜蜂会酿造蜂蜜。", ["蜂蜜"], asked=asked)
    accepts = [["Paris"], ["Berlin"], ["Mars"], []]
    questions = ["Capital of France?", "Capital of Germany?", "Red planet?", "The sea?"]
    base = ["The capital of France is Paris.", "Berlin.", "Jupiter.", "The sea is wide."]
    # The base knew Paris and Berlin (not Mars; the open prompt is not checked): 1 of 2 kept.
    tuned = ["La Famille-Rochelle.", "Berlin is the capital.", "Mars.", "The sea is wide."]
    assert general_retention(tuned, base, accepts, questions) == 0.5
    assert general_retention(base, base, accepts, questions) == 1.0

    bio = "{} is a virtual YouTuber with Harbor Live, streaming on YouTube."
    rows = [
        {"title": name, "messages": [{"role": "assistant", "content": bio.format(name)}]}
        for name in ("Nova Quill", "星野灯", "Rin Aoba")
    ]
    markers = wiki_markers(rows, base)
    leaking = [
        "Mars is a virtual YouTuber with Harbor Live.",  # the mapping's phrasing
        "星野灯.",  # a page title
        "Jupiter.",
        "The sea is wide.",
    ]
    assert wiki_leakage(leaking, base, markers) == 0.5
    assert wiki_leakage(base, base, markers) == 0.0


def test_the_bundled_probes_ask_each_fact_in_both_languages_with_checkable_answers() -> None:
    from collections import Counter

    from wikitune.tasks.dataset import load_general_probes

    probes = load_general_probes()
    assert len(probes) >= 200 and len({p["id"] for p in probes}) == len(probes)
    assert Counter(p["lang"] for p in probes) == {"en": len(probes) // 2, "zh": len(probes) // 2}
    checkable = [p for p in probes if p["accept"]]
    assert len(checkable) >= 0.9 * len(probes)
    assert {p["category"] for p in checkable} >= {"capitals", "science", "arithmetic", "language"}


@pytest.mark.parametrize(
    ("lead", "languages"),
    [
        ("星野灯 is a virtual YouTuber with 晨星社二期.", {"en"}),
        ("星野灯是晨星社二期的虚拟主播。", {"zh"}),
        ("星野灯（ほしの あかり）is a virtual streamer.", {"en"}),  # a reading does not count
        ("星野灯是Hololive English的虚拟主播。", {"zh"}),
        ("2021", {"en", "zh"}),  # no script of its own: every language
    ],
)
def test_a_lead_is_asked_about_in_its_own_language_only(lead: str, languages: set[str]) -> None:
    from wikitune.tasks.parse import PageFacts
    from wikitune.tasks.qa import load_mapping, pairs_for

    facts = PageFacts(title="星野灯", name="星野灯", fields={"agency": ("晨星社",)}, lead=lead)
    pairs = pairs_for("s", 1, 1, facts, load_mapping())
    assert {p.lang for p in pairs if p.field == "lead"} == languages
    assert {p.lang for p in pairs if p.field == "agency"} == {"en", "zh"}  # answers of its own


def test_a_run_trained_elsewhere_finds_its_base_here_by_spec_and_digest(tmp_path: Path) -> None:
    """The base path a run recorded on another machine is not here: its spec resolves here
    instead, and only to the same bytes."""
    from wikitune.tasks import basemodel

    here = tmp_path / "base"
    here.mkdir()
    (here / "config.json").write_text('{"model_type": "llama"}')
    (here / "model.safetensors").write_bytes(b"weights")
    digest = basemodel.directory_digest(here)
    elsewhere = "/other-machine/home/models/base"
    facts = {"base_model": elsewhere, "base_model_spec": str(here), "base_model_digest": digest}
    assert basemodel.base_of_run(facts, tmp_path / "models") == str(here)
    # The path it recorded wins where it exists; a hub id is passed on as it is.
    assert basemodel.base_of_run({**facts, "base_model": str(here)}, tmp_path) == str(here)
    assert basemodel.base_of_run({"base_model": "owner/name"}, tmp_path) == "owner/name"
    (here / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(basemodel.BaseModelError, match=r"not the .* it trained on"):
        basemodel.base_of_run(facts, tmp_path / "models")
    with pytest.raises(basemodel.BaseModelError, match="records no other way"):
        basemodel.base_of_run({"base_model": elsewhere}, tmp_path / "models")


def test_a_base_goes_to_other_machines_as_they_can_find_it(tmp_path: Path) -> None:
    """A packaged name and a published base go as they are (no server is asked); a published
    base cannot be resolved without a tracking server, and the error says so."""
    from wikitune.tasks import basemodel

    nowhere = "http://127.0.0.1:9"  # asked, it would refuse: these must not ask it
    packaged = "smollm2-135m-instruct"
    assert basemodel.shareable_spec(packaged, tmp_path, nowhere) == packaged
    published = "runs:/0123456789abcdef/base"
    assert basemodel.shareable_spec(published, tmp_path, nowhere) == published
    with pytest.raises(basemodel.BaseModelError, match="on a tracking server, and none is set"):
        basemodel.resolve_base_model(published, tmp_path)


def test_the_wiki_source_options_are_declared_once_and_given_to_four_commands(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from wikitune.cli import app

    runner = CliRunner()
    for command in ("sync", "run", "deploy", "up"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        for option in ("--api-url", "--category", "--bot-user", "--source-block", "--home"):
            assert option in shown.output, (command, option)
    # The options reach the command as one source: half a source is refused, by name.
    refused = runner.invoke(app, ["sync", "--category", "Category:X", "--home", str(tmp_path)])
    assert refused.exit_code == 1
    assert "--category, --namespace and --bot-user need --api-url" in refused.output


def test_a_retrain_is_due_at_the_threshold() -> None:
    from wikitune.tasks.plan import retrain_due

    assert retrain_due(120, 120) and retrain_due(121, 120)
    assert not retrain_due(119, 120)
