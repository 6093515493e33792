"""Atomic artifact writes (every file appears whole or not at all), reads that name a damaged file,
and the one resumable artifact (`Parts`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


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


class Parts:
    """The one resumable artifact: finished pieces of the work behind `out`, kept in a folder beside
    it named by the identity of everything they depend on (`.<stem>.<identity>.parts`), so only the
    very same work resumes them. A parts folder of any other identity is stale: opening removes it,
    saying so. `clear()` once `out` is written whole.

        parts = Parts(out, identity)
        piece = parts / "chunk-0.safetensors"     # resumed when it exists, else written atomically
        ...; write out from parts.paths("chunk-*"); parts.clear()
    """

    def __init__(self, out: str | os.PathLike, identity: str):
        out = Path(out)
        stem = out.name.split(".")[0]
        self.folder = out.parent / f".{stem}.{identity}.parts"
        for stale in sorted(out.parent.glob(f".{stem}.*.parts")):
            if stale != self.folder:
                log.info("removing %s, the unfinished work of other settings", stale)
                shutil.rmtree(stale)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.folder / name

    def paths(self, pattern: str) -> list[Path]:
        """The finished pieces matching `pattern`, in name order."""
        return sorted(self.folder.glob(pattern))

    def clear(self) -> None:
        """Remove the folder, with any temporary file a killed write left in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
