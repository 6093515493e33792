"""Shared fixtures: tiny random models and offline tokenizers, built in-test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from editscale import models, paths
from editscale.artifacts import read_tensors

SHARED = paths.shared_data()
REPO = Path(__file__).resolve().parents[1]
CORPUS_TEXT = (
    "The mother tongue of Danielle Darrieux is French. Paris is the capital of France. "
    "Angola is located in Africa. Toyota is owned by a company in Japan. "
    "The Eiffel Tower is in Paris, and Paris is in France. I think you said that. "
    "Therefore the man, because of the rain, stayed at home. "
)


def build_tokenizer(add_bos: bool, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained here; with `add_bos` it prefixes <bos> like Llama-3."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = CORPUS_TEXT
    if SHARED is not None:
        text += (SHARED / "corpus" / "wikitext-2-raw-test.txt").read_text()[:200_000]
    tok.train_from_iterator([text], trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def bos_tokenizer():
    return build_tokenizer(add_bos=True)


@pytest.fixture(scope="session")
def plain_tokenizer():
    return build_tokenizer(add_bos=False)


def save_tiny(folder: Path, kind: str, tokenizer, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if kind == "llama":
        config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, **common)
        model = LlamaForCausalLM(config)
    elif kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=256, **common)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pytest_generate_tests(metafunc):
    """`tiny` runs each test on every architecture a module names in `TINY` (default: both)."""
    if "tiny" in metafunc.fixturenames:
        metafunc.parametrize("tiny", getattr(metafunc.module, "TINY", ("llama", "gpt2")), indirect=True)


@pytest.fixture
def tiny(request, tiny_llama_dir, tiny_gpt2_dir):
    """A tiny random model, freshly loaded for each test (a test may edit it): (model, tokenizer,
    layout), one per architecture in the module's `TINY` (Llama with a BOS token, GPT-2 without)."""
    return models.load(str({"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, bos_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", bos_tokenizer)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, plain_tokenizer):
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", plain_tokenizer)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded once per test session."""
    from editscale import models

    return models.load(models.EMBEDDED)


def covariance_standin(model, tokenizer, layout, layer):
    """A stand-in for C with the structure of the real one: a few dominant directions, a null space.

    Keys of ten prompts span a low-rank part; a small ridge keeps C invertible. It is
    scaled to unit mean eigenvalue, so λ and thresholds in tests read as relative values.
    """
    from editscale.editing.keys import compute_keys

    many = [{"prompt": "{} is", "subject": w} for w in "Paris France Japan music river the man said rain home".split()]
    K = compute_keys(model, tokenizer, layout, layer, many, ["{}"]).double()
    C = K.T @ K / len(many)
    C = C / (C.trace() / C.shape[0])
    return (C + 1e-4 * torch.eye(C.shape[0], dtype=torch.float64)).float()


def snakemake(workdir, *args, popen: dict | None = None, cores: int = 2):
    """The workflow in `workdir`, as a user runs it (the workflow profile applies); Popen if `popen`."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), *args]
    if popen is not None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    return subprocess.run(cmd, capture_output=True, text=True)


def tiny_workflow(root: Path, **sections) -> Path:
    """A working folder with the .test config (sections updated by `sections`) and its tiny model."""
    root.mkdir(parents=True, exist_ok=True)
    model = root / "tiny-llama"
    if not model.exists():
        save_tiny(model, "llama", build_tokenizer(add_bos=True))
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny workflow run once, cold, for every test that starts from or compares with a clean
    run (end to end, faults, SLURM): (its folder, its wall seconds, its results). A test that
    changes anything works on a copy (`copy_run`), never on this folder."""
    workdir = tiny_workflow(tmp_path_factory.mktemp("tiny-run"))
    start = time.monotonic()
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir, time.monotonic() - start, results(workdir)


def copy_run(src: Path, dst: Path) -> Path:
    """A finished workflow folder copied with its mtimes and Snakemake's records, so it is up to date."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def workflow_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config" / "config.yaml").read_text())


def write_workflow_config(workdir: Path, config: dict, **dump) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, **dump))


def copy_model(src: Path, dst: Path) -> None:
    shutil.copytree(src / "tiny-llama", dst / "tiny-llama")


def results(workdir: Path) -> dict:
    """Every table and tensor the run wrote (not logs, benchmarks, figures or the model manifest)."""
    root = workdir / "results"
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if "/logs/" in relative or "/benchmarks/" in relative or path.suffix not in (".parquet", ".safetensors"):
            continue
        if path.suffix == ".safetensors":
            found[relative] = read_tensors(path)
        else:
            found[relative] = path.read_bytes()
    return found


def assert_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if isinstance(value, dict):
            assert value.keys() == got[name].keys() and all(torch.equal(value[k], got[name][k]) for k in value), name
        else:
            assert got[name] == value, name  # Parquet bytes: the same rows, types and values
