"""After any mix of changes, the store's in-scope pages equal what the wiki's own API lists."""

from __future__ import annotations

from pathlib import Path

from helpers import CATEGORY, assert_store_equals_wiki, run_sync, store_listing, wiki_listing

from wikitune.localwiki import LocalWiki
from wikitune.storage import Store

INFOBOX = "{{Infobox VTuber|name=%s|agency=Nijisanji}}"


def _seed(wiki: LocalWiki) -> None:
    wiki.edit("Template:Infobox VTuber", "'''{{{name}}}''' ({{{agency}}})")
    wiki.edit("Template:VTuber category", f"<includeonly>[[{CATEGORY}]]</includeonly>")
    for name in ["Alice", "Bob", "Carol", "Dave", "Erin"]:
        wiki.edit(name, INFOBOX % name + f"\n{name} is a VTuber.\n[[{CATEGORY}]]")
    wiki.edit("Frank", INFOBOX % "Frank" + "\n{{VTuber category}}")  # category from a template
    wiki.edit("Grace", "Not a VTuber page.")
    wiki.edit("Heidi", "Heidi is a redirect in the category.\n")
    wiki.edit("Heidi alias", f"#REDIRECT [[Heidi]]\n[[{CATEGORY}]]")


def test_backfill_equals_the_wikis_listing(wiki: LocalWiki, home: Path) -> None:
    _seed(wiki)
    summary = run_sync(wiki, home)
    assert summary.mode == "backfill"
    assert summary.counts["new"] == 6
    listing = wiki_listing(wiki)
    assert {title for title, _ in listing.values()} == {
        "Alice",
        "Bob",
        "Carol",
        "Dave",
        "Erin",
        "Frank",
    }
    assert store_listing(home, "testwiki") == listing
    with Store(home / "wiki.duckdb") as store:
        alice = next(pid for pid, (t, _) in listing.items() if t == "Alice")
        assert "Alice is a VTuber." in (store.wikitext("testwiki", alice) or "")


def test_every_kind_of_change_is_applied(wiki: LocalWiki, home: Path) -> None:
    _seed(wiki)
    run_sync(wiki, home)
    before = store_listing(home, "testwiki")
    bob = next(pid for pid, (t, _) in before.items() if t == "Bob")

    wiki.edit("Ivan", INFOBOX % "Ivan" + f"\n[[{CATEGORY}]]")  # new
    wiki.edit("Alice", INFOBOX % "Alice" + f"\nAlice, edited.\n[[{CATEGORY}]]")  # edit
    wiki.move("Bob", "Bob (VTuber)")  # move leaving a redirect
    wiki.move("Carol", "Carol (VTuber)", leave_redirect=False)  # move without redirect
    wiki.delete("Dave")  # delete
    wiki.delete("Erin")
    wiki.undelete("Erin")  # delete then restore
    wiki.edit("Grace", f"Now a VTuber.\n[[{CATEGORY}]]")  # category added
    wiki.edit("Frank", INFOBOX % "Frank")  # template-added category removed
    wiki.edit("Heidi", "Heidi.\n{{VTuber category}}")  # category added by a template
    wiki.edit("Alice alias", "#REDIRECT [[Alice]]")
    summary = run_sync(wiki, home)

    assert summary.mode == "incremental"
    counts = summary.counts
    assert counts["new"] == 1, counts
    assert counts["edited"] == 1, counts
    assert counts["moved"] == 2, counts
    assert counts["deleted"] == 1, counts
    assert counts["left_scope"] == 1, counts  # Frank
    assert counts["entered_scope"] == 2, counts  # Grace, Heidi
    assert counts["failed"] == 0, counts
    assert_store_equals_wiki(wiki, home)
    after = store_listing(home, "testwiki")
    assert after[bob][0] == "Bob (VTuber)"  # same pageid, new title

    # Redirect round trip, a template edit that moves pages in and out, and a restore.
    wiki.edit("Ivan", "#REDIRECT [[Alice]]")
    wiki.edit("Template:Infobox VTuber", "'''{{{name}}}''' {{VTuber category}}")
    wiki.undelete("Dave")
    summary = run_sync(wiki, home)
    assert summary.counts["left_scope"] == 1, summary.counts  # Ivan became a redirect
    assert summary.counts["restored"] == 1, summary.counts  # Dave
    assert summary.counts["entered_scope"] >= 1, summary.counts  # Frank via the infobox template
    assert_store_equals_wiki(wiki, home)

    wiki.edit("Ivan", INFOBOX % "Ivan")  # back from redirect, category from the infobox
    wiki.edit("Template:Infobox VTuber", "'''{{{name}}}'''")  # pages leave via the template
    run_sync(wiki, home)
    assert_store_equals_wiki(wiki, home)


def test_categorize_rows_are_followed(wiki_factory, home: Path) -> None:
    wiki = wiki_factory(extra_settings="$wgRCWatchCategoryMembership = true;\n")
    _seed(wiki)
    wiki.edit("Judy", INFOBOX % "Judy")  # not in the category until the infobox puts her there
    run_sync(wiki, home)
    wiki.edit("Template:Infobox VTuber", "'''{{{name}}}''' {{VTuber category}}")
    summary = run_sync(wiki, home)
    # Judy enters through the template's categorize rows; the template page, now in the
    # category too, is not an article; Grace has no infobox; Heidi is not in it.
    assert summary.counts["entered_scope"] == 1
    assert_store_equals_wiki(wiki, home)


def test_scope_by_namespace(wiki: LocalWiki, home: Path) -> None:
    from wikitune.flows.sync import sync
    from wikitune.tasks.source import WikiSource

    wiki.edit("Help:One", "help")
    wiki.edit("Help:Two", "help two")
    wiki.edit("Article", "main namespace")
    source = WikiSource(api_url=wiki.api_url, namespaces=[12], name="help")
    assert sync(source=source, home=str(home)).counts["new"] == 2
    wiki.move("Help:Two", "Project:Two", leave_redirect=False)
    summary = sync(home=str(home))  # the source is remembered
    assert summary.counts["left_scope"] == 1
    assert [t for t, _ in store_listing(home, "help").values()] == ["Help:One"]
