"""What the distillation term (``general_distillation``) costs a training step of the packaged
SmolLM2-135M-Instruct on this machine: the mean milliseconds of a step without the term, with
it on every step and on every second step at twice the weight (the SmolLM2 recipe's
``distillation_every: 2``), in one process. The term is its own forward pass over two general
rows, against the base's kept log-probabilities. Every arm trains the same steps of the demo's
recipe on the same snapshot, in the recipe's precision: ``--snapshot`` (a demo home's
``snapshots/<id>``: the demo's rows) or one of synthetic VTuber pages.

    .venv/bin/python benchmarks/distillation_cost.py [--snapshot DIR] [--pages 40] [--steps 30]

The issue's bound: a step with the term at most 1.25x a step without it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from train_bench import make_data  # the same synthetic pages and snapshot as train_bench
from transformers import TrainerCallback

from wikitune.config import load_settings
from wikitune.tasks import basemodel, chat, snapshots
from wikitune.tasks import model as models
from wikitune.tasks import train as training
from wikitune.tasks.recipe import TrainingRecipe

ARMS = {"no term": 0, "term every step": 1, "term every second step": 2}
"""Arm: ``distillation_every`` (0: no term)."""
WARM_UP_STEPS = 3


class StepTimes(TrainerCallback):
    """Seconds of each optimizer step."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def step_ms(arm: str, base: basemodel.ResolvedBase, snapshot: str, steps: int, tmp: Path) -> float:
    """The mean milliseconds of a step of ``arm`` after the first few."""
    every = ARMS[arm]
    recipe = TrainingRecipe.from_file("smollm2-135m-cpu").replace(
        max_steps=steps + WARM_UP_STEPS, logging_steps=steps, distillation_every=max(every, 1)
    )
    precision, _ = models.resolve_precision(recipe.precision, "cpu")
    data = snapshots.read_snapshot(snapshot)
    tokenizer = models.load_tokenizer(base.path)
    fmt = chat.chat_format(tokenizer)
    model = training.prepare_model(
        base.path, recipe, method="lora", device="cpu", init_adapter=None
    )
    rows = chat.tokenize_rows(data.splits["train"].select_columns(["messages"]), tokenizer, fmt)
    distillation = None
    if every:
        distillation = training._distillation(
            data.splits["general_pool"],
            model,
            tokenizer,
            fmt,
            recipe,
            base=base,
            precision=precision,
            device="cpu",
            cache_dir=tmp / "base-answers",
        )
    timer = StepTimes()
    trainer = training.make_trainer(
        model,
        tokenizer,
        recipe,
        device="cpu",
        output_dir=tmp / "out",
        train_dataset=rows,
        eval_datasets={},
        callbacks=[timer],
        precision=precision,
        distillation=distillation,
    )
    trainer.train()
    return 1000 * statistics.mean(timer.seconds[WARM_UP_STEPS:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, default=None, help="a snapshot directory")
    parser.add_argument("--pages", type=int, default=40, help="synthetic pages, without one")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    base = basemodel.resolve_base_model("smollm2-135m-instruct", load_settings().models_dir)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        snapshot = str(args.snapshot) if args.snapshot else make_data(tmp, args.pages)
        print(f"SmolLM2-135M-Instruct, {args.steps} steps of the CPU recipe an arm")
        print(f"CPU: {models.resolve_precision('auto', 'cpu')[1]}")
        results = {arm: step_ms(arm, base, snapshot, args.steps, tmp) for arm in ARMS}
    print(f"{'arm':<24}{'ms/step':>9}{'vs no term':>12}")
    for arm, ms in results.items():
        print(f"{arm:<24}{ms:>9.0f}{ms / results['no term']:>11.2f}x")
    print("the issue's bound: 1.25x")


if __name__ == "__main__":
    main()
