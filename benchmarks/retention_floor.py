"""How much of ``general_retention`` a change that teaches nothing already costs: the packaged
SmolLM2-135M-Instruct's greedy answers to the shipped probes in fp32 (the evaluation's) against
the same model under bf16 autocast; with ``--home``, that home's first trained adapter (say the
demo's version 1) scaled to a quarter, a half, three quarters and whole, with the share of its
snapshot's held-out facts each answers right. All in one run, scored as the evaluation scores.

    .venv/bin/python benchmarks/retention_floor.py [--home /tmp/wikitune-demo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval_bench import _smollm2  # the packaged SmolLM2 as the evaluation loads it

from wikitune.tasks import model as models
from wikitune.tasks.dataset import load_general_probes
from wikitune.tasks.scoring import PROBE_TOKENS, fact_right, general_retention, states

SCALES = (0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="a wikitune home with a trained adapter")
    args = parser.parse_args()
    probes = load_general_probes()
    conversations = [row["messages"][:-1] for row in probes]
    accepts = [list(row["accept"]) for row in probes]
    questions = [row["messages"][0]["content"] for row in probes]
    model, tokenizer = _smollm2()

    def answer(conversations: list, max_new_tokens: int = PROBE_TOKENS) -> list[str]:
        return models.generate_answers(
            model, tokenizer, conversations, batch_size=32, max_new_tokens=max_new_tokens
        )

    def retention(answers: list[str]) -> float:
        return general_retention(answers, fp32, accepts, questions) or 0.0

    fp32 = answer(conversations)
    right = [states(a, ok, asked=q) for a, ok, q in zip(fp32, accepts, questions, strict=True)]
    with models.computing_in("bf16", "cpu"):
        bf16 = answer(conversations)
    print(f"the bare base answers {sum(right)} of {len(probes)} probes right in fp32")
    print(f"the bare base under bf16 autocast: retention {retention(bf16):.3f}")
    if args.home is None:
        return
    from peft import PeftModel

    adapter = sorted(args.home.glob("runs/*-*-*/adapter"))[0]
    snapshot = args.home / "snapshots" / adapter.parent.name.rsplit("-", 1)[0]
    rows = [json.loads(line) for line in (snapshot / "eval.jsonl").read_text().splitlines()]
    model = PeftModel.from_pretrained(model, str(adapter))
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    for scale in SCALES:
        for name, parameter in model.named_parameters():
            if name in trained:
                parameter.data.copy_(trained[name] * scale)
        facts = answer([row["messages"][:-1] for row in rows], 48)
        right_facts = sum(fact_right(a, row) for a, row in zip(facts, rows, strict=True))
        kept = retention(answer(conversations))
        print(
            f"{adapter.parent.name} adapter x{scale}: retention {kept:.3f},"
            f" held-out facts right {right_facts / len(rows):.3f}"
        )


if __name__ == "__main__":
    main()
