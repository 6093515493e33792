"""Content digests: of a file's bytes, and of what a Parquet table or safetensors file holds, which
such a file carries in its own metadata (`artifacts.write_parquet`, `write_safetensors`), so a copy
that drops the `.<name>.sha256` beside it keeps its check (`artifacts.verify`)."""

from __future__ import annotations

import hashlib
import os

DIGEST = "editscale.content_sha256"


def table_digest(table) -> str:
    """sha256 of a table's columns, types and values (Arrow IPC), without the digest's own key."""
    import pyarrow as pa

    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != DIGEST.encode()}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(meta)) as stream:
        stream.write_table(table.replace_schema_metadata(meta))
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def tensors_digest(tensors: dict, metadata: dict) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in name order, and of the metadata
    without the digest's own key."""
    import json

    import torch

    digest = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != DIGEST}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
