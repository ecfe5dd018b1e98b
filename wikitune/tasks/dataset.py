"""Freeze the active QA pairs into an immutable snapshot: train and eval files that `datasets`
reads, with general chat data at an exact share of the training rows.

The snapshot's files are the only thing the training side reads; it never opens the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from wikitune.storage import QaPair, SnapshotAnswer, SnapshotRecord, Store
from wikitune.tasks.snapshots import MANIFEST_FILE, SnapshotManifest

__all__ = [
    "LIST_SEPARATOR",
    "fact_values",
    "general_rows_needed",
    "load_general",
    "load_general_probes",
    "make_snapshot",
    "previous_values",
    "probe_accepts",
    "sample_general",
    "split_general",
    "with_system",
]

# One general example in this many is held out for the general eval file.
GENERAL_EVAL_EVERY = 5


def load_general(path: Path | None = None) -> list[dict[str, Any]]:
    """General chat examples with ``messages`` (user/assistant turns): the bundled set, a JSONL
    file, or a directory saved by ``datasets``."""
    if path is None:
        text = resources.files("wikitune.data").joinpath("general.jsonl").read_text("utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif Path(path).is_dir():
        from datasets import load_from_disk

        rows = [dict(row) for row in load_from_disk(str(path))]
    else:
        with Path(path).open(encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
    for index, row in enumerate(rows):
        messages = row.get("messages")
        if not messages or not all({"role", "content"} <= set(m) for m in messages):
            raise ValueError(
                f"general example {index} in {path or 'the bundled set'} has no"
                " valid `messages` (a list of {role, content})"
            )
        if "id" not in row:
            row["id"] = (
                "general-"
                + hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:12]
            )
    return rows


LIST_SEPARATOR = "\n"
"""Between the items of a list in a snapshot column (``accept``, ``values``,
``previous_values``): a string, because `datasets` types a column by its first split, and a
list column that is empty there refuses the strings of a later one."""


def _listed(row: Mapping[str, Any], column: str) -> list[str]:
    return [item for item in str(row.get(column) or "").split(LIST_SEPARATOR) if item]


def probe_accepts(row: Mapping[str, Any]) -> list[str]:
    """The answers that count as right for a snapshot's probe row (none: not checkable)."""
    return _listed(row, "accept")


def fact_values(row: Mapping[str, Any]) -> list[str]:
    """The values an eval row's answer states (none in snapshots made before they were kept)."""
    return _listed(row, "values")


def previous_values(row: Mapping[str, Any]) -> list[str]:
    """The values a changed fact's question was answered with before (the champion
    snapshot's; none when the fact did not change or they were not kept)."""
    return _listed(row, "previous_values")


def load_general_probes() -> list[dict[str, Any]]:
    """The bundled general-knowledge probes, in English and Chinese: questions the general set
    holds none of, most with short checkable answers (``accept``: the answers that count as
    right). Evaluation compares each model's answers with the bare base model's: which of the
    probes the base answers right it still answers right, and whether wiki content leaks in."""
    text = resources.files("wikitune.data").joinpath("general_probes.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def split_general(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training pool, eval rows), disjoint, decided by each example's id."""
    pool, held = [], []
    for row in rows:
        digest = int(hashlib.sha256(str(row["id"]).encode()).hexdigest()[:8], 16)
        (held if digest % GENERAL_EVAL_EVERY == 0 else pool).append(row)
    return pool, held


def general_rows_needed(wiki_rows: int, share: float) -> int:
    """How many general rows make them ``share`` of the final mix (rounded to the nearest)."""
    if share <= 0 or wiki_rows == 0:
        return 0
    return round(wiki_rows * share / (1 - share))


def sample_general(pool: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` examples drawn deterministically from ``pool`` (cycling when it is smaller)."""
    if count and not pool:
        raise ValueError("the general set has no training examples to mix in")
    rng = random.Random(seed)
    picked: list[dict[str, Any]] = []
    while len(picked) < count:
        order = sorted(pool, key=lambda row: str(row["id"]))
        rng.shuffle(order)
        picked += order[: count - len(picked)]
    return picked


def with_system(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """The conversation with ``system_prompt`` as its only system turn (none when empty)."""
    turns = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": system_prompt}, *turns] if system_prompt else turns


def _wiki_row(pair: QaPair, system_prompt: str) -> dict[str, Any]:
    return {
        "id": pair.pair_id,
        "kind": "wiki",
        "pageid": pair.pageid,
        "revid": pair.revid,
        "title": pair.title,
        "field": pair.field,
        "lang": pair.lang,
        "accept": "",
        "values": LIST_SEPARATOR.join(pair.fact_values),
        "messages": with_system(
            [
                {"role": "user", "content": pair.question},
                {"role": "assistant", "content": pair.answer},
            ],
            system_prompt,
        ),
    }


def _general_row(row: dict[str, Any], system_prompt: str, kind: str = "general") -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "kind": kind,
        "pageid": None,
        "revid": None,
        "title": None,
        "field": None,
        "lang": row.get("lang"),
        "fresh": None,
        "previous": "",
        "previous_values": "",
        "values": "",
        "accept": LIST_SEPARATOR.join(row.get("accept") or []),
        "messages": with_system(row["messages"], system_prompt),
    }


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def make_snapshot(
    store: Store,
    source: str,
    *,
    snapshots_dir: Path,
    system_prompt: str,
    general_share: float = 0.10,
    general_path: Path | None = None,
    seed: int = 0,
) -> SnapshotRecord:
    """Freeze the active pairs of ``source`` into a snapshot (or return the latest snapshot when
    its content is identical). Files: ``train.jsonl``, ``eval.jsonl``, ``general_eval.jsonl``,
    ``general_probe.jsonl``, ``general_pool.jsonl`` and ``manifest.json`` under
    ``snapshots_dir/<id>/``."""
    pairs = store.active_pairs(source)
    if not pairs:
        raise ValueError(f"source {source!r} has no active QA pairs: run `wikitune build` first")
    # Fresh means new to the champion: a candidate that lost taught the registry nothing.
    champion = store.champion_snapshot(source)
    champion_facts = store.snapshot_facts(champion.id) if champion else set()
    # What the champion was taught to answer, for questions whose fact has changed since.
    champion_answers = store.snapshot_answers(champion.id) if champion else {}

    # Every file has the same columns, so `datasets` can load them as splits of one dataset.
    wiki_train, eval_rows = [], []
    for pair in pairs:
        row = _wiki_row(pair, system_prompt)
        row["fresh"] = pair.fact_hash not in champion_facts
        before = champion_answers.get(pair.pair_id)
        changed = row["fresh"] and before is not None and before.answer != pair.answer
        # "" rather than null: `datasets` types a column by the first split, and a null-typed
        # column refuses the strings of a later one.
        row["previous"] = before.answer if changed and before else ""
        row["previous_values"] = LIST_SEPARATOR.join(before.values) if changed and before else ""
        (wiki_train if pair.split == "train" else eval_rows).append(row)

    pool, general_eval = split_general(load_general(general_path))
    general = sample_general(pool, general_rows_needed(len(wiki_train), general_share), seed)
    train = wiki_train + [_general_row(r, system_prompt) for r in general]
    random.Random(seed).shuffle(train)
    general_eval_rows = [_general_row(r, system_prompt) for r in general_eval]
    # Every general example not held out, for a distillation term to range over (the training
    # mix samples only its share of them).
    pool_rows = [_general_row(r, system_prompt) for r in pool]
    probe_rows = [_general_row(r, system_prompt, kind="probe") for r in load_general_probes()]

    files = {
        "train.jsonl": _jsonl(train),
        "eval.jsonl": _jsonl(eval_rows),
        "general_eval.jsonl": _jsonl(general_eval_rows),
        "general_probe.jsonl": _jsonl(probe_rows),
        "general_pool.jsonl": _jsonl(pool_rows),
    }
    digest = hashlib.sha256(
        "".join(f"{name}\n{text}" for name, text in sorted(files.items())).encode()
    ).hexdigest()
    latest = store.latest_snapshot(source)
    if latest is not None and latest.digest == digest and Path(latest.path).exists():
        return latest

    fresh = sum(1 for r in eval_rows if r["fresh"])
    counts = {
        "pages": len({p.pageid for p in pairs}),
        "train_rows": len(train),
        "wiki_train_rows": len(wiki_train),
        "train_fresh": sum(1 for r in wiki_train if r["fresh"]),
        "general_train_rows": len(general),
        "eval_rows": len(eval_rows),
        "eval_fresh": fresh,
        "eval_stable": len(eval_rows) - fresh,
        "eval_changed_values": sum(1 for r in eval_rows if r["previous"]),
        "general_eval_rows": len(general_eval_rows),
        "general_probe_rows": len(probe_rows),
        "general_pool_rows": len(pool_rows),
    }
    created = datetime.now(UTC)
    snapshot_id = f"{created:%Y%m%dT%H%M%S}-{digest[:8]}"
    target = snapshots_dir / snapshot_id
    manifest = SnapshotManifest(
        id=snapshot_id,
        source=source,
        digest=digest,
        created_at=created.isoformat(),
        counts=counts,
        general_share=general_share,
        seed=seed,
        system_prompt=system_prompt,
        fresh_against=champion.id if champion else None,
        # Fresh is counted by fact: a changed mapping rewrites pairs without changing facts.
        mapping_digest=store.build_mapping_digest(source) or "",
        files={
            "train": "train.jsonl",
            "eval": "eval.jsonl",
            "general_eval": "general_eval.jsonl",
            "general_probe": "general_probe.jsonl",
            "general_pool": "general_pool.jsonl",
        },
    )
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{snapshot_id}-", dir=snapshots_dir))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        os.replace(staging, target)  # the snapshot appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = SnapshotRecord(
        id=snapshot_id,
        source=source,
        digest=digest,
        counts=counts,
        path=str(target),
        created_at=created.isoformat(),
    )
    taught = {p.pair_id: SnapshotAnswer(p.answer, p.fact_values) for p in pairs}
    answers = {row["id"]: taught[row["id"]] for row in eval_rows}
    store.record_snapshot(record, (p.fact_hash for p in pairs), answers)
    return record
