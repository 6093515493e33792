"""Atomic artifact writes (every file appears whole or not at all), reads that name a damaged file,
and the one resumable artifact (`Parts`)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from editscale.digests import DIGEST, sha256, table_digest, tensors_digest  # noqa: F401 (sha256: artifacts.sha256)

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
        _sidecar(path).unlink(missing_ok=True)  # a digest of what was there before no longer holds
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(df, path: str | os.PathLike) -> None:
    """`df` (no index) with its content digest (`table_digest`) in the file's key-value metadata. The
    table is written, read back and written again with the digest, so the digest is of exactly the
    table a reader gets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
        table = pq.read_table(tmp)
        meta = {**(table.schema.metadata or {}), DIGEST.encode(): table_digest(table).encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp)


def write_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """`tensors` and `metadata` (values as strings), with their content digest (`tensors_digest`)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta[DIGEST] = tensors_digest(tensors, meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def embedded_digest(path) -> tuple[str | None, str | None]:
    """(the digest a Parquet or safetensors file records, the digest of what it holds), read back."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with reading(path):
            table = pq.read_table(path)
        stored = (table.schema.metadata or {}).get(DIGEST.encode())
        return (stored.decode() if stored else None), table_digest(table)
    from safetensors import safe_open

    with reading(path), safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta.get(DIGEST), tensors_digest(tensors, meta)


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
    """A safetensors file's metadata (all values are strings), less its content digest (`verify`'s)."""
    from safetensors import safe_open

    with reading(path), safe_open(str(path), framework="pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if k != DIGEST}


def read_parquet(path: str | os.PathLike):
    import pandas as pd

    with reading(path):
        return pd.read_parquet(path)


def read_yaml(path: str | os.PathLike, keys: dict) -> dict:
    """A YAML mapping the workflow wrote, checked: it parses, and holds each of `keys` ({key: type})
    with a value of that type; else an error naming the file, the key and the rebuild command."""
    import yaml

    with reading(path):
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise UnreadableArtifact(f"{path} holds no mapping ({type(data).__name__})")
    for key, kind in keys.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool) and kind is not bool:
            raise UnreadableArtifact(
                f"{path} has no {key} of type {kind.__name__ if isinstance(kind, type) else kind} (cut short or "
                f"edited?). Rebuild it and what depends on it: {_rebuild(path)}")
    return data


# --- Digests: what each job wrote, checked by the jobs that read it ---------------------------------

def _sidecar(path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.sha256"


def _rebuild(path) -> str:
    return f"snakemake --cores all --forcerun {path} (or delete it and run snakemake again)"


def record(path, inputs: list) -> None:
    """Beside `path`, its sha256 and those of the `inputs` it was made from (`.<name>.sha256`)."""
    import json

    made_from = {str(p): digest_of(p) for p in inputs if Path(p).is_file()}
    write_text(json.dumps({"sha256": sha256(path), "inputs": made_from}, sort_keys=True), _sidecar(path))


def forget(path) -> None:
    _sidecar(path).unlink(missing_ok=True)


def digest_of(path) -> str:
    """A file's sha256, as its job recorded it where it did (read back, not recomputed), else computed."""
    import json

    side = _sidecar(path)
    if side.is_file():
        try:
            return json.loads(side.read_text())["sha256"]
        except (ValueError, KeyError, TypeError):
            pass
    return sha256(path)


def verify(path) -> None:
    """`path` against what its job recorded: a Parquet or safetensors file against the content digest
    it carries (refused without one), and any file against its sidecar when there is one: the same
    bytes, made from inputs that have not changed since. Else an error naming the file, what differs
    and the rebuild command; this catches a damaged file that still parses, and one made from an
    input that changed."""
    import json

    carries_digest = Path(path).suffix in (".parquet", ".safetensors")
    if carries_digest:  # its own digest, whatever happened to the sidecar
        stored, held = embedded_digest(path)
        if stored is None:
            raise UnreadableArtifact(f"{path} carries no content digest ({DIGEST}): written by an older editscale "
                                     f"or by hand. Rebuild it and what depends on it: {_rebuild(path)}")
        if stored != held:
            raise UnreadableArtifact(f"{path} is not what its job wrote (content sha256 {held[:12]}, written "
                                     f"{stored[:12]}): it is damaged or was changed since. Rebuild it and what "
                                     f"depends on it: {_rebuild(path)}")
    side = _sidecar(path)
    if not side.is_file():
        return  # the inputs it was made from are not known (or it is no artifact of this workflow's)
    try:
        recorded = json.loads(side.read_text())
        want, inputs = recorded["sha256"], recorded["inputs"]
    except (ValueError, KeyError, TypeError):
        raise UnreadableArtifact(f"{side}, the digest of {path}, is damaged. Rebuild {path}: {_rebuild(path)}")
    got = None if carries_digest else sha256(path)  # a file with its own digest is not read a second time
    if got is not None and got != want:
        raise UnreadableArtifact(f"{path} is not what its job wrote (sha256 {got[:12]}, written {want[:12]}): it is "
                                 f"damaged or was changed since. Rebuild it and what depends on it: {_rebuild(path)}")
    for source, digest in inputs.items():
        if Path(source).is_file() and digest_of(source) != digest:
            raise UnreadableArtifact(f"{path} was made from {source}, which has changed since (sha256 "
                                     f"{digest_of(source)[:12]}, then {digest[:12]}). Rebuild it: {_rebuild(path)}")


class Busy(RuntimeError):
    """Work in progress that another live process still holds: a job that outlived a killed Snakemake."""


class Parts:
    """The one resumable artifact: finished pieces of the work behind `out`, kept in a folder beside
    it named by the identity of everything they depend on (`.<stem>.<identity>.parts`), so only the
    very same work resumes them. A parts folder of any other identity is stale: opening removes it,
    saying so. `clear()` once `out` is written whole.

    The process that opens it holds an OS lock on it (`.owner`, naming the process) until it ends,
    however it ends. A second process, e.g. a resume started while a job of a killed Snakemake runs
    on, is refused (`Busy`) instead of writing beside it.

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
                _release(_lock(stale))  # refuses a folder another live process still writes
                log.info("removing %s, the unfinished work of other settings", stale)
                shutil.rmtree(stale)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._owner = _lock(self.folder)
        self._owner.seek(0)
        self._owner.truncate()
        self._owner.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._owner.flush()

    def __truediv__(self, name: str) -> Path:
        return self.folder / name

    def paths(self, pattern: str) -> list[Path]:
        """The finished pieces matching `pattern`, in name order (never the lock, nor a write in progress)."""
        return sorted(p for p in self.folder.glob(pattern) if not p.name.startswith("."))

    def clear(self) -> None:
        """Remove the folder, with any temporary file a killed write left in it, and let it go."""
        shutil.rmtree(self.folder, ignore_errors=True)
        _release(self._owner)


def _lock(folder: Path):
    """An exclusive lock on `folder`'s `.owner` file, held while the returned file is open; `Busy`,
    naming the holder, when a live process holds it (a dead one's lock is gone with it)."""
    import fcntl

    if folder in _HELD:  # this process holds it already
        return _HELD[folder]
    handle = open(folder / ".owner", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise Busy(f"{folder} is being written by {holder}, still running: a job left behind by a Snakemake "
                   f"that was killed? Let it finish or stop it (kill <pid>), then run again") from None
    _HELD[folder] = handle
    return handle


def _release(handle) -> None:
    for folder in [f for f, h in _HELD.items() if h is handle]:
        del _HELD[folder]
    handle.close()


_HELD: dict = {}  # folder -> the open .owner file through which this process holds its lock
