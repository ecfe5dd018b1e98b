"""Training the packaged SmolLM2-135M-Instruct on this machine: real (non-padding) tokens per
second and peak resident memory of plain LoRA in fp32, plain LoRA under bf16 autocast, QLoRA
with a 4-bit NF4 base, and bf16 LoRA with the dropout the recipe had before, each in a process
of its own, in one run, with the CPU's bf16 flags; with ``--demo``, also the seconds each phase
of the demo's two cycles takes.

    .venv/bin/python benchmarks/smollm2_bench.py [--pages 40] [--steps 12] [--demo]

Both methods train the demo's recipe (``smollm2-135m-cpu``) on the same snapshot of synthetic
VTuber pages, rendered with SmolLM2's own chat template (prompt-completion rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train_bench import make_data  # the same synthetic pages and snapshot as train_bench

from wikitune.config import load_settings
from wikitune.tasks import basemodel, chat, snapshots
from wikitune.tasks import model as models
from wikitune.tasks import train as training
from wikitune.tasks.recipe import TrainingRecipe

# arm: (method, precision, recipe changes). The last arm is the recipe before PEFT's LoRA dropout
# was turned off: on a CPU its masks (torch's bernoulli_, seven a layer) took a fifth of a step.
ARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lora": ("lora", "fp32", {}),
    "lora-bf16": ("lora", "bf16", {}),
    "qlora-nf4": ("qlora-nf4", "fp32", {}),
    "lora-bf16-dropout": ("lora", "bf16", {"lora_dropout": 0.05}),
}


def child(arm: str, base: str, snapshot: str, steps: int, out: Path) -> None:
    """Train ``steps`` steps of ``arm``; write real tokens per second to ``out``."""
    method, precision, changes = ARMS[arm]
    recipe = TrainingRecipe.from_file("smollm2-135m-cpu").replace(
        max_steps=steps, logging_steps=steps, **changes
    )
    data = snapshots.read_snapshot(snapshot)
    tokenizer = models.load_tokenizer(base)
    fmt = chat.chat_format(tokenizer)
    model = training.prepare_model(base, recipe, method=method, device="cpu", init_adapter=None)  # type: ignore[arg-type]
    rows = chat.tokenize_rows(data.splits["train"].select_columns(["messages"]), tokenizer, fmt)
    trainer = training.make_trainer(
        model,
        tokenizer,
        recipe,
        device="cpu",
        output_dir=out.parent / f"out-{method}",
        train_dataset=rows,
        eval_datasets={},
        callbacks=[],
        precision=precision,  # type: ignore[arg-type]
    )
    real = 0
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step == steps:
            break
        real += batch["input_ids"].numel()  # padding-free: every token is real
    started = time.perf_counter()
    output_loss = trainer.train().training_loss
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"real_tokens": real, "seconds": seconds, "loss": output_loss}))


def measure(arm: str, base: str, snapshot: str, steps: int, tmp: Path) -> dict[str, Any]:
    """Run ``child`` in a process of its own; its result and peak resident memory."""
    out = tmp / f"{arm}.json"
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", arm, base, snapshot, str(steps), str(out)],
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"{arm} failed with status {status}")
    result = json.loads(out.read_text())
    return {
        "tokens_per_s": result["real_tokens"] / result["seconds"],
        "peak_rss_gb": usage.ru_maxrss / 1024**2,  # KiB on Linux
        "seconds": result["seconds"],
        "loss": result["loss"],
    }


def demo_phases(tmp: Path) -> list[dict[str, float]]:
    """The demo's two cycles on SmolLM2, seconds per phase."""
    from wikitune.demo import run_demo

    outcome = run_demo(tmp / "demo", lambda *_: None, lambda *_: None)
    return outcome.phases


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, base, snapshot, steps, out = sys.argv[2:7]
        child(method, base, snapshot, int(steps), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--demo", action="store_true", help="also time the demo's phases")
    args = parser.parse_args()
    settings = load_settings()
    base = basemodel.resolve_base_model("smollm2-135m-instruct", settings.models_dir)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        snapshot = make_data(tmp, args.pages)
        print(f"SmolLM2-135M-Instruct ({base.digest[:23]}), {args.steps} steps of the CPU recipe")
        print(f"CPU: {models.resolve_precision('auto', 'cpu')[1]}")
        results = {arm: measure(arm, base.path, snapshot, args.steps, tmp) for arm in ARMS}
        header = f"{'arm':<18}{'real tokens/s':>15}{'peak RSS GB':>13}{'train s':>10}{'loss':>8}"
        print(header)
        for arm, r in results.items():
            print(
                f"{arm:<18}{r['tokens_per_s']:>15.1f}{r['peak_rss_gb']:>13.2f}"
                f"{r['seconds']:>10.1f}{r['loss']:>8.4f}"
            )
        for arm, baseline in (
            ("lora-bf16", "lora"),
            ("qlora-nf4", "lora"),
            ("lora-bf16", "lora-bf16-dropout"),
        ):
            other, before = results[arm], results[baseline]
            print(
                f"ratio {arm}/{baseline}: throughput"
                f" {other['tokens_per_s'] / before['tokens_per_s']:.2f}x,"
                f" peak memory {other['peak_rss_gb'] / before['peak_rss_gb']:.2f}x"
            )
        if args.demo:
            phases = demo_phases(tmp)
            names = ("sync", "build", "snapshot", "train", "evaluate", "promote", "total")
            print(
                f"{'demo phase':<12}"
                + "".join(f"{f'cycle {i + 1}':>10}" for i in range(len(phases)))
            )
            for name in names:
                print(f"{name:<12}" + "".join(f"{p.get(name, 0):>10.0f}" for p in phases))


if __name__ == "__main__":
    main()
