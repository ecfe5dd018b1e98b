"""Serving speed of `wikitune serve` on a home's champion (the demo's SmolLM2 one): completion
tokens per second and p50/p95 latency with the official openai client, for 1 client, 8 clients
sharing batches, 8 clients answered one request at a time (``--max-batch 1``, the baseline),
and 8 clients of ``transformers serve --continuous-batching`` on the same merged weights, each
arm a server process of its own, in one run.

    .venv/bin/python benchmarks/serve_bench.py --home /tmp/wikitune-demo [--requests 32]

The home must not be served meanwhile: each arm is the only server on these cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import requests

from wikitune.localwiki import free_port


def questions(home: Path, count: int) -> list[str]:
    """Held-out questions of the home's latest snapshot."""
    latest = max((home / "snapshots").iterdir(), key=lambda p: p.name)
    rows = [json.loads(line) for line in (latest / "eval.jsonl").read_text().splitlines()]
    asked = [row["messages"][-2]["content"] for row in rows]
    return (asked * (count // len(asked) + 1))[:count]


def merged_champion(home: Path, source: str) -> tuple[Path, str]:
    """The champion's adapter merged into its base and saved where ``transformers serve`` can
    load it, and the dtype it was evaluated in."""
    from wikitune.config import load_settings
    from wikitune.mlflow import registry
    from wikitune.serving.engine import load_version

    settings = load_settings(home)
    champion = registry.champion(settings.tracking_uri, source)
    assert champion is not None, f"no champion of {source} in {settings.tracking_uri}"
    served = load_version(
        settings.tracking_uri, source, champion, workdir=settings.runs_dir / "serve-bench"
    )
    path = settings.runs_dir / "serve-bench" / f"merged-v{served.version}"
    served.model.save_pretrained(path)
    served.tokenizer.save_pretrained(path)
    return path, "bfloat16" if served.precision == "bf16" else "float32"


def arm(
    command: list[str], port: int, asked: list[str], *, clients: int, system: str
) -> tuple[int, float, list[float]]:
    """Start a server with ``command``, ask it ``asked`` from ``clients`` threads, stop it:
    the completion tokens, the wall seconds, and each request's latency."""
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/v1/models", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id

        def ask(question: str) -> tuple[float, int]:
            started = time.perf_counter()
            reply = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                temperature=0,
                max_tokens=64,
            )
            return time.perf_counter() - started, reply.usage.completion_tokens

        ask(asked[0])  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(ask, asked))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    return sum(tokens for _, tokens in results), wall, [seconds for seconds, _ in results]


def wikitune_serve(home: Path, port: int, max_batch: int) -> list[str]:
    return [
        *(sys.executable, "-m", "wikitune.cli", "serve", "--home", str(home)),
        *("--port", str(port), "--max-batch", str(max_batch)),
    ]


def transformers_serve(merged: Path, dtype: str, port: int) -> list[str]:
    executable = Path(sys.executable).with_name("transformers")
    return [
        *(str(executable), "serve", str(merged), "--continuous-batching", "--device", "cpu"),
        *("--dtype", dtype, "--port", str(port)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--source", default="demo-wiki")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=2, help="Arms run in turn this many times; pooled."
    )
    args = parser.parse_args()
    from wikitune.config import load_settings

    asked = questions(args.home, args.requests)
    system = load_settings(args.home).system_prompt
    merged, dtype = merged_champion(args.home, args.source)
    home = args.home
    baseline, shared = "8 clients, one request at a time (baseline)", "8 clients, shared batches"
    other = "8 clients, transformers serve (same merged weights)"
    arms: dict[str, tuple[Any, int]] = {
        baseline: (lambda port: wikitune_serve(home, port, 1), 8),
        "1 client": (lambda port: wikitune_serve(home, port, 8), 1),
        shared: (lambda port: wikitune_serve(home, port, 8), 8),
        other: (lambda port: transformers_serve(merged, dtype, port), 8),
    }
    pooled: dict[str, tuple[int, float, list[float]]] = {name: (0, 0.0, []) for name in arms}
    for _ in range(args.rounds):  # in turn, so that a noisy minute spreads over all arms
        for name, (command, clients) in arms.items():
            port = free_port()
            tokens, wall, latencies = arm(
                command(port), port, asked, clients=clients, system=system
            )
            before = pooled[name]
            pooled[name] = (before[0] + tokens, before[1] + wall, before[2] + latencies)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    print(
        f"{args.requests} greedy requests of up to 64 tokens per arm and round, {args.rounds}"
        f" rounds; weights in {dtype}; CPU bf16 flags: {bf16 or 'none'}"
    )
    print("| arm | tokens/s | p50 s | p95 s |\n| --- | ---: | ---: | ---: |")
    speed = {}
    for name, (tokens, wall, latencies) in pooled.items():
        speed[name] = tokens / wall
        ordered = sorted(latencies)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"| {name} | {speed[name]:.1f} | {statistics.median(ordered):.2f} | {p95:.2f} |")
    print(f"ratio shared batches / one at a time: {speed[shared] / speed[baseline]:.2f}x (>= 3x)")
    print(f"ratio shared batches / transformers serve: {speed[shared] / speed[other]:.2f}x (>= 1x)")


if __name__ == "__main__":
    main()
