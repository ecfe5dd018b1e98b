"""Training with real parts: a snapshot from a real wiki, a base model built by
`make-base-model`, real TRL steps (QLoRA on this CPU), a real MLflow store and Prefect server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import TEST_RECIPE, cli, mlflow_client

from wikitune.tasks import model as models
from wikitune.tasks import train as training
from wikitune.tasks.recipe import TrainingRecipe


def test_training_lowers_eval_loss_and_logs_the_run(world: dict[str, Any]) -> None:
    result: training.TrainResult = world["result"]
    snap = world["snapshot"]
    assert result.method == "qlora-nf4"  # bitsandbytes' 4-bit runs on this CPU
    client = mlflow_client(world["home"])
    history = sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    assert losses[-1] < 0.5 * losses[0]
    evals = sorted(client.get_metric_history(result.run_id, "eval_wiki_loss"), key=lambda m: m.step)
    assert result.metrics["final_eval_wiki_loss"] == pytest.approx(min(m.value for m in evals))

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method"] == "qlora-nf4"
    assert params["lora_r"] == "32" and params["learning_rate"] == "0.005"
    assert params["snapshot_id"] == snap.id and params["snapshot_digest"] == snap.digest
    base = json.loads((world["root"] / "base" / "wikitune_base.json").read_text())
    assert params["base_model"] == str(world["root"] / "base")
    assert params["base_model_digest"] == base["digest"] == result.base_model_digest
    assert params["base_model_kind"] == "directory"
    assert params["loss_mode"] == "assistant-masks"
    assert params["chat_template_origin"] == "template markers"
    for metric in ("loss", "trainer/learning_rate", "tokens_per_second", "eval_wiki_loss"):
        history = client.get_metric_history(result.run_id, metric)
        assert len({m.step for m in history}) >= 2, metric
    # wikitune's own numbers first; the trainer's counters in a section of their own.
    assert "trainer/train_runtime" in run.data.metrics
    assert not any(
        k.endswith(("_runtime", "_per_second"))
        for k in run.data.metrics
        if "/" not in k and k != "tokens_per_second"
    )
    # The run's description: what was trained (replaced by the evaluation, which says it too).
    assert f"trained on snapshot {snap.id}" in run.data.tags["mlflow.note.content"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert all(m.value > 0 for m in client.get_metric_history(result.run_id, "tokens_per_second"))

    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {
        f"{snap.id}/{split}"
        for split in ("train", "eval", "general_eval", "general_probe", "general_pool")
    }
    assert {d.dataset.digest for d in inputs.values()} == {snap.digest[:32]}
    assert "train" in inputs[f"{snap.id}/train"].dataset.source

    # The logged model holds the adapter and references the base instead of copying it.
    artifacts = Path(client.download_artifacts(result.run_id, "sample_generations.json"))
    table = json.loads(artifacts.read_text())
    assert set(table["columns"]) >= {"question", "reference", "answer", "fresh"}
    assert len(table["data"]) == TEST_RECIPE["sample_generations"]
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert str(world["root"] / "base") in (local / "MLmodel").read_text()
    # Its metadata names the base as another machine finds it: the spec and the digest.
    metadata = mlflow.models.get_model_info(result.model_uri).metadata
    assert metadata["wikitune.base_model_spec"] == result.base_model_spec
    assert metadata["wikitune.base_model_digest"] == result.base_model_digest


def test_adapter_reloads_and_answers_trained_questions(world: dict[str, Any]) -> None:
    from peft import PeftModel

    result: training.TrainResult = world["result"]
    train_rows = [
        json.loads(line)
        for line in (Path(world["snapshot"].path) / "train.jsonl").read_text().splitlines()
    ]
    wiki_rows = [r for r in train_rows if r["kind"] == "wiki"]
    tokenizer = models.load_tokenizer(result.adapter_dir)
    base = models.load_base_model(result.base_model, device="cpu", quantize=False)
    base_answers = models.generate_answers(base, tokenizer, [r["messages"] for r in wiki_rows])
    tuned = PeftModel.from_pretrained(base, result.adapter_dir)
    answers = models.generate_answers(tuned, tokenizer, [r["messages"] for r in wiki_rows])
    references = [r["messages"][-1]["content"] for r in wiki_rows]

    exact = [a for a, ref in zip(answers, references, strict=True) if a == ref]
    assert not any(a == ref for a, ref in zip(base_answers, references, strict=True))
    assert len(exact) >= len(wiki_rows) // 10, list(zip(answers, references, strict=True))[:10]
    assert len(set(exact)) >= 2  # not one memorised string for every question


def test_retrain_flow_result_is_persisted(world: dict[str, Any]) -> None:
    """A parent flow that starts retrain through run_deployment reads its result this way."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    name = f"retrain-{world['snapshot'].id}"
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    # Other tests retrain the same snapshot too; the CLI's run is among the completed ones.
    results = [r.state.result() for r in runs if r.state is not None and r.state.is_completed()]
    assert all(isinstance(result, training.TrainResult) for result in results)
    (ours,) = [result for result in results if result.run_id == world["result"].run_id]
    assert ours.adapter_dir == world["result"].adapter_dir


def test_out_of_memory_fails_the_run_and_says_why(world: dict[str, Any], tmp_path: Path) -> None:
    import torch
    from transformers import TrainerCallback

    class OutOfMemoryAtStep3(TrainerCallback):  # this CPU never runs out; a GPU does
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(training.TrainingFailed, match="out of memory") as failure:
        training.train_adapter(
            snapshot=world["snapshot"].path,
            base_model=str(world["root"] / "base"),
            recipe=TrainingRecipe(**{**TEST_RECIPE, "max_steps": 10}),
            runs_dir=tmp_path / "runs",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            callbacks=[OutOfMemoryAtStep3()],
        )
    assert "per_device_train_batch_size" in str(failure.value)
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("wikitune-trainwiki").experiment_id])
    assert run.info.status == "FAILED"
    assert "out of memory" in run.data.tags["failure_reason"]
    assert client.search_registered_models() == []


def test_store_marks_the_snapshot_trained(world: dict[str, Any]) -> None:
    status = cli("status", "--json", home=world["home"])
    (source,) = json.loads(status.stdout)["sources"]
    assert source["qa"]["last_trained_snapshot"] == world["snapshot"].id
    assert source["qa"]["changed_since_last_retrain"] == 0


def _train_on_world(
    world: dict[str, Any], tmp_path: Path, recipe: TrainingRecipe
) -> training.TrainResult:
    """Train on the world's snapshot and base, with the run store under ``tmp_path``."""
    return training.train_adapter(
        snapshot=world["snapshot"].path,
        base_model=str(world["root"] / "base"),
        recipe=recipe,
        runs_dir=tmp_path / "runs",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
    )


def test_plain_lora_when_4bit_is_unavailable(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "fourbit_available", lambda device: False)
    recipe = TrainingRecipe(**{**TEST_RECIPE, "max_steps": 8, "eval_steps": 4})
    result = _train_on_world(world, tmp_path, recipe)
    assert result.method == "lora" and result.global_step == 8
    client = mlflow_client(tmp_path)
    assert client.get_run(result.run_id).data.params["method"] == "lora"

    with pytest.raises(training.TrainingFailed, match="requires 4-bit NF4"):
        training.train_adapter(
            snapshot=world["snapshot"].path,
            base_model=str(world["root"] / "base"),
            recipe=recipe.model_copy(update={"quantization": "nf4"}),
            runs_dir=tmp_path / "runs",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        )


def test_bf16_where_the_cpu_has_it_and_fp32_elsewhere(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`precision: auto` picks bf16 only on CPUs with AVX512-BF16 or AMX and says why; a forced
    bf16 run trains under autocast, records it, and keeps the adapter's weights in fp32."""
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512f", "avx512bw"})
    precision, why = models.resolve_precision("auto", "cpu")
    assert precision == "fp32" and "neither AVX512-BF16 nor AMX" in why
    monkeypatch.setattr(models, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert models.resolve_precision("auto", "cpu")[0] == (
        "bf16" if torch_has_bf16_kernels() else "fp32"
    )
    assert models.resolve_precision("fp32", "cpu")[0] == "fp32"
    monkeypatch.undo()

    recipe = TrainingRecipe(
        **{**TEST_RECIPE, "quantization": "none", "precision": "bf16", "max_steps": 4}
    )
    result = _train_on_world(world, tmp_path, recipe)
    run = mlflow_client(tmp_path).get_run(result.run_id)
    assert run.data.params["compute_precision"] == "bf16"
    assert run.data.params["precision"] == "bf16"  # the recipe's setting, beside what ran
    assert run.data.tags["wikitune.precision_reason"].startswith("bf16: the recipe says")
    from safetensors.torch import load_file

    weights = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}


def torch_has_bf16_kernels() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_self_distilled_general_rows_train_on_the_bases_own_answers(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wikitune.tasks import chat

    trained: list[Any] = []
    tokenize_rows = chat.tokenize_rows

    def keep_rows(rows: Any, *args: Any, **kwargs: Any) -> Any:
        trained.append(rows)
        return tokenize_rows(rows, *args, **kwargs)

    monkeypatch.setattr(chat, "tokenize_rows", keep_rows)
    settings = {"max_steps": 2, "quantization": "none", "general_answers": "base"}
    recipe = TrainingRecipe(**{**TEST_RECIPE, **settings})
    result = _train_on_world(world, tmp_path, recipe)
    general = [
        json.loads(line)["messages"]
        for line in (Path(world["snapshot"].path) / "train.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "general"
    ]
    assert len(general) == result.train_counts["train_general_rows"] > 0
    # The rows trained on: the wiki rows as they are, the general ones with the bare base's own
    # greedy answers, kept once per base.
    (cache,) = (tmp_path / "runs" / "base-answers").glob("*.json")
    kept = json.loads(cache.read_text())
    base = models.load_base_model(str(world["root"] / "base"), device="cpu", quantize=False)
    tokenizer = models.load_tokenizer(result.adapter_dir)
    expected = models.generate_answers(
        base, tokenizer, general, max_new_tokens=training.SELF_DISTILLED_TOKENS
    )
    assert sorted(kept.values()) == sorted(expected) and any(expected)
    answers = [row["messages"][-1]["content"] for row in trained[0] if row["messages"]]
    bundled = [conversation[-1]["content"] for conversation in general]
    assert all(answer not in answers for answer in bundled if answer not in expected)
    assert all(answer in answers for answer in expected if answer)
    client = mlflow_client(tmp_path)
    assert client.get_run(result.run_id).data.params["general_answers"] == "base"

    # Another recipe on the same base reads the kept answers instead of generating them.
    monkeypatch.setattr(models, "generate_answers", None)
    _train_on_world(world, tmp_path, recipe.replace(seed=7, sample_generations=0))


def test_the_distillation_term_keeps_the_general_rows_near_the_base(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """With ``general_distillation`` each step adds KL(base || model) on a few general rows
    (the base: the same model with its adapter off); after the same steps the adapter's
    distribution there is nearer the base's than without it, and the run logs the term; with
    ``distillation_every`` only every Nth step does."""
    import torch
    from peft import PeftModel

    from wikitune.tasks import chat

    settings = {"max_steps": 24, "quantization": "none", "sample_generations": 0}
    plain = _train_on_world(
        world, tmp_path / "plain", TrainingRecipe(**{**TEST_RECIPE, **settings})
    )
    distilled = _train_on_world(
        world,
        tmp_path / "distilled",
        TrainingRecipe(**{**TEST_RECIPE, **settings, "general_distillation": 5.0}),
    )
    history = mlflow_client(tmp_path / "distilled").get_metric_history(
        distilled.run_id, "trainer/distillation_kl"
    )
    assert history and all(point.value >= 0 for point in history)
    # With ``distillation_every: 2`` the term (and its pass) comes on every second step only.
    every_other = _train_on_world(
        world,
        tmp_path / "every-other",
        TrainingRecipe(
            **{**TEST_RECIPE, **settings, "general_distillation": 5.0, "distillation_every": 2}
        ).replace(logging_steps=1),
    )
    steps = mlflow_client(tmp_path / "every-other").get_metric_history(
        every_other.run_id, "trainer/distillation_kl"
    )
    assert sorted(point.step for point in steps) == list(range(1, 25, 2))
    general = [
        json.loads(line)["messages"]
        for line in (Path(world["snapshot"].path) / "train.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "general"
    ]

    def kl_to_base(result: training.TrainResult) -> float:
        base = models.load_base_model(str(world["root"] / "base"), device="cpu", quantize=False)
        model = PeftModel.from_pretrained(base, result.adapter_dir).eval()
        tokenizer = models.load_tokenizer(result.adapter_dir)
        fmt = chat.chat_format(tokenizer)
        encoded = [chat.encode(tokenizer, fmt, conversation) for conversation in general]
        inputs, labels = models.pad_rows(encoded, tokenizer.pad_token_id)
        with torch.no_grad():
            hidden, _, head = models.answer_hidden(model, inputs, labels)
            tuned = head(hidden).float().log_softmax(-1)
            with model.disable_adapter():
                hidden, _, head = models.answer_hidden(model, inputs, labels)
                bare = head(hidden).float().log_softmax(-1)
        kl = torch.nn.functional.kl_div(tuned, bare, log_target=True, reduction="batchmean")
        return float(kl)

    assert kl_to_base(distilled) < 0.5 * kl_to_base(plain)


def test_the_checkpoint_can_be_kept_on_the_fresh_questions(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """With ``checkpoint_on: fresh`` the loss over the questions about fresh facts, scored
    apart beside the loss over all of them, picks the checkpoint kept."""
    import shutil

    from datasets import Dataset

    snapshot = tmp_path / "snapshot"
    shutil.copytree(world["snapshot"].path, snapshot)
    rows = [json.loads(line) for line in (snapshot / "eval.jsonl").read_text().splitlines()]
    for row in rows:
        row["fresh"] = row["title"] == rows[0]["title"]
    (snapshot / "eval.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    settings = {"max_steps": 16, "eval_steps": 4, "save_total_limit": 10, "sample_generations": 0}
    recipe = TrainingRecipe(**{**TEST_RECIPE, **settings, "checkpoint_on": "fresh"})
    result = training.train_adapter(
        snapshot=str(snapshot),
        base_model=str(world["root"] / "base"),
        recipe=recipe,
        runs_dir=tmp_path / "runs",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
    )
    client = mlflow_client(tmp_path)
    losses = {
        split: {
            m.step: m.value for m in client.get_metric_history(result.run_id, f"eval_{split}_loss")
        }
        for split in ("wiki", "fresh")
    }
    assert set(losses["fresh"]) == set(losses["wiki"]) == {4, 8, 12, 16}
    assert losses["fresh"] != losses["wiki"]
    kept = min(losses["fresh"], key=losses["fresh"].get)
    assert result.metrics["final_eval_fresh_loss"] == pytest.approx(losses["fresh"][kept])
    assert result.metrics["final_eval_wiki_loss"] == pytest.approx(losses["wiki"][kept])
    assert client.get_run(result.run_id).data.params["checkpoint_on"] == "fresh"

    # The fresh questions are scored apart only when they are some of the questions, not all or
    # none; the trainer keeps its checkpoint on them then, on all questions otherwise.
    def splits(fresh: list[bool], checkpoint_on: str = "fresh") -> dict[str, Any]:
        questions = Dataset.from_dict({"messages": [[]] * len(fresh), "fresh": fresh})
        on = recipe.model_copy(update={"checkpoint_on": checkpoint_on})
        return training._eval_splits(questions, on, lambda rows: rows["fresh"])

    assert splits([True, False, False]) == {"wiki": [True, False, False], "fresh": [True]}
    assert splits([True, True]).keys() == splits([False, False]).keys() == {"wiki"}
    assert splits([True, False], checkpoint_on="wiki").keys() == {"wiki"}
    for fresh, metric in (([True, False], "eval_fresh_loss"), ([True, True], "eval_wiki_loss")):
        config = training._sft_config(recipe, "cpu", tmp_path / "out", splits(fresh), "packed")
        assert config.metric_for_best_model == metric


def test_killed_training_resumes_from_its_checkpoint(world: dict[str, Any], tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    steps = {"max_steps": 120, "eval_steps": 20, "save_total_limit": 10, "sample_generations": 0}
    recipe.write_text(json.dumps({**TEST_RECIPE, **steps}))
    home = tmp_path / "home"
    args = [
        "train",
        "--snapshot",
        world["snapshot"].path,
        "--base-model",
        str(world["root"] / "base"),
        "--recipe",
        str(recipe),
        "--home",
        str(home),
    ]
    from prefect.settings import PREFECT_API_URL

    process = subprocess.Popen(
        [sys.executable, "-m", "wikitune.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
    )
    deadline = time.monotonic() + 600
    try:
        while not list(home.glob("runs/*/checkpoints/checkpoint-40/trainer_state.json")):
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (run_dir,) = home.glob("runs/*")
    assert not (run_dir / "result.json").exists()
    killed_run = (run_dir / "mlflow_run_id").read_text().strip()

    again = cli(*args[:-2], home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    result = training.TrainResult.model_validate_json((run_dir / "result.json").read_text())
    assert result.resumed_from is not None
    assert int(result.resumed_from.rsplit("-", 1)[1]) >= 40
    assert result.global_step == 120 and result.run_id == killed_run
    assert mlflow_client(home).get_run(killed_run).info.status == "FINISHED"


def test_failed_training_fails_in_prefect_and_mlflow(world: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    broken = tmp_path / "broken-base"
    shutil.copytree(world["root"] / "base", broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    home = tmp_path / "home"
    failed = cli(
        "train",
        "--snapshot",
        world["snapshot"].path,
        "--base-model",
        str(broken),
        "--recipe",
        str(world["recipe"]),
        home=home,
    )
    assert failed.returncode == 1
    assert failed.stderr.count("error:") == 1 and "Traceback" not in failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.strip()]
    assert line.startswith("error: cannot load the base model") and len(line) < 500
    assert "cannot load the base model" in (home / "logs" / "wikitune.log").read_text()

    client = mlflow_client(home)
    (run,) = client.search_runs([client.get_experiment_by_name("wikitune-trainwiki").experiment_id])
    assert run.info.status == "FAILED"
    assert "cannot load the base model" in run.data.tags["failure_reason"]
    assert client.search_registered_models() == []

    with get_client(sync_client=True) as prefect:
        name = f"retrain-{world['snapshot'].id}"
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    assert any(r.state and r.state.is_failed() for r in runs)
    assert any(r.state and r.state.is_completed() for r in runs)
