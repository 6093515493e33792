"""CounterFact records: both on-disk formats, validated, merged and selected reproducibly.

`load_counterfact(sources)` returns one row per case with typed columns. Sources are
files, folders of `*.json`, the official URL (downloaded once, sha256-checked), or a
list of these. The full ROME format and EasyEdit's reduced format are both read; the
`format` column says which one a row came from.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

import numpy as np
import pandas as pd

from editscale import paths
from editscale.data.records import COLUMNS, RecordError, check_edit, fetch_once, read_json_records, select, source_files
from editscale.settings import Data

OFFICIAL_URL = "https://rome.baulab.info/data/dsets/counterfact.json"
OFFICIAL_SHA256 = "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"
_LISTS = ["paraphrase_prompts", "neighborhood_prompts", "generation_prompts"]  # as the files spell them
# What makes two records the same edit. The prompt lists are compared too, but only
# between two full records: EasyEdit keeps 1 of each list by design.
_IDENTITY = ["subject", "prompt", "target_new", "target_true"]
_FULL_ONLY = ["relation_id", *_LISTS]


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class CounterFactError(RecordError):
    """Unusable CounterFact input; the message names the file, the case and the field, and how to fix it."""


def default_sources() -> Path | str:
    """The offline full-format files when `shared/data` holds them, else the official URL."""
    shared = paths.shared_data()
    full = shared / "counterfact" / "full" if shared is not None else None
    return full if full is not None and full.is_dir() else OFFICIAL_URL


def resolve(source):
    """`auto`: `default_sources()`; `auto-easyedit`: the offline EasyEdit-format files (there is no
    official URL for them); anything else as given."""
    if source == "auto":
        return default_sources()
    if source == "auto-easyedit":
        shared = paths.shared_data()
        easy = shared / "counterfact" / "easyedit" if shared is not None else None
        if easy is None or not easy.is_dir():
            raise CounterFactError("data.source = auto-easyedit needs the offline EasyEdit-format files "
                                   "(shared/data/counterfact/easyedit); name EasyEdit's counterfact JSON files in "
                                   "data.source, or use auto for the full format")
        return easy
    return source


def load_counterfact(sources, n: int | None = None, seed: int = Data.seed,
                     unique_subjects: bool = Data.unique_subjects) -> pd.DataFrame:
    """Validated CounterFact cases from `sources`, sorted by case_id; `n` of them chosen with `seed`.

    With `unique_subjects` (the default) only the lowest case_id of each subject is kept,
    before any choice of `n`: two edits of one subject share a key and make EMMET's
    system singular.
    """
    files = _files(sources)
    rows: dict[int, tuple[dict, Path]] = {}
    for file in files:
        for index, record in enumerate(read_json_records(file, CounterFactError, "CounterFact")):
            _merge(rows, _normalise(record, file, index), file)
    if not rows:
        raise CounterFactError(f"no CounterFact records in {_names(files)}; point the sources at non-empty JSON files")
    frame = pd.DataFrame([row for row, _ in rows.values()], columns=COLUMNS)
    try:
        return select(frame, n=n, seed=seed, unique_subjects=unique_subjects, where=_names(files))
    except RecordError as exc:
        raise CounterFactError(str(exc)) from None


def _names(files: list[Path]) -> str:
    return ", ".join(str(file) for file in files) or "the given sources (none)"


def _files(sources) -> list[Path]:
    return source_files(sources, CounterFactError, "CounterFact", _download, folders=True)


def _download(url: str) -> Path:
    target = paths.cache_dir("counterfact") / "counterfact.json"
    return fetch_once(url, OFFICIAL_URL, target, CounterFactError, "CounterFact", sha256=OFFICIAL_SHA256)


def _normalise(record: dict, file: Path, index: int) -> dict:
    """One validated row from a record in either format; errors name the field as the file spells it."""
    case = record.get("case_id", f"? (record {index})")
    full = "requested_rewrite" in record

    def fail(field: str, problem: str, fix: str) -> CounterFactError:
        return CounterFactError(f"{file}: case_id {case}: field '{field}' {problem}; {fix}")

    def get(dotted: str, kind):
        value, names = record, dotted.split(".")
        for depth, name in enumerate(names):
            if not isinstance(value, dict):
                raise fail(".".join(names[:depth]), "must be an object", "see the full ROME format")
            if name not in value:
                raise fail(".".join(names[:depth + 1]), "is missing",
                           f"add it (the record is read as {'full' if full else 'EasyEdit'} format)")
            value = value[name]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise fail(dotted, "must be a list of strings", "give the prompts as a JSON list of strings")
        elif not isinstance(value, kind) or isinstance(value, bool):
            raise fail(dotted, f"must be {kind.__name__}, got {type(value).__name__}", "fix its type")
        return value

    if not INT64_MIN <= get("case_id", int) <= INT64_MAX:
        raise fail("case_id", "does not fit in a 64-bit integer", "renumber the case")
    if full:
        subject_field, new_field, true_field = ("requested_rewrite.subject", "requested_rewrite.target_new.str",
                                                "requested_rewrite.target_true.str")
        subject, prompt = get(subject_field, str), get("requested_rewrite.prompt", str)
        relation = get("requested_rewrite.relation_id", str)
        lists = [get(name, list) for name in _LISTS]
        list_fields = _LISTS[:2]
        prompt_field = "requested_rewrite.prompt"
    else:
        subject_field, new_field, true_field = "subject", "target_new", "ground_truth"
        subject, filled = get(subject_field, str), get("prompt", str)
        relation = None
        # locality_ground_truth is not read: the locality prompt is one of CounterFact's
        # neighbourhood prompts, whose answer is by construction this case's target_true.
        lists = [[get("rephrase_prompt", str)], [get("locality_prompt", str)], []]
        list_fields = ["rephrase_prompt", "locality_prompt"]
        prompt_field = "prompt"
        prompt = filled
    new = get(new_field, str)
    fields = {"prompt": prompt_field, "subject": subject_field, "target": new_field}
    prompt = check_edit(subject, prompt, new, lambda field, problem, fix: fail(fields[field], problem, fix),
                        filled=not full)
    for name, items in zip(list_fields, lists):
        if not items:
            raise fail(name, "is an empty list", "give at least one prompt (its score would be undefined)")
        for i, item in enumerate(items):
            if not item.strip():
                raise fail(name if len(items) == 1 and not full else f"{name}[{i}]", "is an empty prompt",
                           "give the prompt text or drop it from the list")
    true = get(true_field, str)
    if not true.strip():
        raise fail(true_field, "is empty", "give the text")
    if "\n" in true or "\r" in true or true != true.strip():
        raise fail(true_field, f"is not a single trimmed line ({true!r})", "a target is the text right after the "
                   "prompt; remove line breaks and surrounding spaces")
    if new.strip() == true.strip():
        raise fail(new_field, f"equals {true_field} ({new!r})", "an edit must change the answer")
    # Paraphrases are scored on the new target, neighbours on the true one (ES/PS/NS compare the two).
    return dict(case_id=record["case_id"], dataset="counterfact", format="full" if full else "easyedit",
                subject=subject, prompt=prompt, target_new=new, target_true=true, relation_id=relation,
                paraphrase_prompts=lists[0], paraphrase_answers=[new] * len(lists[0]),
                neighborhood_prompts=lists[1], neighborhood_answers=[true] * len(lists[1]),
                portability_prompts=[], portability_answers=[], generation_prompts=lists[2])


def _merge(rows: dict, row: dict, file: Path) -> None:
    """Records of one case merge when they agree (a full row wins over its EasyEdit twin); else an error."""
    case = row["case_id"]
    if case not in rows:
        rows[case] = (row, file)
        return
    kept, kept_file = rows[case]
    both_full = kept["format"] == row["format"] == "full"
    for name in _IDENTITY + (_FULL_ONLY if both_full else []):
        if kept[name] != row[name]:
            where = f"twice in {file}" if kept_file == file else f"in both {kept_file} and {file}"
            raise CounterFactError(f"case_id {case} is {where} with different field '{name}': "
                                   f"{reprlib.repr(kept[name])} vs {reprlib.repr(row[name])}; "
                                   f"drop one of the two records")
    if kept["format"] == "easyedit" and row["format"] == "full":
        rows[case] = (row, file)


# --- Metrics (docs/design.md §3, pinned in tests/test_metrics.py against kmeng01/memit) ---------

METRICS = ("ES", "PS", "NS", "EM", "PM", "NM", "NU")  # NU: live only (evaluation/live.py)
LABELS = {"ES": "efficacy (ES)", "PS": "paraphrase (PS)", "NS": "neighbourhood (NS)", "EM": "efficacy magnitude (EM)",
          "PM": "paraphrase magnitude (PM)", "NM": "neighbourhood magnitude (NM)",
          "NU": "neighbourhood unchanged (NU)"}
HEADLINE = ("ES", "PS", "NS")  # efficacy, generalisation, specificity: Score is their harmonic mean
SCORED_KINDS = ("rewrite", "paraphrase", "neighborhood")


def prompt_table(records: pd.DataFrame) -> pd.DataFrame:
    """Every prompt scored on both targets: the metrics compare the two NLLs."""
    rows = []
    for rec in records.itertuples(index=False):
        prompts = {"rewrite": [rec.prompt.replace("{}", rec.subject, 1)],
                   "paraphrase": list(rec.paraphrase_prompts), "neighborhood": list(rec.neighborhood_prompts)}
        for kind in SCORED_KINDS:
            for index, prompt in enumerate(prompts[kind]):
                for target, text in (("new", rec.target_new), ("true", rec.target_true)):
                    rows.append((rec.case_id, kind, index, prompt, target, " " + text))
    return pd.DataFrame(rows, columns=["case_id", "prompt_kind", "prompt_index", "prompt", "target", "continuation"])


def per_case(scored: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """ES, PS, NS (fractions ×100) and their magnitudes EM, PM, NM (probability gaps ×100) per case."""
    wide = scored.pivot_table(index=["case_id", "prompt_kind", "prompt_index"], columns="target",
                              values="nll", aggfunc="first").reset_index()
    p_new, p_true = np.exp(-wide["new"]), np.exp(-wide["true"])
    neighbour = wide["prompt_kind"] == "neighborhood"
    # Success: the new target is likelier on rewrite/paraphrase prompts, the true one on neighbours.
    wide["success"] = np.where(neighbour, wide["true"] < wide["new"], wide["new"] < wide["true"]).astype(float)
    wide["magnitude"] = np.where(neighbour, p_true - p_new, p_new - p_true)
    grouped = wide.groupby(["case_id", "prompt_kind"])[["success", "magnitude"]].mean().unstack("prompt_kind")
    out = pd.DataFrame(index=grouped.index)
    for kind, s, m in zip(SCORED_KINDS, ("ES", "PS", "NS"), ("EM", "PM", "NM")):
        out[s] = 100 * grouped["success"].get(kind, np.nan)
        out[m] = 100 * grouped["magnitude"].get(kind, np.nan)
    return out.reset_index()
