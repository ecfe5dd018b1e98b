"""Serving speed of `wikitune serve` on a home's champion (the demo's SmolLM2 one): completion
tokens per second and p50/p95 latency with the official openai client, for 1 client, 8 clients
sharing batches, and 8 clients answered one request at a time (``--max-batch 1``, the
baseline), each arm a server process of its own, in one run.

    .venv/bin/python benchmarks/serve_bench.py --home /tmp/wikitune-demo [--requests 32]
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

import openai
import requests

from wikitune.localwiki import free_port


def questions(home: Path, count: int) -> list[str]:
    """Held-out questions of the home's latest snapshot."""
    latest = max((home / "snapshots").iterdir(), key=lambda p: p.name)
    rows = [json.loads(line) for line in (latest / "eval.jsonl").read_text().splitlines()]
    asked = [row["messages"][-2]["content"] for row in rows]
    return (asked * (count // len(asked) + 1))[:count]


def arm(home: Path, asked: list[str], *, clients: int, max_batch: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "wikitune.cli", "serve", "--home", str(home)),
            *("--port", str(port), "--max-batch", str(max_batch)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).json()["version"]:
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
                messages=[{"role": "user", "content": question}],
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
    latencies = sorted(seconds for seconds, _ in results)
    return {
        "tokens_per_s": sum(tokens for _, tokens in results) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()
    asked = questions(args.home, args.requests)
    arms = {
        "8 clients, one request at a time (baseline)": arm(
            args.home, asked, clients=8, max_batch=1
        ),
        "1 client": arm(args.home, asked, clients=1, max_batch=8),
        "8 clients, shared batches": arm(args.home, asked, clients=8, max_batch=8),
    }
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    print(f"{args.requests} greedy requests of up to 64 tokens; CPU bf16 flags: {bf16 or 'none'}")
    print("| arm | tokens/s | p50 s | p95 s |\n| --- | ---: | ---: | ---: |")
    for name, row in arms.items():
        print(f"| {name} | {row['tokens_per_s']:.1f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} |")
    base = arms["8 clients, one request at a time (baseline)"]["tokens_per_s"]
    shared = arms["8 clients, shared batches"]["tokens_per_s"]
    print(f"ratio shared batches / one at a time: {shared / base:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
