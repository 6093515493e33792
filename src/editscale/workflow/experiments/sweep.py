"""The layer sweep (claim a): single independent edits at each swept layer, and the best layer
(the `best_layer` checkpoint) the batch and sequential experiments edit under `layer: auto`."""

from __future__ import annotations

import pandas as pd
import yaml

from editscale import artifacts
from editscale.evaluation import metrics
from editscale.evaluation.metrics import LIVE
from editscale.workflow import figures, findings, text
from editscale.workflow.experiments import common
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.experiments.independent import independent
from editscale.workflow.findings import (
    INCONCLUSIVE,
    Paired,
    direction,
    equivalence,
    finding,
    interval,
    largest_gap,
    p_best,
)
from editscale.workflow.job import Job, Stage


def run(job: Job) -> None:
    independent(job, job.settings.sweep.n)


def run_live(job: Job) -> None:
    independent(job, job.settings.sweep.n, LIVE)


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
    return layer_claims(sweep, runs.n_layers, runs.options) if len(sweep) else []


def layer_scores(sweep: pd.DataFrame, options) -> pd.DataFrame:
    """Each swept layer's Score (mean over the sweep's algorithms per case) with its 95% CI, and the
    bootstrap probability that it is the best layer, all on one paired resampling of the cases."""
    layers = Paired(sweep, "layer", options)
    scores = {layer: layers.mean(layer, "Score") for layer in layers.conditions}
    best = p_best({layer: replicates for layer, (_, replicates) in scores.items()})
    return pd.DataFrame([{"layer": int(layer), "Score": float(mean), "ci_low": interval(reps)[0], "ci_high": interval(reps)[1],
                          "p_best": best[layer], "n_cases": layers.n} for layer, (mean, reps) in scores.items()])


def layer_claims(sweep: pd.DataFrame, n_layers: int, options) -> list[dict]:
    """(a) An early layer edits best (Llama-3: layer 1), and ROME ≈ MEMIT at every layer."""
    rows = []
    layers = Paired(sweep, "layer", options)
    scores = {layer: layers.mean(layer, "Score") for layer in layers.conditions}
    chance = p_best({layer: replicates for layer, (_, replicates) in scores.items()})
    best = max(scores, key=lambda layer: scores[layer][0])
    early = [layer for layer in layers.conditions if layer < options.early_fraction * n_layers]
    late = [layer for layer in layers.conditions if layer not in early]
    per_layer = "; ".join(f"layer {layer}: {scores[layer][0]:.1f} [{interval(scores[layer][1])[0]:.1f}, "
                          f"{interval(scores[layer][1])[1]:.1f}], P(best) {chance[layer]:.2f}" for layer in layers.conditions)
    p_early = sum(chance[layer] for layer in early)
    if early and late:
        # The best early layer against the best late one, paired over the same cases.
        top_early = max(early, key=lambda layer: scores[layer][0])
        top_late = max(late, key=lambda layer: scores[layer][0])
        diff = scores[top_early][0] - scores[top_late][0]
        ci = interval(scores[top_early][1] - scores[top_late][1])
        verdict = direction(*ci, +1)
        statistic = f"Score(best early layer {top_early}) − Score(best later layer {top_late})"
    else:
        diff, ci, verdict = scores[best][0], interval(scores[best][1]), INCONCLUSIVE
        statistic = f"Score of the best layer {best} (no {'later' if early else 'early'} layer swept to compare)"
    rows.append(finding("a. the best layer is an early one", statistic, diff, ci, verdict,
                     "layer 1 of Llama-3-8B's 32", layers.n,
                     f"best layer {best} of {n_layers} (P(best) {chance[best]:.2f}); P(the best is early, layer < "
                     f"{options.early_fraction * n_layers:g}) {p_early:.2f}; {per_layer}"))
    if {"rome", "memit"} <= set(sweep.algorithm):
        layer, gap, replicates, n = largest_gap(sweep, "layer", "rome", "memit", options)
        ci = interval(replicates)
        rows.append(finding("a. ROME ≈ MEMIT across layers", f"largest Score(ROME) − Score(MEMIT), at layer {layer}", gap,
                         ci, equivalence(*ci, options.margin), "similar at every layer", n,
                         f"margin ±{options.margin:g} Score points"))
    return rows


def draw(summary: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    headline = figures.headline(summary)
    fig, axes = figures.grid(1, len(headline))
    for ax, metric in zip(axes[0], headline):
        for color, (algorithm, part) in zip(colors, summary[summary.metric == metric].groupby("algorithm")):
            figures.band(ax, part, "layer", algorithm, color)
        figures.unedited(ax, figures.baseline_of(baseline, metric), "unedited (all records)")
        figures.metric_axis(ax, metric)
        ax.set_xlabel("layer")
    figures.save(fig, out, formats, f"Layer sweep: single edits at each layer, mean and 95% CI {figures.note(summary)}")


def check(s) -> list[str]:
    problems = []
    if s.sweep.n > s.data.n:
        problems.append(f"sweep.n = {s.sweep.n} is larger than data.n = {s.data.n}, the records selected; raise "
                        f"data.n or lower sweep.n")
    if s.layer == "auto" and not s.sweep.algorithms:
        problems.append("layer: auto takes the sweep's best layer, but sweep.algorithms is empty; name a layer or "
                        "an algorithm to sweep")
    return problems


STAGE = Stage(run, lambda s, w: {**common.counted_edit(s, w), "n": s.sweep.n})
LIVE_STAGE = Stage(run_live, STAGE.counts)
BEST_LAYER = Stage(best_layer, lambda s, w: {})


def layer_table(every: dict, options) -> list[str]:
    """Below the findings table: each swept layer's Score, its CI and P(best)."""
    layers = layer_scores(every["sweep"], options) if len(every["sweep"]) else None
    if layers is None or not len(layers):
        return []
    return (["Each swept layer's Score (mean over the sweep's algorithms), its 95% CI and the bootstrap "
             "probability that it is the best layer:", ""]
            + text.table(["layer", "Score [95% CI]", "P(best)", "cases"],
                         [[r.layer, f"{r.Score:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}]", f"{r.p_best:.2f}", r.n_cases]
                          for r in layers.itertuples(index=False)]))


EXPERIMENT = Experiment(
    "sweep", figures={"sweep": figures.Figure(
        lambda c, out: draw(c.tables["sweep"], c.tables["baseline"], c.colors, out, c.formats),
        lambda c: len(c.tables["sweep"]))}, claims={"a": claim_a}, stage=STAGE, jobs=jobs,
    stem="{algorithm}-layer{layer}", outputs={"nll": ".nll.parquet", "cases": ".cases.parquet"},
    summaries={"sweep": ("cases", ("algorithm", "layer", "layers"))},  # layer: where v* is; layers: its name
    across_layers=True, appendix=layer_table, check=check, live=LIVE_STAGE, live_outputs=("nll", "cases"))
