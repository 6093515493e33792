"""zsRE question-answering edits: the MEND format (kmeng01/memit, EasyEdit) and KnowEdit's, validated
into the neutral record (`data.records`), with kmeng01/memit's metrics and EasyEdit's locality.

The edit target is a setting (`data.target`), named in the selection's path:
- `answers` (the default, kmeng01/memit `dsets/zsre.py`): edit towards `answers[0]` (KnowEdit:
  `ground_truth[0]`), with no true target;
- `alt` (EasyEdit): edit towards `alt` (KnowEdit: `target_new`), replacing `answers[0]`.

Case ids are record positions, as in memit (`case_id: i`); a second file's continue after the first's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from editscale import paths
from editscale.data.records import COLUMNS, RecordError, fetch_once, read_json_records, select, source_files
from editscale.settings import Data

# kmeng01/memit's copy (util/globals.yml REMOTE_ROOT_URL + dsets/zsre.py): 19,086 records, no portability.
OFFICIAL_URL = "https://memit.baulab.info/data/dsets/zsre_mend_eval.json"
OFFLINE = {"auto": "zsre_mend_eval_portability_gpt4.json", "auto-knowedit": "knowedit_ZsRE-test-all.json"}
TARGETS = ("answers", "alt")


class ZsreError(RecordError):
    """Unusable zsRE input; the message names the file, the record and the field, and how to fix it."""


def resolve(source):
    """`auto`: the offline MEND-format file, else memit's file, downloaded once; `auto-knowedit`: the
    offline KnowEdit file. A URL is downloaded (memit's has no published hash to check)."""
    if str(source).startswith(("http://", "https://")):
        return _download(str(source))  # unpinned: the content's hash is taken from the downloaded file
    if source not in OFFLINE:
        return source
    shared = paths.shared_data()
    offline = shared / "zsre" / OFFLINE[source] if shared is not None else None
    if offline is not None and offline.is_file():
        return offline
    if source == "auto":
        return _download(OFFICIAL_URL)
    raise ZsreError("data.source = auto-knowedit needs the offline KnowEdit file (shared/data/zsre/"
                    f"{OFFLINE[source]}); download ZsRE-test-all.json from KnowEdit and name it in data.source")


def load(sources, n: int | None = None, seed: int = Data.seed, unique_subjects: bool = Data.unique_subjects,
         target: str = TARGETS[0]) -> pd.DataFrame:
    """Validated zsRE cases from `sources` (files, memit's URL, or a list), `n` chosen with `seed`.

    With `unique_subjects` (the default) one question per subject is kept, the lowest case id:
    zsRE asks several questions about one subject, whose edits would share a key.
    """
    if target not in TARGETS:
        raise ZsreError(f"data.target = {target!r}: zsRE edits towards 'answers' (memit) or 'alt' (EasyEdit)")
    files = _files(sources)
    rows = []
    for file in files:
        records = read_json_records(file, ZsreError, "zsRE")
        rows += [_normalise(record, file, i, len(rows) + i, target) for i, record in enumerate(records)]
    if not rows:
        raise ZsreError(f"no zsRE records in {', '.join(map(str, files))}; point data.source at a non-empty file")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return select(frame, n=n, seed=seed, unique_subjects=unique_subjects, where=", ".join(map(str, files)))


def _files(sources) -> list[Path]:
    return source_files(sources, ZsreError, "zsRE", _download,
                        missing="is not a file; name a MEND- or KnowEdit-format JSON file")


def _download(url: str) -> Path:
    # memit's file has no published hash: the content's hash is taken from the downloaded file
    return fetch_once(url, OFFICIAL_URL, paths.cache_dir("zsre") / Path(url).name, ZsreError, "zsRE")


def _normalise(record: dict, file: Path, index: int, case_id: int, target: str) -> dict:
    fmt = "mend" if "src" in record else "knowedit"

    def fail(field: str, problem: str, fix: str) -> ZsreError:
        return ZsreError(f"{file}: record {index} ({fmt} format): field '{field}' {problem}; {fix}")

    def text(value, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise fail(field, "must be a non-empty string", "give the text")
        return value

    def answer(value, field: str) -> str:
        value = value[0] if isinstance(value, list) and value else value
        value = text(value, field)
        if "\n" in value or "\r" in value:
            raise fail(field, f"holds a line break ({value!r})", "an answer is the text right after its prompt")
        return value.strip()  # KnowEdit has a few answers with a leading space; " " + answer is scored

    def get(field: str):
        if field not in record:
            raise fail(field, "is missing", f"add it (the record is read as {fmt} format)")
        return record[field]

    subject = text(get("subject"), "subject")
    if fmt == "mend":
        question, rephrase = text(get("src"), "src"), text(get("rephrase"), "rephrase")
        true = answer(get("answers"), "answers")
        new = answer(get("alt"), "alt") if target == "alt" else true
        # memit: the neighbourhood is the NQ question with "?" and its answer, token by token.
        neighbours = [(text(get("loc"), "loc") + "?", answer(get("loc_ans"), "loc_ans"))]
        port = record.get("portability") or {}
        if not isinstance(port, dict):
            raise fail("portability", f"must be an object ({type(port).__name__} given)",
                       "give {\"New Question\": ..., \"New Answer\": ...}, or leave it out")
        portable = [(text(port.get("New Question"), "portability.New Question"),
                     answer(port.get("New Answer"), "portability.New Answer"))] if port else []
    else:
        question, rephrase = text(get("prompt"), "prompt"), text(get("rephrase_prompt"), "rephrase_prompt")
        true = answer(get("ground_truth"), "ground_truth")
        new = answer(get("target_new"), "target_new") if target == "alt" else true
        neighbours = _pairs(record.get("locality") or {}, "locality", fail, text, answer)
        portable = _pairs(record.get("portability") or {}, "portability", fail, text, answer)
        if not neighbours:
            raise fail("locality", "has no prompts", "give at least one locality prompt (specificity needs one)")
    if subject not in question:
        raise fail("src" if fmt == "mend" else "prompt", f"does not contain the subject {subject!r}",
                   "the question must name its subject (its key is read at the subject's last token)")
    if "{" in question or "}" in question:
        raise fail("src" if fmt == "mend" else "prompt", f"contains a brace ({question!r})", "remove it")
    prompt = question.replace(subject, "{}", 1)  # memit replaces every occurrence; the first is the subject's
    return dict(case_id=case_id, dataset="zsre", format=fmt, subject=subject, prompt=prompt, target_new=new,
                target_true=true if target == "alt" else None, relation_id=None,
                paraphrase_prompts=[rephrase], paraphrase_answers=[new],
                neighborhood_prompts=[p for p, _ in neighbours], neighborhood_answers=[a for _, a in neighbours],
                portability_prompts=[p for p, _ in portable], portability_answers=[a for _, a in portable],
                generation_prompts=[])


def _pairs(groups: dict, field: str, fail, text, answer) -> list[tuple[str, str]]:
    """KnowEdit's {group: [{prompt, ground_truth}]} as (prompt, first answer) pairs, groups in name order."""
    if not isinstance(groups, dict):
        raise fail(field, "must be an object of lists", "see KnowEdit's format")
    pairs = []
    for name in sorted(groups):
        if not isinstance(groups[name], list):
            raise fail(f"{field}.{name}", f"must be a list ({type(groups[name]).__name__} given)", "see KnowEdit's format")
        for i, item in enumerate(groups[name]):
            where = f"{field}.{name}[{i}]"
            if not isinstance(item, dict):
                raise fail(where, "must be an object with prompt and ground_truth", "see KnowEdit's format")
            pairs.append((text(item.get("prompt"), f"{where}.prompt"), answer(item.get("ground_truth"),
                                                                              f"{where}.ground_truth")))
    return pairs


# --- Metrics: kmeng01/memit experiments/py/eval_utils_zsre.py and summarize.py, EasyEdit's locality ---

METRICS = ("Efficacy", "Paraphrase", "Specificity", "Locality", "Portability")
LABELS = {"Efficacy": "efficacy (top-1 acc.)", "Paraphrase": "paraphrase (top-1 acc.)",
          "Specificity": "specificity (neighbourhood top-1 acc.)", "Locality": "locality (agreement with unedited)",
          "Portability": "portability (top-1 acc.)"}
HEADLINE = ("Efficacy", "Paraphrase", "Specificity")
SCORED_KINDS = ("rewrite", "paraphrase", "neighborhood", "portability")


def prompt_table(records: pd.DataFrame) -> pd.DataFrame:
    """Every prompt once, on its own answer: the metrics are token accuracies, not comparisons."""
    rows = []
    for rec in records.itertuples(index=False):
        prompts = {"rewrite": [(rec.prompt.replace("{}", rec.subject, 1), rec.target_new)],
                   **{kind: list(zip(getattr(rec, f"{kind}_prompts"), getattr(rec, f"{kind}_answers")))
                      for kind in SCORED_KINDS[1:]}}
        for kind in SCORED_KINDS:
            for index, (prompt, text) in enumerate(prompts[kind]):
                rows.append((rec.case_id, kind, index, prompt, "answer", " " + text))
    return pd.DataFrame(rows, columns=["case_id", "prompt_kind", "prompt_index", "prompt", "target", "continuation"])


def per_case(scored: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per case, ×100: each kind's teacher-forced top-1 accuracy over all its answer tokens (memit
    averages the flattened token list of a kind), and Locality, the share of the neighbourhood's
    predicted tokens equal to the unedited model's (`reference`, the baseline's scored table;
    without one, the table is its own reference: 100)."""
    scored = scored.assign(correct=scored["top1"] * scored["n_tokens"])
    sums = scored.groupby(["case_id", "prompt_kind"])[["correct", "n_tokens"]].sum()
    accuracy = (100 * sums["correct"] / sums["n_tokens"]).unstack("prompt_kind")
    out = pd.DataFrame(index=accuracy.index)
    for kind, name in zip(SCORED_KINDS, ("Efficacy", "Paraphrase", "Specificity", "Portability")):
        out[name] = accuracy.get(kind, pd.Series(np.nan, index=accuracy.index))
    neighbours = scored[scored.prompt_kind == "neighborhood"]
    ref = neighbours if reference is None else reference[reference.prompt_kind == "neighborhood"]
    keys = ["case_id", "prompt_index"]
    both = neighbours[[*keys, "argmax"]].merge(ref[[*keys, "argmax"]], on=keys, how="left", suffixes=("", "_ref"))
    if both["argmax_ref"].isna().any():
        missing = sorted(set(both.loc[both["argmax_ref"].isna(), "case_id"]))[:10]
        raise ValueError(f"the reference table has no unedited predictions for cases {missing}; score the baseline "
                         f"on the same records")
    agree = both.apply(lambda r: (np.asarray(r["argmax"]) == np.asarray(r["argmax_ref"])).sum(), axis=1)
    both = both.assign(agree=agree, n=both["argmax"].map(len))
    sums = both.groupby("case_id")[["agree", "n"]].sum()
    out["Locality"] = 100 * sums["agree"] / sums["n"]
    return out[list(METRICS)].reset_index()
