"""Every dataset, declared once: how it loads into the neutral record, what its `auto` sources are,
which prompts are scored on which answers, and how a case's metrics follow from those scores.

Adding a dataset means one module (a loader, `prompt_table`, `per_case` and its metric names) and one
entry below; settings, the schema, metrics, findings and figures read from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from editscale import artifacts
from editscale.data import counterfact, zsre
from editscale.settings import Data


@dataclass(frozen=True)
class Dataset:
    name: str
    load: Callable  # (sources, n=, seed=, unique_subjects=, target=) -> neutral records
    resolve: Callable  # a config source ("auto", "auto-…", a path or URL) -> a path or URL
    aliases: dict  # `auto…` source -> its format tag in paths
    prompt_table: Callable  # records -> (case_id, prompt_kind, prompt_index, prompt, target, continuation)
    per_case: Callable  # (scored table, reference=None) -> one row of metrics per case
    metrics: tuple  # every per-case metric, in report order
    labels: dict  # metric -> its name in figures
    headline: tuple  # (efficacy, generalisation, specificity): Score is their harmonic mean
    kinds: tuple  # prompt kinds scored, "rewrite" first
    targets: tuple = ("new",)  # values of data.target, the first the default
    # The live protocol (evaluation/live.py): each kind's metric, the target a kind's continuation is
    # judged on, and the metric of specificity's unchanged reading (continuations equal to the unedited's).
    by_kind: dict = None
    live_target: dict = None
    unchanged: str = ""

    @property
    def efficacy(self) -> str:
        return self.headline[0]

    @property
    def specificity(self) -> str:
        return self.headline[2]


def _counterfact_load(sources, *, n=None, seed=Data.seed, unique_subjects=Data.unique_subjects, target="new"):
    return counterfact.load_counterfact(sources, n=n, seed=seed, unique_subjects=unique_subjects)


DATASETS = {
    "counterfact": Dataset(
        name="counterfact", load=_counterfact_load, resolve=counterfact.resolve,
        aliases={"auto": "full", "auto-easyedit": "easyedit"},
        prompt_table=counterfact.prompt_table, per_case=counterfact.per_case, metrics=counterfact.METRICS,
        labels=counterfact.LABELS, headline=counterfact.HEADLINE, kinds=counterfact.SCORED_KINDS,
        by_kind=dict(zip(counterfact.SCORED_KINDS, counterfact.HEADLINE)),
        live_target={"rewrite": "new", "paraphrase": "new", "neighborhood": "true"}, unchanged="NU"),
    "zsre": Dataset(
        name="zsre", load=zsre.load, resolve=zsre.resolve, aliases={"auto": "mend", "auto-knowedit": "knowedit"},
        prompt_table=zsre.prompt_table, per_case=zsre.per_case, metrics=zsre.METRICS, labels=zsre.LABELS,
        headline=zsre.HEADLINE, kinds=zsre.SCORED_KINDS, targets=zsre.TARGETS,
        by_kind=dict(zip(zsre.SCORED_KINDS, ("Efficacy", "Paraphrase", "Specificity", "Portability"))),
        live_target=dict.fromkeys(zsre.SCORED_KINDS, "answer"), unchanged="Locality"),
}


def get(name: str) -> Dataset:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resolve_sources(dataset: str, source) -> list:
    """The config's source(s) with every `auto…` alias resolved on this machine: paths or URLs."""
    entry = get(dataset)
    return [entry.resolve(s) for s in (source if isinstance(source, (list, tuple)) else [source])]


def fingerprint(sources: list) -> str:
    """What identifies the sources' content: the sha256 of every file (a folder's *.json in name
    order), a URL by the sha256 its loader checks. 12 hex digits."""
    digest = hashlib.sha256()
    for source in sources:
        text = str(source)
        if text.startswith(("http://", "https://")):
            pinned = {counterfact.OFFICIAL_URL: counterfact.OFFICIAL_SHA256}.get(text)
            if pinned is None:
                raise ValueError(f"{text} has no pinned sha256, so what it serves cannot be named; download it "
                                 f"and name the file")
            digest.update(f"{text}@{pinned}".encode())
            continue
        path = Path(source)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            digest.update(f"{file.name}:{artifacts.sha256(file)}".encode())
    return digest.hexdigest()[:12]


def selection_name(data_settings: dict, content: str) -> str:
    """The record selection's part of artifact paths: the dataset, the format `auto` resolved to (or
    `custom`), the edit target where the dataset has a choice, the sources' `fingerprint`, n and seed."""
    entry = get(data_settings["dataset"])
    spec = data_settings["source"]
    tag = entry.aliases.get(spec, "custom") if isinstance(spec, str) else "custom"
    target = f"-{data_settings['target']}" if len(entry.targets) > 1 else ""
    dups = "" if data_settings["unique_subjects"] else "-dups"
    return f"{entry.name}-{tag}{target}-{content}-n{data_settings['n']}-seed{data_settings['seed']}{dups}"
