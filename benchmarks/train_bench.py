"""Training batches: the share of tokens in a batch that are real (not padding) and the training
throughput in real tokens per second, wikitune's packed padding-free rows against padding every
row to max length, as ratios in one run.

    .venv/bin/python benchmarks/train_bench.py [--pages 40] [--steps 30] [--size tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from build_bench import page  # the same synthetic VTuber pages as the build benchmark

from wikitune.storage import Store, SyncBatch
from wikitune.tasks import chat, snapshots
from wikitune.tasks import model as models
from wikitune.tasks import train as training
from wikitune.tasks.dataset import load_general, make_snapshot
from wikitune.tasks.qa import build_pairs, load_mapping
from wikitune.tasks.recipe import TrainingRecipe


def make_data(tmp: Path, pages: int) -> str:
    with Store(tmp / "wiki.duckdb") as store:
        store.record_source("bench", {"api_url": "http://bench"})
        store.apply("bench", SyncBatch(pages=[page(n, n, f"Agency {n % 7}") for n in range(pages)]))
        build_pairs(store, "bench", load_mapping())
        record = make_snapshot(
            store, "bench", snapshots_dir=tmp / "snapshots", system_prompt="You are helpful."
        )
        return record.path


def run(
    base: Path, snapshot: str, recipe: TrainingRecipe, *, device: str, method: str, batching: str
) -> dict[str, Any]:
    data = snapshots.read_snapshot(snapshot)
    model = training.prepare_model(
        str(base), recipe, method=method, device=device, init_adapter=None
    )
    tokenizer = models.load_tokenizer(str(base))
    fmt = chat.chat_format(tokenizer)
    trainer = training.make_trainer(
        model,
        tokenizer,
        recipe,
        device=device,
        output_dir=base.parent / f"out-{method}-{batching}",
        train_dataset=chat.tokenize_rows(
            data.splits["train"].select_columns(["messages"]), tokenizer, fmt
        ),
        eval_datasets={},
        callbacks=[],
        batching=batching,  # type: ignore[arg-type]
    )
    real = total = 0
    for step, batch in enumerate(trainer.get_train_dataloader()):
        if step == recipe.sft["max_steps"]:
            break
        total += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    del trainer, model
    return {"real_share": real / total, "real_tokens_per_s": real / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", default="tiny", choices=sorted(models.MODEL_SIZES))
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        snapshot = make_data(tmp, args.pages)
        texts = [m["content"] for row in load_general() for m in row["messages"]]
        base = models.make_base_model(tmp / "base", texts, size=args.size, pretrain_steps=0)
        recipe = TrainingRecipe(
            max_steps=args.steps,
            max_length=args.max_length,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            logging_steps=args.steps,
        )
        quantized = "qlora-nf4" if models.fourbit_available(device) else "lora"
        print(f"device {device}, {args.size} model, {args.steps} steps of {args.batch_size} rows")
        packed = run(base, snapshot, recipe, device=device, method=quantized, batching="packed")
        padded = run(base, snapshot, recipe, device=device, method=quantized, batching="padded")
        for name, result in (("packed (wikitune)", packed), ("padded to max length", padded)):
            print(
                f"{name:>22}: real tokens {result['real_share']:.1%} of the batch,"
                f" {result['real_tokens_per_s']:,.0f} real tokens/s"
            )
        share = packed["real_share"] / padded["real_share"]
        speed = packed["real_tokens_per_s"] / padded["real_tokens_per_s"]
        print(f"ratio packed/padded: real-token share {share:.2f}x, throughput {speed:.2f}x")


if __name__ == "__main__":
    main()
