"""`wikitune serve` for real: a server process on the demo's SmolLM2 champion, driven with the
official openai client while the registry's `champion` alias moves under it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from helpers import mlflow_client
from vllm_replay import VllmReplay

from wikitune.localwiki import free_port
from wikitune.mlflow import registry
from wikitune.serving.vllm import VllmPushError, VllmTarget
from wikitune.tasks import model as models

KEY = "serve-test-key-5b1f"
MODEL = "wikitune-demo-wiki"
SWAP_BOUND_S = 90  # a poll every 0.5 s, then loading SmolLM2 and merging its adapter


def _health(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/health", timeout=10).json()


def _wait_for(condition: Any, what: str, timeout: float = SWAP_BOUND_S) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"no {what} within {timeout} s"
        time.sleep(0.25)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def server(demo: dict[str, Any]) -> Iterator[dict[str, Any]]:
    assert demo["result"].returncode == 0, demo["result"].stderr[-3000:]
    home = Path(demo["home"])
    port = free_port()
    log_path = home / "serve.log"
    vllm = VllmReplay("load_ok")  # vLLM cannot run here: its recorded replies stand in
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "wikitune.cli", "serve", "--home", str(home)),
                *("--port", str(port), "--poll-seconds", "0.5", "--vllm-url", vllm.url),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**demo["env"], "WIKITUNE_SERVE_API_KEY": KEY},
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            return _health(url)["version"] == "2"
        except requests.ConnectionError:
            return False

    _wait_for(up, "server answering with version 2", timeout=180)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    yield {
        "url": url,
        "home": home,
        "client": client,
        "log": log_path,
        "env": demo["env"],
        "vllm": vllm,
    }
    process.terminate()
    process.wait(timeout=60)
    vllm.close()
    assert KEY not in log_path.read_text()  # the key is never logged


def _recorded_answers(home: Path, version: str) -> list[dict[str, Any]]:
    """The evaluation's answers of a version's candidate, from its MLflow run."""
    client = mlflow_client(home)
    run_id = client.get_model_version(MODEL, version).run_id
    path = client.download_artifacts(run_id, "evaluation_answers.json", str(home / "answers"))
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def _ask(client: openai.OpenAI, question: str, max_tokens: int = 64) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=max_tokens,
    )


def test_the_endpoint_answers_as_the_evaluation_did(server: dict[str, Any]) -> None:
    """Greedy answers through the endpoint (8 at a time, sharing batches) equal the answers the
    evaluation recorded for the champion, with the evaluation's token budget."""
    client, home = server["client"], server["home"]
    (listed,) = client.models.list().data
    assert listed.id == MODEL and listed.model_extra["version"] == "2"
    rows = _recorded_answers(home, "2")
    logged = registry.download_logged_model(
        f"sqlite:///{home / 'mlflow.db'}", f"models:/{MODEL}/2", home / "tokenizer-v2"
    )
    tokenizer = models.load_tokenizer(logged.tokenizer_dir)
    budget = 8 + max(len(tokenizer(r["reference"])["input_ids"]) for r in rows)
    asked = rows[:24]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda r: _ask(client, r["question"], budget), asked))
    assert {reply.system_fingerprint for reply in replies} == {f"{MODEL}/v2"}
    different = [
        (row["question"], row["candidate"], reply.choices[0].message.content)
        for row, reply in zip(asked, replies, strict=True)
        if reply.choices[0].message.content.strip() != row["candidate"]
    ]
    assert not different
    usage = replies[0].usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_alias_moves_under_streaming_clients_and_no_request_fails(
    server: dict[str, Any],
) -> None:
    """`rollback` to version 1, then back to 2 (a promotion, as the server sees it) while four
    clients stream: every request completes, new ones reach the new version within the bound,
    and version 2 answers the edited fact with its new value."""
    client, url, env = server["client"], server["url"], server["env"]

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "wikitune.cli", *args, "--home", str(server["home"])],
            capture_output=True,
            text=True,
            env={**env, "WIKITUNE_SERVE_API_KEY": KEY},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    edited = next(
        r
        for r in _recorded_answers(server["home"], "2")
        if r["fresh"] and "晨星社二期" in r["reference"] and "晨星社二期" in r["candidate"]
    )
    cli("rollback", "--to", "1")
    _wait_for(lambda: _health(url)["version"] == "1", "swap to version 1")
    assert _ask(client, edited["question"]).system_fingerprint == f"{MODEL}/v1"

    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream_until_stopped() -> None:
        while not stop.is_set():
            try:
                chunks = list(
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": edited["question"]}],
                        temperature=0,
                        max_tokens=48,
                        stream=True,
                    )
                )
                assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
                seen.append(chunks[-1].system_fingerprint)
            except Exception as error:  # counted, not raised: the thread must go on
                failures.append(repr(error))

    clients = [threading.Thread(target=stream_until_stopped) for _ in range(4)]
    for thread in clients:
        thread.start()
    _wait_for(lambda: len(seen) >= 4, "streams on version 1")
    cli("rollback", "--to", "2")
    moved = time.monotonic()
    _wait_for(lambda: f"{MODEL}/v2" in seen[-4:], "streams on version 2")
    took = time.monotonic() - moved
    done_before = len(seen)
    _wait_for(lambda: len(seen) >= done_before + 4, "more streams on version 2")
    stop.set()
    for thread in clients:
        thread.join(timeout=120)
    assert not failures, failures
    assert seen[0] == f"{MODEL}/v1" and seen[-1] == f"{MODEL}/v2"
    assert took < SWAP_BOUND_S
    health = _health(url)
    assert health["last_swap"]["from"] == "1" and health["last_swap"]["to"] == "2"
    tags = mlflow_client(server["home"]).get_model_version(MODEL, "2").tags
    assert tags["live_since"] == health["last_swap"]["at"] and tags["live_on"] == f"{url}/v1"
    answer = _ask(client, edited["question"]).choices[0].message.content
    assert answer.strip() == edited["candidate"] and "晨星社二期" in answer
    assert cli("ask", edited["question"], "--url", url).strip() == edited["candidate"]
    # Each version that went live was pushed to vLLM too, under the one served name.
    pushed = [_pushed_version(sent) for sent in server["vllm"].received]
    assert pushed[-2:] == ["1", "2"], pushed
    assert health["last_vllm_push"]["version"] == "2" and "answer" in health["last_vllm_push"]


def _pushed_version(sent: dict[str, Any]) -> str:
    """The version whose adapter a load request sent to vLLM names (its files, checked)."""
    assert sent["path"] == "/v1/load_lora_adapter" and sent["body"]["lora_name"] == MODEL
    adapter = Path(sent["body"]["lora_path"])
    assert (adapter / "adapter_model.safetensors").is_file()
    (version,) = re.findall(r"/v(\d+)/", str(adapter))
    return version


def test_a_long_answer_holds_up_no_one_and_a_client_that_leaves_frees_its_slot(
    server: dict[str, Any],
) -> None:
    """A short question asked while a long answer streams is answered before it (it joins the
    running batch); closing the long stream drops its request from the batch."""
    client, url = server["client"], server["url"]
    cancelled_before = _health(url)["requests_cancelled"]
    long = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 500, one number per line."}],
        temperature=0,
        max_tokens=3000,
        stream=True,
        extra_body={"ignore_eos": True},  # 3000 tokens, however the model would answer
    )
    pieces = 0
    for chunk in long:
        pieces += bool(chunk.choices and chunk.choices[0].delta.content)
        if pieces == 5:
            break
    short = _ask(client, "What is the capital of France?", 24)
    assert short.choices[0].message.content
    assert _health(url)["requests_in_flight"] == 1  # the long answer is still generating
    long.close()
    _wait_for(lambda: _health(url)["requests_in_flight"] == 0, "the left request dropped", 30)
    assert _health(url)["requests_cancelled"] == cancelled_before + 1


def test_a_version_that_fails_to_load_never_serves(server: dict[str, Any], tmp_path: Path) -> None:
    """A version 3 whose adapter file is cut short, made champion by hand: version 2 goes on
    answering and /health says why 3 is not served."""
    client, url, home = server["client"], server["url"], server["home"]
    versions = mlflow_client(home)
    two = versions.get_model_version(MODEL, "2")
    broken = Path(_copy_of_logged_model(two.source, tmp_path / "v2"))
    (weights,) = broken.rglob("adapter_model.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    three = versions.create_model_version(MODEL, source=str(broken), run_id=two.run_id)
    versions.set_registered_model_alias(MODEL, "champion", three.version)
    try:
        _wait_for(
            lambda: (_health(url)["last_failed_load"] or {}).get("version") == str(three.version),
            "failed load reported",
        )
        health = _health(url)
        assert health["version"] == "2"
        assert "safetensor" in health["last_failed_load"]["error"].lower()
        assert _ask(client, "Hello?").system_fingerprint == f"{MODEL}/v2"
        assert f"version {three.version} of demo-wiki failed to load" in server["log"].read_text()
        assert health["last_vllm_push"]["version"] == "2"  # nor was it pushed to vLLM
    finally:
        versions.set_registered_model_alias(MODEL, "champion", "2")


def _copy_of_logged_model(model_uri: str, dst: Path) -> str:
    """A writable copy of a logged model's files."""
    import mlflow

    dst.mkdir(parents=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))
    copy = dst.parent / "broken"
    shutil.copytree(local, copy)
    return str(copy)


def test_bad_requests_get_openai_shaped_errors_that_name_the_problem(
    server: dict[str, Any],
) -> None:
    url = server["url"]
    chat = f"{url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    question = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert requests.post(chat, json=question, timeout=30).status_code == 401

    def refused(body: Any, status: int, *, raw: bool = False) -> str:
        kwargs = {"data": body} if raw else {"json": body}
        headers = {**auth, "Content-Type": "application/json"}
        reply = requests.post(chat, headers=headers, timeout=60, **kwargs)
        assert reply.status_code == status, reply.text
        return reply.json()["error"]["message"]

    assert "not valid JSON" in refused("{not json", 400, raw=True)
    assert "JSON object" in refused("[1, 2]", 400, raw=True)
    assert "messages" in refused({"model": MODEL}, 400)
    assert "role" in refused({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400)
    assert "max_tokens" in refused({**question, "max_tokens": 0}, 400)
    assert "max_tokens" in refused({**question, "max_tokens": 10**6}, 400)
    assert "n:" in refused({**question, "n": 3}, 400)
    assert "not served here" in refused({**question, "model": "gpt-4o"}, 404)
    long = {"model": MODEL, "messages": [{"role": "user", "content": "星野灯 " * 9000}]}
    assert "context window" in refused(long, 400)
    assert "bytes" in refused("x" * 1_100_000, 413, raw=True)
    assert _health(url)["status"] == "ok"  # and the server is still up


def test_pushing_an_adapter_to_vllm_loads_it_in_place_under_one_name(tmp_path: Path) -> None:
    """Against vLLM's recorded replies: a current vLLM loads in place; an older one, which
    refuses a name it has, gets an unload first; each refusal is an error that says why."""
    adapter = tmp_path / "adapter"
    with VllmReplay("load_ok") as vllm:
        target = VllmTarget(vllm.url, MODEL, api_key="vllm-key")
        assert "added successfully" in target.push(adapter)
        (sent,) = vllm.received
        assert sent["path"] == "/v1/load_lora_adapter"
        assert sent["body"] == {"lora_name": MODEL, "lora_path": str(adapter), "load_inplace": True}
        assert sent["authorization"] == "Bearer vllm-key"
    with VllmReplay("already_loaded", "unload_ok", "load_ok") as vllm:
        assert "added successfully" in VllmTarget(vllm.url, MODEL).push(adapter)
        assert [r["path"] for r in vllm.received] == [
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
            "/v1/load_lora_adapter",
        ]
        assert vllm.received[1]["body"] == {"lora_name": MODEL}
        assert "load_inplace" not in vllm.received[2]["body"]
    refusals = {
        "no_runtime_updating": "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
        "bad_path": "HTTP 404: Loading lora wikitune-demo-wiki failed: No adapter found",
        "unauthorized": "HTTP 401: Unauthorized",
    }
    for reply, says in refusals.items():
        with VllmReplay(reply) as vllm, pytest.raises(VllmPushError, match=re.escape(says)):
            VllmTarget(vllm.url, MODEL).push(adapter)
    with pytest.raises(VllmPushError, match="could not reach vLLM"):
        VllmTarget(f"http://127.0.0.1:{free_port()}", MODEL).push(adapter)
