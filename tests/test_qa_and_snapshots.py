"""QA pairs follow the wiki page by page, and snapshots freeze them with the general mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import CATEGORY, run_sync

from wikitune.demo import sample_page
from wikitune.flows.build import build, snapshot
from wikitune.localwiki import LocalWiki
from wikitune.storage import QaPair, Store, StoredPage, SyncBatch
from wikitune.tasks.dataset import general_rows_needed, make_snapshot
from wikitune.tasks.snapshots import read_snapshot

PAIRS_PER_FIELD = 16  # two languages, eight phrasings each
LEAD_PAIRS = 8  # the English lead is asked about in English only


def _page(name: str, agency: str = "Harbor Live", fans: str | None = "Tidecallers") -> str:
    text = sample_page(name, "2020-08-02", agency, fans or "", "English", "YouTube")
    return text if fans else text.replace("| fan_name = \n", "")


def _pairs(home: Path) -> dict[str, QaPair]:
    with Store(home / "wiki.duckdb") as store:
        return {p.pair_id: p for p in store.active_pairs("testwiki")}


def _rows(path: str, name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(path) / name).read_text("utf-8").splitlines()]


@pytest.fixture
def built(wiki: LocalWiki, home: Path) -> LocalWiki:
    wiki.edit(
        "Template:Infobox VTuber", f"{{{{{{name}}}}}}<includeonly>[[{CATEGORY}]]</includeonly>"
    )
    for name in ["Mira Tidewell", "Pip Lanternwick", "Nova Quill"]:
        wiki.edit(name, _page(name))
    run_sync(wiki, home)
    summary = build(home=str(home))
    assert summary.counts["pages_parsed"] == 3
    # Five mapped fields with values (colour, birthday, origin are absent) plus the lead.
    assert summary.counts["new"] == 3 * (5 * PAIRS_PER_FIELD + LEAD_PAIRS)
    return wiki


def test_edits_change_exactly_their_pairs(built: LocalWiki, home: Path) -> None:
    before = _pairs(home)
    built.edit("Mira Tidewell", _page("Mira Tidewell", agency="Deep Blue"))
    run_sync(built, home)
    summary = build(home=str(home)).counts
    assert summary["pages_parsed"] == 1  # only the edited page is parsed again
    after = _pairs(home)
    changed = {k for k in after if after[k].answer != before[k].answer}
    assert summary["changed"] == len(changed) == PAIRS_PER_FIELD + LEAD_PAIRS  # agency, lead
    assert {after[k].field for k in changed} == {"agency", "lead"}
    assert all("Deep Blue" in after[k].answer for k in changed)
    assert summary["unchanged"] == 4 * PAIRS_PER_FIELD and summary["retired"] == 0

    built.edit("Mira Tidewell", _page("Mira Tidewell", agency="Deep Blue", fans=None))
    run_sync(built, home)
    summary = build(home=str(home)).counts
    assert summary["retired"] == PAIRS_PER_FIELD  # the fan name was removed
    assert not any(
        p.field == "fan_name" and p.title == "Mira Tidewell" for p in _pairs(home).values()
    )


def test_pairs_built_before_values_were_kept_get_them_at_the_next_build(
    built: LocalWiki, home: Path
) -> None:
    """Migration 7 adds the values column empty and asks for a full rebuild, which writes the
    values without counting the pairs as changed."""
    with Store(home / "wiki.duckdb") as store:
        store.db.execute("UPDATE qa_pairs SET fact_values = NULL")
        store.db.execute("UPDATE build_state SET mapping_digest = ''")
        assert not any(p.fact_values for p in store.active_pairs("testwiki"))
    summary = build(home=str(home))
    assert summary.counts["changed"] == summary.counts["new"] == 0
    pairs = list(_pairs(home).values())
    assert all(p.fact_values for p in pairs)
    assert {p.fact_values for p in pairs if p.field == "agency"} == {("Harbor Live",)}


def test_delete_retires_everything_and_move_keeps_pairs(built: LocalWiki, home: Path) -> None:
    before = _pairs(home)
    built.delete("Nova Quill")
    built.move("Pip Lanternwick", "Pip Lanternwick (VTuber)")
    run_sync(built, home)
    summary = build(home=str(home)).counts
    assert summary["retired"] == 5 * PAIRS_PER_FIELD + LEAD_PAIRS
    after = _pairs(home)
    pip = {k for k, p in before.items() if p.title == "Pip Lanternwick"}
    assert pip <= after.keys()  # same ids: the pairs were kept
    assert {after[k].title for k in pip} == {"Pip Lanternwick (VTuber)"}
    assert summary["changed"] == 0
    assert not any(p.title == "Nova Quill" for p in after.values())


def test_snapshots_hold_out_phrasings_and_mark_fresh_facts(built: LocalWiki, home: Path) -> None:
    first = snapshot(home=str(home))
    assert snapshot(home=str(home)).digest == first.digest  # same state, same snapshot
    train = _rows(first.path, "train.jsonl")
    evaluation = _rows(first.path, "eval.jsonl")
    train_questions = {r["messages"][-2]["content"] for r in train}
    assert evaluation and not any(
        r["messages"][-2]["content"] in train_questions for r in evaluation
    )
    assert all(r["fresh"] for r in evaluation)  # nothing was trained yet
    general = sum(1 for r in train if r["kind"] == "general")
    assert general == general_rows_needed(len(train) - general, 0.10)
    general_eval = {r["id"] for r in _rows(first.path, "general_eval.jsonl")}
    assert general_eval and general_eval.isdisjoint(r["id"] for r in train)

    from datasets import load_dataset

    loaded = load_dataset(
        "json",
        data_files={
            "train": str(Path(first.path) / "train.jsonl"),
            "eval": str(Path(first.path) / "eval.jsonl"),
        },
    )
    assert loaded["train"].num_rows == len(train)
    # No system prompt by default: the base model's template decides the system turn.
    assert [m["role"] for m in loaded["eval"][0]["messages"]] == ["user", "assistant"]

    with Store(home / "wiki.duckdb") as store:
        active = store.qa_counts("testwiki")["active"]
        # A retrain whose candidate lost taught the champion nothing: all stays due.
        store.mark_trained(first.id)
        assert store.pairs_changed_since_champion("testwiki") == active
        assert store.mark_champion(first.id) and not store.mark_champion(first.id)
        assert store.pairs_changed_since_champion("testwiki") == 0
    built.edit("Nova Quill", _page("Nova Quill", agency="Deep Blue"))
    run_sync(built, home)
    summary = build(home=str(home))
    assert (
        summary.changed_since_champion == PAIRS_PER_FIELD + LEAD_PAIRS and not summary.retrain_due
    )
    assert summary.changed_since_last_retrain == summary.changed_since_champion
    second = snapshot(home=str(home))
    assert second.id != first.id
    fresh = {(r["title"], r["field"]) for r in _rows(second.path, "eval.jsonl") if r["fresh"]}
    assert fresh == {("Nova Quill", "agency"), ("Nova Quill", "lead")}
    assert second.counts["eval_stable"] > 0
    # A changed fact's question carries what the champion's snapshot answered (the stale rate).
    before = {r["id"]: r["messages"][-1]["content"] for r in _rows(first.path, "eval.jsonl")}
    changed = [r for r in _rows(second.path, "eval.jsonl") if r["previous"]]
    assert {r["field"] for r in changed if r["field"] == "agency"} == {"agency"}
    for row in changed:
        assert row["fresh"] and row["previous"] == before[row["id"]]
        assert row["previous"] != row["messages"][-1]["content"]
        if row["field"] == "agency":
            assert "Deep Blue" in row["messages"][-1]["content"]
            assert "Deep Blue" not in row["previous"]
            # The fact's values, now and before: what fact accuracy scores.
            assert (row["values"], row["previous_values"]) == ("Deep Blue", "Harbor Live")
    assert second.counts["eval_changed_values"] == len(changed)
    stable = [r for r in _rows(second.path, "eval.jsonl") if not r["fresh"]]
    assert {r["values"] for r in stable if r["field"] == "debut_date"} == {"2020-08-02"}
    assert not any(r["previous_values"] for r in stable)
    loaded = read_snapshot(second.path)  # as training and evaluation read it
    assert sum(1 for row in loaded.splits["eval"] if row["previous"]) == len(changed)
    assert set(loaded.splits) == {"train", "eval", "general_eval", "general_probe", "general_pool"}


@pytest.mark.parametrize("wiki_pages", [2, 10, 40, 150])
def test_general_share_is_ten_percent(tmp_path: Path, wiki_pages: int) -> None:
    with Store(tmp_path / "wiki.duckdb") as store:
        store.record_source("s", {"api_url": "http://x"})
        store.apply(
            "s",
            SyncBatch(
                pages=[
                    StoredPage(
                        n,
                        0,
                        f"V{n}",
                        True,
                        revid=n,
                        wikitext=_page(f"V{n}").replace("Harbor Live", f"Agency {n}"),
                    )
                    for n in range(1, wiki_pages + 1)
                ]
            ),
        )
        from wikitune.tasks.qa import build_pairs, load_mapping

        build_pairs(store, "s", load_mapping())
        record = make_snapshot(
            store,
            "s",
            snapshots_dir=tmp_path / "snapshots",
            system_prompt="sys",
            general_share=0.10,
            seed=3,
        )
    counts = record.counts
    share = counts["general_train_rows"] / counts["train_rows"]
    assert abs(share - 0.10) <= 0.5 / counts["train_rows"], counts
    rows = _rows(record.path, "train.jsonl")
    assert sum(r["kind"] == "general" for r in rows) == counts["general_train_rows"]


def test_hostile_pages_never_crash_a_build(tmp_path: Path) -> None:
    hostile = [
        "{{Infobox VTuber|name=" + "{{a|" * 3000,
        "x\x00y",
        "}}]]{{{|" * 1000,
        "z" * (3 * 1024 * 1024),
    ]
    with Store(tmp_path / "wiki.duckdb") as store:
        store.record_source("s", {"api_url": "http://x"})
        pages = [
            StoredPage(n, 0, f"H{n}", True, revid=n, wikitext=text)
            for n, text in enumerate(hostile, start=1)
        ]
        pages.append(StoredPage(99, 0, "Good", True, revid=99, wikitext=_page("Good")))
        store.apply("s", SyncBatch(pages=pages))
        from wikitune.tasks.qa import build_pairs, load_mapping

        counts = build_pairs(store, "s", load_mapping())
        assert counts.pages_failed == 2  # NUL bytes and the oversized page, with reasons
        assert counts.pages_parsed == len(hostile) + 1 - 2
        reasons = dict(store.build_failures("s"))
        assert "NUL" in reasons[2] and "exceeds" in reasons[4]
        assert any(p.title == "Good" for p in store.active_pairs("s"))
        again = build_pairs(store, "s", load_mapping())  # failed pages wait for a new revision
        assert (again.pages_parsed, again.pages_failed) == (0, 0)
