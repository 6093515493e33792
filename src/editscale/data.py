"""CounterFact records: both on-disk formats, validated, merged and selected reproducibly.

`load_counterfact(sources)` returns one row per case with typed columns. Sources are
files, folders of `*.json`, the official URL (downloaded once, sha256-checked), or a
list of these. The full ROME format and EasyEdit's reduced format are both read; the
`format` column says which one a row came from.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from . import artifacts, paths

OFFICIAL_URL = "https://rome.baulab.info/data/dsets/counterfact.json"
OFFICIAL_SHA256 = "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"
COLUMNS = ["case_id", "subject", "prompt", "target_new", "target_true", "relation_id",
           "paraphrase_prompts", "neighborhood_prompts", "generation_prompts", "format"]
LIST_COLUMNS = ["paraphrase_prompts", "neighborhood_prompts", "generation_prompts"]
_IDENTITY = ["subject", "prompt", "target_new", "target_true"]


class CounterFactError(ValueError):
    """A record that can't be used; the message names the file, the case and the field."""


def default_sources():
    """The offline full-format records when `../shared/data` is found, else the official URL."""
    shared = paths.shared_data()
    return shared / "counterfact" / "full" if shared is not None else OFFICIAL_URL


def load_counterfact(sources, n: int | None = None, seed: int = 0, unique_subjects: bool = True) -> pd.DataFrame:
    """Validated CounterFact cases from `sources`, sorted by case_id; `n` of them chosen with `seed`.

    With `unique_subjects` (the default) only the lowest case_id of each subject is kept:
    two edits of one subject in a batch share a key and make EMMET's system singular.
    """
    rows: dict[int, tuple[dict, str]] = {}
    for file in _files(sources):
        for record in _read_json(file):
            row = _normalise(record, file)
            _merge(rows, row, file)
    frame = pd.DataFrame([row for row, _ in rows.values()], columns=COLUMNS)
    frame = frame.sort_values("case_id", ignore_index=True)
    if unique_subjects:
        frame = frame.drop_duplicates("subject", keep="first", ignore_index=True)
    if n is not None:
        if n < 1 or n > len(frame):
            raise CounterFactError(f"asked for n={n} records but {sources} hold {len(frame)} usable ones "
                                   f"(unique_subjects={unique_subjects}); choose n between 1 and {len(frame)}")
        order = np.random.default_rng(seed).permutation(len(frame))[:n]
        frame = frame.iloc[np.sort(order)].reset_index(drop=True)
    if frame.empty:
        raise CounterFactError(f"no CounterFact records in {sources}; point data.counterfact at the JSON files")
    return _typed(frame)


def write_records(frame: pd.DataFrame, path) -> None:
    artifacts.write_parquet(frame, path)


def read_records(path) -> pd.DataFrame:
    """Records written by `write_records`, with list columns as Python lists again."""
    frame = pd.read_parquet(path)
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(list)
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"case_id": "int64", "subject": "string", "prompt": "string", "target_new": "string",
                          "target_true": "string", "relation_id": "string", "format": "string"})
    for column in LIST_COLUMNS:
        frame[column] = frame[column].map(lambda items: [str(x) for x in items])
    return frame[COLUMNS]


def _files(sources) -> list[Path]:
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files = []
    for source in sources:
        if str(source).startswith(("http://", "https://")):
            files.append(_download(str(source)))
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise CounterFactError(f"{path} holds no *.json files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CounterFactError(f"CounterFact source {path} does not exist")
    return files


def _download(url: str) -> Path:
    if url != OFFICIAL_URL:
        raise CounterFactError(f"unknown CounterFact URL {url}; the official one is {OFFICIAL_URL}")
    target = paths.cache_dir("counterfact") / Path(url).name
    if target.is_file() and _sha256(target) == OFFICIAL_SHA256:
        return target
    with artifacts.atomic_path(target) as tmp:
        urllib.request.urlretrieve(url, tmp)
        digest = _sha256(tmp)
        if digest != OFFICIAL_SHA256:
            raise CounterFactError(f"{url} has sha256 {digest}, expected {OFFICIAL_SHA256}; not using it")
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_json(file: Path) -> list:
    try:
        records = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CounterFactError(f"{file} is not JSON: {exc}; CounterFact files are a JSON list of records") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise CounterFactError(f"{file} must hold a JSON list of record objects")
    return records


def _normalise(record: dict, file: Path) -> dict:
    """One row from either format, validated."""
    case = record.get("case_id", "?")

    def field(container: dict, name: str, kind, where: str = ""):
        label = f"{where}{name}"
        if name not in container:
            raise CounterFactError(f"{file}: case_id {case}: field '{label}' is missing")
        value = container[name]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CounterFactError(f"{file}: case_id {case}: field '{label}' must be a list of strings")
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise CounterFactError(f"{file}: case_id {case}: field '{label}' must be {kind.__name__}, "
                                   f"got {type(value).__name__}")
        return value

    field(record, "case_id", int)
    if "requested_rewrite" in record:
        rewrite = field(record, "requested_rewrite", dict)
        subject, prompt = field(rewrite, "subject", str, "requested_rewrite."), field(rewrite, "prompt", str, "requested_rewrite.")
        new = field(field(rewrite, "target_new", dict, "requested_rewrite."), "str", str, "requested_rewrite.target_new.")
        true = field(field(rewrite, "target_true", dict, "requested_rewrite."), "str", str, "requested_rewrite.target_true.")
        relation = rewrite.get("relation_id")
        lists = [field(record, name, list) for name in LIST_COLUMNS]
        fmt, prompt_field = "full", "requested_rewrite.prompt"
        if "{}" not in prompt:
            raise CounterFactError(f"{file}: case_id {case}: field '{prompt_field}' has no '{{}}' for the subject "
                                   f"{subject!r}; write the prompt as a template like '{{}} is located in'")
    else:
        subject, filled = field(record, "subject", str), field(record, "prompt", str)
        new, true = field(record, "target_new", str), field(record, "ground_truth", str)
        # EasyEdit's locality prompt is one of the neighbourhood prompts, whose true answer is target_true.
        lists = [[field(record, "rephrase_prompt", str)], [field(record, "locality_prompt", str)], []]
        relation, fmt, prompt_field = None, "easyedit", "prompt"
        if not subject or subject not in filled:
            raise CounterFactError(f"{file}: case_id {case}: field 'prompt' does not contain the subject "
                                   f"{subject!r}; the prompt must mention the subject it edits")
        prompt = filled.replace(subject, "{}", 1)
    for name, value in (("target_new", new), ("target_true", true)):
        if not value.strip():
            raise CounterFactError(f"{file}: case_id {case}: field '{name}' is empty; give the target text")
    if new.strip() == true.strip():
        raise CounterFactError(f"{file}: case_id {case}: field 'target_new' equals 'target_true' ({new!r}); "
                               f"an edit must change the answer")
    return dict(case_id=case, subject=subject, prompt=prompt, target_new=new, target_true=true, relation_id=relation,
                paraphrase_prompts=lists[0], neighborhood_prompts=lists[1], generation_prompts=lists[2], format=fmt)


def _merge(rows: dict, row: dict, file: Path) -> None:
    """Identical duplicates merge (a full row wins over its EasyEdit twin); conflicting ones are an error."""
    case = row["case_id"]
    if case not in rows:
        rows[case] = (row, file)
        return
    kept, kept_file = rows[case]
    for name in _IDENTITY:
        if kept[name] != row[name]:
            raise CounterFactError(f"case_id {case} appears in {kept_file} and {file} with different field "
                                   f"'{name}': {kept[name]!r} vs {row[name]!r}; remove one of them")
    if kept["format"] == row["format"] == "full" and kept != row:
        raise CounterFactError(f"case_id {case} appears in {kept_file} and {file} with different prompts; "
                               f"remove one of them")
    if kept["format"] == "easyedit" and row["format"] == "full":
        rows[case] = (row, file)
