"""Batch editing (claims b and d): N edits in independent batches of B, each solved against the
unedited model, at the chosen layer or spread over the chosen window."""

from __future__ import annotations

from editscale.workflow import figures, findings
from editscale.workflow.experiments import common
from editscale.workflow.experiments.independent import independent
from editscale.workflow.job import Job, Stage


def run(job: Job) -> None:
    independent(job, job.settings.data.n)


def jobs(s, chosen, window) -> list[dict]:
    """Every algorithm at every B at the chosen layer (`chosen()`), and (f)'s at its window
    (`window()`, or None) at the largest B, every algorithm but ROME."""
    spread, layer = window(), chosen()
    runs = [(a, layer, b) for a in s.batch.algorithms for b in s.batch.sizes]
    runs += [(a, spread, max(s.batch.sizes)) for a in s.batch.algorithms if a != "rome"] if spread else []
    return [{"algorithm": a, "layer": at, "size": b} for a, at, b in runs]


def claim_b(runs: findings.Runs) -> list[dict]:
    batch = runs.chosen["batch"]
    return findings.batch_size_effect(batch, runs.options) if len(batch) else []


def claim_d(runs: findings.Runs) -> list[dict]:
    batch = runs.chosen["batch"]
    return findings.memit_vs_emmet(batch, runs.options) if len(batch) else []


STAGE = Stage(run, lambda s, w: {**common.counted_edit(s, w), "n": s.data.n})
FIGURES = {"batch": figures.BATCH}
CLAIMS = {"b": claim_b, "d": claim_d}
SUMMARIES = {"batch": ("cases", ("algorithm", "layer", "layers", "batch_size"))}
OUTPUTS = {"nll": ".nll.parquet", "cases": ".cases.parquet"}
