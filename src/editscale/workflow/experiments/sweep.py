"""The layer sweep (claim a): single independent edits at each swept layer, and the best layer
(the `best_layer` checkpoint) the batch and sequential experiments edit under `layer: auto`."""

from __future__ import annotations

import pandas as pd
import yaml

from editscale import artifacts
from editscale.evaluation import metrics
from editscale.workflow import figures, findings
from editscale.workflow.experiments import common
from editscale.workflow.experiments.independent import independent
from editscale.workflow.job import Job, Stage


def run(job: Job) -> None:
    independent(job, job.settings.sweep.n)


def best_layer(job: Job) -> None:
    """The layer whose edits score best (harmonic mean of ES, PS, NS), over all sweep algorithms."""
    cases = pd.concat([artifacts.read_parquet(p) for p in job.files("cases")])
    summary = metrics.aggregate(cases, by=["layer"])
    scores = summary[summary.metric == "Score"].set_index("layer")["mean"]
    layer = int(scores.idxmax())
    artifacts.write_text(yaml.safe_dump({"layer": layer, "score": float(scores.max()),
                                         "scores": {int(k): float(v) for k, v in scores.items()}}),
                         job.output["best"])


def read_layer(path) -> int:
    return artifacts.read_yaml(path, {"layer": int})["layer"]


def jobs(s, chosen, window) -> list[dict]:
    return [{"algorithm": a, "layer": str(layer)} for a in s.sweep.algorithms for layer in s.sweep.layers]


def claim_a(runs: findings.Runs) -> list[dict]:
    sweep = runs.chosen["sweep"]
    return findings.best_layer(sweep, runs.n_layers, runs.options) if len(sweep) else []


STAGE = Stage(run, lambda s, w: {**common.counted_edit(s, w), "n": s.sweep.n})
BEST_LAYER = Stage(best_layer, lambda s, w: {})
FIGURES = {"sweep": figures.SWEEP}
CLAIMS = {"a": claim_a}
SUMMARIES = {"sweep": ("cases", ("algorithm", "layer", "layers"))}  # layer: where v* is; layers: its name
OUTPUTS = {"nll": ".nll.parquet", "cases": ".cases.parquet"}
