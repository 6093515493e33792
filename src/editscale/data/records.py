"""The neutral record every dataset loads into, and every layer above passes around.

One row per edit case:

| column | what |
|---|---|
| case_id | int64, unique within a selection |
| dataset, format | which registry entry read it, and which on-disk format ("full", "easyedit", "mend", ...) |
| subject, prompt | the subject, and the edit prompt with one `{}` where the subject goes |
| target_new | the answer the edit writes (the optimised value's target) |
| target_true | the answer it replaces, where the dataset has one (else missing) |
| relation_id | the relation, where the dataset names it (else missing) |
| `<kind>_prompts`, `<kind>_answers` | the scored prompts by kind, each with the answer it is scored on |
| generation_prompts | prompts for free generation (fluency), possibly none |

Prompt kinds: `paraphrase` (scored on target_new), `neighborhood` (unrelated facts the edit must
leave alone, scored on their own answers) and `portability` (facts that follow from the edit). How
a case's metrics follow from its scored prompts is the dataset's business (`data.registry`).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from editscale import artifacts

DOWNLOAD_TIMEOUT = 120  # seconds without a byte before a download is given up
KINDS = ("paraphrase", "neighborhood", "portability")
LIST_COLUMNS = ["paraphrase_prompts", "paraphrase_answers", "neighborhood_prompts", "neighborhood_answers",
                "portability_prompts", "portability_answers", "generation_prompts"]
STRING_COLUMNS = ["dataset", "format", "subject", "prompt", "target_new", "target_true", "relation_id"]
COLUMNS = ["case_id", *STRING_COLUMNS, *LIST_COLUMNS]


class RecordError(ValueError):
    """Unusable dataset input; the message names the file, the case and the field, and how to fix it."""


def check_edit(subject: str, prompt: str, target: str, fail, *, filled: bool | None = None) -> str:
    """The one check of an edit request, shared by the dataset loaders, the `Editor` and the command
    line; the prompt as a template with one `{}` where the subject goes.

    `prompt` is a template (`filled=False`: it holds "{}"), or filled in with the subject
    (`filled=True`: it holds the subject and no braces), or either (`None`). The template holds
    exactly one "{}" and no other brace, which would be scored as literal text. The subject and the
    target are not empty, and the target is one trimmed line: the text right after the prompt.
    `fail(field, problem, fix)` makes the caller's error, naming its own field: 'prompt',
    'subject' or 'target'."""
    for field, value in (("subject", subject), ("target", target)):
        if not value.strip():
            raise fail(field, "is empty", "give the text")
    if "\n" in target or "\r" in target or target != target.strip():
        raise fail("target", f"is not a single trimmed line ({target!r})", "a target is the text right after the "
                   "prompt; remove line breaks and surrounding spaces")
    if filled is None:
        filled = "{}" not in prompt
    if filled:
        if subject not in prompt:
            raise fail("prompt", f"holds neither '{{}}' nor the subject {subject!r}",
                       "write the subject into the prompt, or '{}' where it goes")
        if "{" in prompt or "}" in prompt:
            raise fail("prompt", f"contains a brace ({prompt!r})", "a filled prompt has no placeholders; remove it")
        prompt = prompt.replace(subject, "{}", 1)
    elif "{}" not in prompt:
        raise fail("prompt", f"has no '{{}}' where the subject {subject!r} goes",
                   "write it as a template such as '{} is located in'")
    rest = prompt.replace("{}", "", 1)
    if "{" in rest or "}" in rest:
        raise fail("prompt", f"must hold exactly one '{{}}' and no other braces, got {prompt!r}",
                   "keep one '{}' for the subject; anything else in braces would be scored as literal text")
    return prompt


def read_json_records(file: Path, error: type[RecordError], name: str) -> list[dict]:
    """The JSON list of record objects in `file`, or `error` naming the file and what it holds instead."""
    try:
        records = json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file} is not JSON ({exc}); a {name} file is a JSON list of records") from exc
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        found = "a list with non-object items" if isinstance(records, list) else f"a JSON {type(records).__name__}"
        raise error(f"{file} must hold a JSON list of record objects, found {found}")
    return records


def source_files(sources, error: type[RecordError], what: str, fetch, *, folders: bool = False,
                 missing: str = "does not exist; check the path in the config") -> list[Path]:
    """Each source as the local files it names: a URL through `fetch` (url -> its cached file), a file
    as it is, and, where the dataset reads folders (`folders`), a folder's *.json lists of records.
    `what` names the dataset in errors; `missing` says what a source that is none of these is."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files = []
    for source in sources:
        path = Path(source)
        if str(source).startswith(("http://", "https://")):
            files.append(fetch(str(source)))
        elif folders and path.is_dir():
            found = sorted(path.glob("*.json"))
            unread = sorted(p.name for p in path.iterdir() if p.suffix in (".jsonl", ".gz", ".parquet", ".csv"))
            if unread:
                raise error(f"{what} folder {path} holds {', '.join(unread)}, which would not be read (only *.json "
                            f"lists of records are); convert or move them, or name the *.json files instead of the "
                            f"folder")
            if not found:
                raise error(f"{what} folder {path} holds no *.json files; point at the files instead")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise error(f"{what} source {source} {missing}")
    return files


def fetch_once(url: str, known: str, target: Path, error: type[RecordError], what: str,
               sha256: str | None = None) -> Path:
    """The dataset's one known URL, downloaded into `target` once (with `sha256`, also re-fetched when the
    cached file's hash is not it); any other URL is refused, naming the known one."""
    if url != known:
        raise error(f"unknown {what} URL {url}; the known one is {known}")
    if target.is_file() and (sha256 is None or artifacts.sha256(target) == sha256):
        return target
    # The download only replaces the cache once complete (and, with sha256, once its hash is right).
    return download(url, target, error, sha256=sha256)


def download(url: str, target: Path, error: type[RecordError], sha256: str | None = None) -> Path:
    """`url` into `target`, atomically: an interrupted download, or with `sha256` one of another
    hash, leaves `target` as it was."""
    with artifacts.atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        digest = artifacts.sha256(tmp) if sha256 is not None else None
        if digest != sha256:
            raise error(f"download of {url} has sha256 {digest}, expected {sha256}; the file changed or the "
                        f"download was cut short: retry, or use the offline files")
    return target


def write_records(frame: pd.DataFrame, path) -> None:
    artifacts.write_parquet(frame[COLUMNS], path)


def read_records(path) -> pd.DataFrame:
    """Records written by `write_records`, equal to what was written."""
    return typed(artifacts.read_parquet(path))  # pyarrow gives the lists back as numpy arrays


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The record columns in order, with their types (lists as plain lists of str)."""
    frame = frame.astype({"case_id": "int64", **{column: "string" for column in STRING_COLUMNS}})
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(lambda items: [str(item) for item in items])
    return frame[COLUMNS]


def dataset_of(table: pd.DataFrame, default: str = "counterfact") -> str:
    """The one dataset a table of records or results is about (tables from before datasets had a
    column are CounterFact's)."""
    if "dataset" not in table or not len(table):
        return default
    names = sorted(set(table["dataset"].dropna()))
    if len(names) > 1:
        raise ValueError(f"one table holds records of several datasets {names}; score and summarise each apart")
    return names[0] if names else default


def select(frame: pd.DataFrame, *, n: int | None, seed: int, unique_subjects: bool, where: str) -> pd.DataFrame:
    """`n` records of `frame` (sorted by case_id) chosen with `seed`, typed. With `unique_subjects`
    only the lowest case_id of each subject is kept first: two edits of one subject share a key
    and make EMMET's system singular."""
    frame = frame.sort_values("case_id", ignore_index=True)
    if unique_subjects:
        frame = frame.drop_duplicates("subject", keep="first", ignore_index=True)
    if n is not None:
        if isinstance(n, bool) or not 1 <= n <= len(frame):
            raise RecordError(f"n={n} records asked for, but {where} have {len(frame)} available "
                              f"(unique_subjects={unique_subjects}); choose n between 1 and {len(frame)}")
        # Positions in case_id order, so the same seed and the same pool give the same cases.
        chosen = np.sort(np.random.default_rng(seed).permutation(len(frame))[:n])
        frame = frame.iloc[chosen].reset_index(drop=True)
    return typed(frame)
