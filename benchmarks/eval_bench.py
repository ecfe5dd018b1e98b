"""Evaluation speed: questions per second of batched greedy answering against one question at a
time, on the same model and questions, as a ratio in one run.

    .venv/bin/python benchmarks/eval_bench.py [--questions 64] [--batch-size 16] [--size tiny]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from train_bench import make_data  # the same synthetic snapshot as the training benchmark

from wikitune.tasks import model as models
from wikitune.tasks.dataset import load_general, split_general


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", default="tiny", choices=sorted(models.MODEL_SIZES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        snapshot = Path(make_data(tmp, 40))
        rows = [json.loads(line) for line in (snapshot / "eval.jsonl").read_text().splitlines()]
        questions = [row["messages"] for row in rows[: args.questions]]
        pool, _ = split_general(load_general())
        base = models.make_base_model(
            tmp / "base",
            [m["content"] for row in pool for m in row["messages"]],
            pretrain_chats=[row["messages"] for row in pool],
            size=args.size,
        )
        model = models.load_base_model(str(base), device="cpu", quantize=False)
        tokenizer = models.load_tokenizer(str(base))
        models.generate_answers(model, tokenizer, questions[:2])  # warm-up

        started = time.perf_counter()
        one_by_one = models.generate_answers(model, tokenizer, questions, batch_size=1)
        single_s = time.perf_counter() - started
        started = time.perf_counter()
        batched = models.generate_answers(model, tokenizer, questions, batch_size=args.batch_size)
        batched_s = time.perf_counter() - started
    same = sum(a == b for a, b in zip(one_by_one, batched, strict=True)) / len(questions)
    print(f"{len(questions)} eval questions, {args.size} model, greedy, up to 48 new tokens")
    print(f"one at a time: {len(questions) / single_s:.1f} questions/s")
    print(f"batches of {args.batch_size}: {len(questions) / batched_s:.1f} questions/s")
    print(f"ratio batched/one-at-a-time: {single_s / batched_s:.2f}x; same answers {same:.0%}")


if __name__ == "__main__":
    main()
