"""Atomic artifact writes: every file appears whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(df, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class UnreadableArtifact(ValueError):
    """A file the workflow wrote that cannot be read back: damaged, cut short, or not that kind of file."""


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn a reader's failure into an error that names the file and how to rebuild it."""
    try:
        yield
    except (FileNotFoundError, UnreadableArtifact):
        raise
    except Exception as err:  # safetensors, pyarrow and json raise their own types, none of them helpful alone
        raise UnreadableArtifact(
            f"{path} cannot be read ({type(err).__name__}: {err}); it is damaged or cut short. Rebuild it and what "
            f"depends on it: snakemake --cores all --forcerun {path} (or delete it and run snakemake again)") from err


def read_tensors(path: str | os.PathLike, device="cpu") -> dict:
    from safetensors.torch import load_file

    with reading(path):
        return load_file(str(path), device=str(device))


def read_metadata(path: str | os.PathLike) -> dict:
    """A safetensors file's metadata (all values are strings)."""
    from safetensors import safe_open

    with reading(path), safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_parquet(path: str | os.PathLike):
    import pandas as pd

    with reading(path):
        return pd.read_parquet(path)


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
