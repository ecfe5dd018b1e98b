"""Does each retrain learn what changed and keep the rest? Full against delta retraining on the
packaged SmolLM2-135M-Instruct, over three cycles of wiki edits.

Each arm has its own home and local MediaWiki (Debian's package) holding the demo's six VTuber
pages. Cycle 0 trains the first champion on the whole snapshot. Then three edit bursts, each
followed by a forced cycle (sync, build, snapshot, retrain, evaluate, promote):

1. two changed infobox values, a new page, a deleted page;
2. the same kinds of edit on other pages;
3. one changed value: the smallest change the demo's scale has (about 3% of the pairs).

The ``full`` arm retrains on the whole snapshot each time (``--full``); the ``delta`` arm
trains on what is fresh to the champion with a replay of stable pairs (``full_retrain_every:
0``). The default
promotion margins apply: no tolerance is widened. For every cycle it prints the candidate's
fresh exact match and fact accuracy (held-out phrasings), stale rate, stable exact match and
fact accuracy (and their change from the champion it was compared with), general loss against
the bare base's, general agreement, general retention and wiki leakage, train seconds and the
decision; then delta's train seconds as a share of full's.

    .venv/bin/python benchmarks/learning_bench.py [--home DIR] [--arms delta,full]
        [--cycles 3] [--set FIELD=VALUE ...]

``--set`` changes a setting of the packaged recipe in both arms (``--set general_answers=base``
``--set num_train_epochs=3``): how the settings the recipe ships with were chosen. The QA mapping
is wikitune's default unless ``WIKITUNE_MAPPING_PATH`` names another. Each evaluated run keeps
every question's answers in ``evaluation_answers.json``.

Results are also written to ``<home>/learning.json`` as each cycle ends.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from wikitune.demo import CATEGORY, SAMPLE_VTUBERS, sample_page, write_sample_pages
from wikitune.localwiki import LocalWiki

BASE = "smollm2-135m-instruct"
# Field positions in a page's fields: name, debut, agency, fans, language, platform.
AGENCY, FANS, PLATFORM = 2, 3, 5
NEW_PAGES = {
    "Nova Quill": ["Nova Quill", "2025-02-02", "Harbor Live", "Quillies", "English", "YouTube"],
    "月见铃": ["月见铃", "2024年9月9日", "晨星社", "铃兰会", "中文", "Bilibili"],
}
# Each burst: changed values (title, field position, value), pages created, pages deleted.
BURSTS: list[dict[str, Any]] = [
    {
        "change": [("星野灯", AGENCY, "星辉工作室"), ("Mira Tidewell", FANS, "Tidekeepers")],
        "create": ["Nova Quill"],
        "delete": ["Kato Rin"],
    },
    {
        "change": [("白露小雪", PLATFORM, "YouTube"), ("云端小鲸", AGENCY, "海湾娱乐")],
        "create": ["月见铃"],
        "delete": ["Pip Lanternwick"],
    },
    {"change": [("Nova Quill", FANS, "Quillkin")], "create": [], "delete": []},
]


def apply_burst(wiki: LocalWiki, pages: dict[str, list[str]], burst: dict[str, Any]) -> None:
    """Make the burst's edits on the wiki and in ``pages`` (each page's current fields)."""
    for title, position, value in burst["change"]:
        pages[title][position] = value
        wiki.edit(title, sample_page(*pages[title]))
    for title in burst["create"]:
        pages[title] = list(NEW_PAGES[title])
        wiki.edit(title, sample_page(*pages[title]))
    for title in burst["delete"]:
        wiki.delete(title)
    wiki.run_jobs()


def cycle_row(arm: str, index: int, summary: Any, base_general_loss: float) -> dict[str, Any]:
    """The candidate's numbers from one cycle's evaluation."""
    result = summary.retrain
    assert result.promotion.evaluation is not None, "the bench's runs are never versions yet"
    decision = result.promotion.evaluation.decision
    ours, theirs = decision.candidate, decision.champion
    stable = ours.get("stable_exact_match")
    before = theirs.get("stable_exact_match")
    general = ours.get("general_loss")
    stable_facts = ours.get("stable_fact_accuracy")
    facts_before = theirs.get("stable_fact_accuracy")
    return {
        "arm": arm,
        "cycle": index,
        "changed_pairs": summary.changed_since_champion,
        "scope": result.plan.scope,
        **result.train_counts,
        "train_seconds": result.metrics.get("train_runtime", float("nan")),
        "fresh_exact_match": ours.get("fresh_exact_match"),
        "fresh_fact_accuracy": ours.get("fresh_fact_accuracy"),
        "stale_rate": ours.get("stale_rate"),
        "stable_exact_match": stable,
        "stable_change": stable - before if stable is not None and before is not None else None,
        "stable_fact_accuracy": stable_facts,
        "stable_fact_change": (
            stable_facts - facts_before
            if stable_facts is not None and facts_before is not None
            else None
        ),
        "general_loss_vs_base": general / base_general_loss - 1 if general else None,
        "general_agreement": ours.get("general_agreement"),
        "general_similarity": ours.get("general_similarity"),
        "general_retention": ours.get("general_retention"),
        "wiki_leakage": ours.get("wiki_leakage"),
        "decision": result.promotion.outcome,
    }


def run_arm(
    arm: str,
    home: Path,
    results: list[dict[str, Any]],
    out: Path,
    *,
    cycles: int,
    overrides: dict[str, Any],
) -> None:
    from wikitune.flows import runtime
    from wikitune.flows.pipeline import pipeline
    from wikitune.tasks.recipe import default_recipe
    from wikitune.tasks.source import WikiSource

    pages = {title: list(fields) for title, *fields in SAMPLE_VTUBERS}
    base_general_loss = float("nan")
    # The packaged recipe, with a delta retrain in every cycle of the delta arm and none in full's.
    packaged = default_recipe(BASE)
    settings = packaged.model_dump()
    settings |= {"full_retrain_every": 0 if arm == "delta" else 1, **overrides}
    recipe = type(packaged)(**settings)
    with LocalWiki(home / "wiki") as wiki:
        write_sample_pages(wiki)
        source = WikiSource(api_url=wiki.api_url, categories=[CATEGORY], name="learning-wiki")
        for index in range(cycles + 1):
            if index:
                apply_burst(wiki, pages, BURSTS[index - 1])
            started = time.perf_counter()
            summary = runtime.run_flow(
                pipeline,
                source=source,
                retrain_when="always",
                base_model=BASE,
                recipe=recipe,
                full=arm == "full",
                home=str(home),
            )
            promotion = summary.retrain.promotion if summary.retrain else None
            if promotion is None or promotion.evaluation is None:
                raise SystemExit(f"{arm} cycle {index} did not retrain: {summary.message}")
            if index == 0:  # the first candidate is compared with the bare base
                champion = promotion.evaluation.decision.champion
                base_general_loss = champion["general_loss"]
            row = cycle_row(arm, index, summary, base_general_loss)
            row["cycle_seconds"] = time.perf_counter() - started
            results.append(row)
            out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
            print(json.dumps(row, ensure_ascii=False), flush=True)


COLUMNS = [
    ("arm", "arm", "{}"),
    ("cycle", "cycle", "{}"),
    ("changed_pairs", "changed", "{}"),
    ("scope", "scope", "{}"),
    ("train_fresh_rows", "fresh rows", "{}"),
    ("train_stable_rows", "stable rows", "{}"),
    ("train_general_rows", "general rows", "{}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("fresh_exact_match", "fresh EM", "{:.3f}"),
    ("fresh_fact_accuracy", "fresh facts", "{:.3f}"),
    ("stale_rate", "stale", "{:.3f}"),
    ("stable_exact_match", "stable EM", "{:.3f}"),
    ("stable_change", "stable Δ", "{:+.3f}"),
    ("stable_fact_accuracy", "stable facts", "{:.3f}"),
    ("stable_fact_change", "stable facts Δ", "{:+.3f}"),
    ("general_loss_vs_base", "general loss vs base", "{:+.1%}"),
    ("general_agreement", "agreement", "{:.3f}"),
    ("general_similarity", "similarity", "{:.3f}"),
    ("general_retention", "retention", "{:.3f}"),
    ("wiki_leakage", "leakage", "{:.3f}"),
    ("decision", "decision", "{}"),
]


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for row in results:
        cells = ["–" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--arms", default="delta,full")
    parser.add_argument(
        "--cycles", type=int, default=len(BURSTS), help="edit bursts after cycle 0 (at most 3)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a recipe setting for both arms (YAML value), e.g. general_answers=base",
    )
    args = parser.parse_args()
    overrides = {}
    for setting in args.set:
        field, _, value = setting.partition("=")
        overrides[field] = yaml.safe_load(value)
    root = args.home or Path(tempfile.mkdtemp(prefix="wikitune-learning-"))
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    out = root / "learning.json"
    for arm in args.arms.split(","):
        run_arm(
            arm,
            root / arm,
            results,
            out,
            cycles=min(args.cycles, len(BURSTS)),
            overrides=overrides,
        )
    print(table(results))
    by_cycle = {(r["arm"], r["cycle"]): r for r in results}
    for index in range(1, len(BURSTS) + 1):
        delta, full = by_cycle.get(("delta", index)), by_cycle.get(("full", index))
        if delta and full:
            share = delta["train_seconds"] / full["train_seconds"]
            print(
                f"cycle {index}: delta trains in {share:.2f} of full's seconds"
                f" ({delta['changed_pairs']} changed pairs)"
            )


if __name__ == "__main__":
    main()
