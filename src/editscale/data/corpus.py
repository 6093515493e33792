"""Text sources for the key statistics C (docs/design.md §2): local files offline, `datasets` online.

A source is a path (`.txt` or `.jsonl`), a dataset dict
`{"hf": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "field": "text", "revision": None}`,
or the same as a string, `"hf:wikimedia/wikipedia:20231101.en:train[:field][@revision]"`; a revision
pins the dataset to a commit of its hub repository.
Every source yields its documents in a fixed order, so a run can be resumed by skipping.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Iterator

from editscale import artifacts

_DOC_OPEN = "<doc "
_DOC_CLOSE = "</doc>"
# WikiText section headings: " = Title = ", " = = Section = = ", ...
_HEADING = re.compile(r"\s*(=+) .* \1\s*")


def iter_texts(source, max_samples: int | None = None) -> Iterator[str]:
    """The documents of `source`, stripped, in file order; at most `max_samples` of them."""
    if _is_dataset(source):
        texts = _dataset_texts(_dataset_spec(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"text source {path} does not exist")
        readers = {".txt": _txt_texts, ".jsonl": _jsonl_texts}
        if path.suffix not in readers:
            raise ValueError(f"text source {path}: expected a .txt or .jsonl file, or 'hf:<dataset>:<name>:<split>'")
        texts = readers[path.suffix](path)
    return itertools.islice(texts, max_samples)


def fingerprint(source) -> str:
    """What identifies the source's content: a content hash for files, the dataset spec otherwise."""
    if _is_dataset(source):
        spec = _dataset_spec(source)
        field = "" if spec["field"] == "text" else f":{spec['field']}"
        revision = f"@{spec['revision']}" if spec["revision"] else ""
        return f"hf:{spec['hf']}:{spec['name'] or ''}:{spec['split']}{field}{revision}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text source {path} does not exist")
    return artifacts.sha256(path)[:16]


def _txt_texts(path: Path) -> Iterator[str]:
    # Two passes over the lines (one to tell the format, one to read) keep memory flat on big files.
    if any(line.startswith(_DOC_OPEN) for line in _lines(path)):
        yield from _doc_blocks(_lines(path))
    elif any(_HEADING.fullmatch(line) for line in _lines(path)):
        # WikiText keeps one paragraph per line (this copy has even lost the blank lines
        # between them), so a line is a paragraph; headings are not text to learn keys from.
        yield from (line.strip() for line in _lines(path) if line.strip() and not _HEADING.fullmatch(line))
    else:
        yield from _paragraphs(_lines(path))


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _doc_blocks(lines: Iterator[str]) -> Iterator[str]:
    """Each `<doc ...>` line opens a document; anything before the first one is not a document."""
    body: list[str] | None = None
    for line in lines:
        if line.startswith(_DOC_OPEN):
            if body is not None and "\n".join(body).strip():
                yield "\n".join(body).strip()
            body = []
        elif body is not None and line.strip() != _DOC_CLOSE:
            body.append(line)
    if body is not None and "\n".join(body).strip():
        yield "\n".join(body).strip()


def _paragraphs(lines: Iterator[str]) -> Iterator[str]:
    for blank, group in itertools.groupby(lines, key=lambda line: not line.strip()):
        if not blank:
            yield "\n".join(group).strip()


def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path} line {number}: expected an object with a string field \"text\"")
            if text.strip():
                yield text.strip()


def _is_dataset(source) -> bool:
    return isinstance(source, dict) or (isinstance(source, str) and source.startswith("hf:"))


def _dataset_spec(source) -> dict:
    if isinstance(source, dict):
        if "hf" not in source:
            raise ValueError(f"dataset source {source} needs an 'hf' key naming the dataset")
        spec = dict(source)
    else:
        body, _, revision = source.partition("@")
        parts = body.split(":")[1:]
        if not 3 <= len(parts) <= 4:
            raise ValueError(f"dataset source {source!r}: expected 'hf:<dataset>:<name>:<split>[:<field>][@<revision>]'")
        spec = dict(zip(("hf", "name", "split", "field"), parts), revision=revision or None)
    return {"hf": spec["hf"], "name": spec.get("name") or None, "split": spec.get("split", "train"),
            "field": spec.get("field", "text"), "revision": spec.get("revision")}


def _dataset_texts(spec: dict) -> Iterator[str]:
    # Streaming reads the (large) dataset in its stored order without downloading it whole.
    import datasets

    rows = datasets.load_dataset(spec["hf"], spec["name"], split=spec["split"], streaming=True,
                                 revision=spec["revision"])
    for row in rows:
        text = (row.get(spec["field"]) or "").strip()
        if text:
            yield text
