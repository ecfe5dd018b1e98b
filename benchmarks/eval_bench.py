"""Evaluation speed: questions per second of batched greedy answering against one question at a
time, on the same model and questions, as a ratio in one run; with ``--probes``, the packaged
SmolLM2 answering the shipped general probes (32 tokens each, as the evaluation does) in batches
of 32 rows against batches of 64; with ``--adapters``, two LoRA adapters of the packaged SmolLM2
answering the probes one after the other, computed beside the base against merged into it (as
the evaluation answers, ``scoring.as_adapter``).

    .venv/bin/python benchmarks/eval_bench.py [--questions 64] [--batch-size 16] [--size tiny]
    .venv/bin/python benchmarks/eval_bench.py --probes
    .venv/bin/python benchmarks/eval_bench.py --adapters
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from train_bench import make_data  # the same synthetic snapshot as the training benchmark

from wikitune.config import load_settings
from wikitune.tasks import basemodel
from wikitune.tasks import model as models
from wikitune.tasks.dataset import load_general, load_general_probes, split_general
from wikitune.tasks.scoring import PROBE_TOKENS, as_adapter


def _smollm2() -> tuple[Any, Any]:
    """The packaged SmolLM2 as the evaluation loads it, and its tokenizer."""
    base = basemodel.resolve_base_model("smollm2-135m-instruct", load_settings().models_dir)
    return models.load_base_model(base.path, device="cpu", quantize=False), models.load_tokenizer(
        base.path
    )


def adapters() -> None:
    """Two adapters (the CPU recipe's shape, random weights: speed does not depend on them)
    answering the probes beside the base, then merged into it, in one process."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base, tokenizer = _smollm2()
    shape = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, shape, adapter_name="first")
    model.add_adapter("second", shape)
    conversations = [row["messages"] for row in load_general_probes()]
    models.generate_answers(model, tokenizer, conversations[:4], max_new_tokens=4)  # warm-up
    seconds, answers = {}, {}
    for merged in (False, True):
        started = time.perf_counter()
        answers[merged] = []
        for name in ("first", "second"):
            model.set_adapter(name)
            with as_adapter(model, name) if merged else contextlib.nullcontext():
                answers[merged] += models.generate_answers(
                    model, tokenizer, conversations, batch_size=64, max_new_tokens=PROBE_TOKENS
                )
        seconds[merged] = time.perf_counter() - started
    same = sum(a == b for a, b in zip(answers[False], answers[True], strict=True))
    print(f"{len(conversations)} general probes, two adapters of SmolLM2-135M-Instruct in fp32")
    print(f"beside the base: {seconds[False]:.1f} s; merged into it: {seconds[True]:.1f} s")
    print(f"ratio merged/beside: {seconds[False] / seconds[True]:.2f}x faster;", end=" ")
    print(f"same answers {same}/{len(answers[True])}")


def probes() -> None:
    """The packaged SmolLM2's probe answers in batches of 32 rows, then of 64, in one process."""
    model, tokenizer = _smollm2()
    conversations = [row["messages"] for row in load_general_probes()]
    models.generate_answers(model, tokenizer, conversations[:4], max_new_tokens=4)  # warm-up
    seconds, answers = {}, {}
    for batch_size in (32, 64):
        started = time.perf_counter()
        answers[batch_size] = models.generate_answers(
            model, tokenizer, conversations, batch_size=batch_size, max_new_tokens=PROBE_TOKENS
        )
        seconds[batch_size] = time.perf_counter() - started
    same = sum(a == b for a, b in zip(answers[32], answers[64], strict=True))
    precision = models.answer_precision(model)
    print(f"{len(conversations)} general probes, SmolLM2-135M-Instruct in {precision}")
    for batch_size, took in seconds.items():
        print(f"batches of {batch_size}: {took:.1f} s")
    ratio = seconds[32] / seconds[64]
    print(f"ratio 64/32 rows a batch: {ratio:.2f}x; same answers {same}/{len(conversations)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", default="tiny", choices=sorted(models.MODEL_SIZES))
    parser.add_argument("--probes", action="store_true", help="time SmolLM2's probe batches")
    parser.add_argument(
        "--adapters", action="store_true", help="time adapters merged against beside the base"
    )
    args = parser.parse_args()
    if args.probes:
        probes()
        return
    if args.adapters:
        adapters()
        return
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
