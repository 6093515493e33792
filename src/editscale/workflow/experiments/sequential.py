"""Sequential-batch editing (claims c and e): batches of B applied one after another to the same
model, each evaluated right after its edit (immediate) and every edit so far at fixed numbers of
edits (retained), with fluency, drift and weight health; resumable after any batch."""

from __future__ import annotations

import json
import logging

import pandas as pd

from editscale import artifacts
from editscale.data import DATASETS
from editscale.data.records import dataset_of
from editscale.editing.keys import load_templates
from editscale.editing.sequential import SequentialRun, stored_edits
from editscale.editing.value_file import ValueFile
from editscale.settings import layer_name
from editscale.workflow import figures, findings
from editscale.workflow.experiments import common, protocols
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.experiments.replay import retained_at, run_live
from editscale.workflow.findings import INCONCLUSIVE, Paired, finding, interval
from editscale.workflow.job import Job, Stage

log = logging.getLogger(__name__)


def run(job: Job) -> None:
    """Batches applied one after another; each recorded as it finishes, so a killed run resumes. The
    first batch edits the unedited model, so its keys and values come from the value files.

    Writes the immediate, retained and quality tables, one row of diagnostics per batch, and the
    edit itself: every batch's factors, ΔW_total = A Bᵀ (O((d_in + d_out)·n) floats)."""
    s = job.settings
    n, B = s.sequential.n, job.batch_size
    (loaded, tokenizer, layout), records, facts, cfg, solvers = common.edit_job(job, n)
    templates = load_templates(job.input["templates"])
    reference = common.reference(job)  # read once, for every batch's evaluation
    layers, layer = job.layers, job.layers[-1]
    scored_at = retained_at(n, B, s.sequential.retained_every_edits)
    # Named by everything the results depend on (`job.identity`): only the very same run resumes it.
    parts = artifacts.Parts(job.output["immediate"], job.identity)
    cached = ValueFile.for_records(job.files("values"), records.case_id.head(B), job.input["records"])
    # The value files hold keys at the window's last layer: the first layer's are cached only for one layer.
    first_batch = (cached.keys if len(layers) == 1 else None, cached.values)
    mu = common.anchor(job, loaded, tokenizer, layout, records, solvers[layer], layer)  # NAS's μ, or None
    edits = SequentialRun(loaded, tokenizer, layout, cfg, facts, templates, solvers, B, parts.folder,
                          snapshot_every=job.run.snapshot_every, first_batch=first_batch,
                          layers=layers, allow_conflicts=job.run.allow_conflicts, anchor=mu)
    for b, batch_facts in edits:  # batch b is applied, and recorded once this body is done
        done = edits.edits_after(b)
        ids = [f["case_id"] for f in batch_facts]
        nll = common.score(loaded, tokenizer, layout, records[records.case_id.isin(ids)], job.run)
        cases = common.label(common.per_case(nll, records, reference), batch=b, n_edits=done)
        artifacts.write_parquet(cases, parts / f"immediate-{b:05d}.parquet")
        if b in scored_at:
            nll = common.score(loaded, tokenizer, layout, records.head(done), job.run)
            retained = common.per_case(nll, records, reference)
            common.log_headline(f"retained after {done} edits", retained, records)
            artifacts.write_parquet(common.label(retained, batch=b, n_edits=done), parts / f"retained-{b:05d}.parquet")
            quality = {"batch": b, "n_edits": done, **common.quality(loaded, tokenizer, records, s.evaluation)}
            artifacts.write_parquet(pd.DataFrame([quality]), parts / f"quality-{b:05d}.parquet")
        log.info("batch %d/%d done (%d edits)", b + 1, len(edits.batches), done)
    state = edits.state
    labels = dict(algorithm=job.algorithm, layer=layer, layers=layer_name(layers), batch_size=B)
    formats = records[common.INFO]
    for kind in ("immediate", "retained", "quality"):
        table = pd.concat([artifacts.read_parquet(p) for p in parts.paths(f"{kind}-*.parquet")], ignore_index=True)
        if kind != "quality":
            table = table.merge(formats, on="case_id")
        artifacts.write_parquet(common.label(table, **labels), job.output[kind])
    batches = pd.DataFrame([state.unedited, *state.diagnostics])  # from W₀ (batch −1, 0 edits) on
    artifacts.write_parquet(common.label(batches, **labels), job.output["batches"])
    artifacts.write_safetensors(stored_edits(parts.folder), job.output["edits"],
                                metadata={"identity": job.identity, **labels})
    log.info("diagnostics of the last batch: %s", json.dumps(state.diagnostics[-1]))
    parts.clear()  # the tables are written; nothing left to resume


def counts(s, w: dict) -> dict:
    return {**common.counted_edit(s, w), "evaluation": common.scoring_counts(s.evaluation), "n": s.sequential.n,
            "retained_every_edits": s.sequential.retained_every_edits}


def jobs(s, chosen, window) -> list[dict]:
    """Every algorithm at every B at the chosen layer (`chosen()`; the window adds its own runs)."""
    return [{"algorithm": a, "layer": chosen(), "size": b} for a in s.sequential.algorithms
            for b in s.sequential.sizes]


def claim_c(runs: findings.Runs) -> list[dict]:
    """(c) under the immediate (the paper's), last-batch and retained protocols (`protocols`)."""
    return protocols.sequential_vs_batch(runs.chosen["immediate"], runs.chosen["retained"], runs.options)


def claim_e(runs: findings.Runs) -> list[dict]:
    return retention(runs.chosen["retained"], runs.options) if len(runs.chosen["retained"]) else []


def retention(retained: pd.DataFrame, options) -> list[dict]:
    """Beyond the paper: which algorithm retains its edits best at the largest sequential n (ES of
    every edit so far, smallest B), paired against the runner-up."""
    final = retained[retained.n_edits == retained.n_edits.max()]
    final = final[final.batch_size == final.batch_size.min()]
    if final.algorithm.nunique() < 2:
        return []
    algos = Paired(final, "algorithm", options)
    eff = algos.efficacy
    es = {a: algos.mean(a, eff) for a in algos.conditions}
    ranked = sorted(es, key=lambda a: es[a][0], reverse=True)
    ci = interval(es[ranked[0]][1] - es[ranked[1]][1])
    verdict = f"{ranked[0]} retains most" if ci[0] > 0 else INCONCLUSIVE
    detail = "; ".join(f"{a}: {eff} {es[a][0]:.1f} [{interval(es[a][1])[0]:.1f}, {interval(es[a][1])[1]:.1f}]" for a in ranked)
    return [finding(f"e. retention after {int(final.n_edits.max())} sequential edits (B = {int(final.batch_size.min())})",
                 f"{eff}({ranked[0]}) − {eff}({ranked[1]})", es[ranked[0]][0] - es[ranked[1]][0], ci, verdict,
                 "(not in the paper)", algos.n, detail)]


def draw_retained(retained: pd.DataFrame, quality: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    """Retained metrics of every edit so far against edits, one line per B from the unedited model at 0,
    the one batch of all N as one point at N; below, each retained point against the one batch on the
    same cases (the k cases edited so far), paired."""
    algorithms = sorted(retained.algorithm.unique())
    headline = figures.headline(retained)
    columns = [*headline, "drift_perplexity"]
    fig, axes = figures.grid(2 * len(algorithms), len(columns))
    sizes = sorted(retained.batch_size.unique())
    unedited_quality = quality[quality.n_edits == 0]
    runs = quality[quality.n_edits > 0]
    for i, algorithm in enumerate(algorithms):
        row, below = axes[2 * i], axes[2 * i + 1]
        mine = retained[retained.algorithm == algorithm]
        n = figures.one_batch_of(mine)
        for ax, metric in zip(row, columns):
            for color, size in zip(colors, sizes):
                if metric in headline:
                    part = mine[(mine.metric == metric) & (mine.batch_size == size)]
                else:
                    part = runs[(runs.algorithm == algorithm) & (runs.batch_size == size)]
                    part = pd.concat([unedited_quality, part]).assign(mean=lambda q: q[metric])[["n_edits", "mean"]]
                if size == n:
                    end = part[part.n_edits == n]
                    end = end.assign(ci_low=end.get("ci_low", end["mean"]), ci_high=end.get("ci_high", end["mean"]))
                    figures.one_batch(ax, end, n, f"one batch of {n}", color)
                else:
                    figures.band(ax, part, "n_edits", f"B = {size}", color)
            if metric in headline:  # the runs' own start: the unedited model on the same records
                start = mine[(mine.metric == metric) & (mine.n_edits == 0)]["mean"]
                figures.unedited(ax, float(start.iloc[0]) if len(start) else figures.baseline_of(baseline, metric))
            elif len(unedited_quality):
                figures.unedited(ax, float(unedited_quality[metric].iloc[0]))
            figures.metric_axis(ax, metric)
            ax.set_xlabel("edits")
        for ax, metric in zip(below, columns):
            if metric not in headline or n is None or "versus_one_batch" not in mine:
                ax.axis("off")
                continue
            for color, size in zip(colors, sizes):
                part = mine[(mine.metric == metric) & (mine.batch_size == size)]
                figures.versus(ax, part, "n_edits", f"B = {size}", color)
            figures.zero(ax, metric)
            ax.set_xlabel("edits (the cases edited so far)")
        row[0].set_ylabel(algorithm)
        below[0].set_ylabel(f"{algorithm}: paired, same cases")
    figures.save(fig, out, formats, f"Sequential-batch editing, retained: every edit so far, mean and 95% CI "
                                    f"{figures.note(retained)}")


def draw_immediate_vs_retained(immediate: pd.DataFrame, retained: pd.DataFrame, colors, out, formats) -> None:
    """The two protocols side by side, one line per B: immediate (the paper's: each stretch of batches
    scored right after its own edits, at the mean edits in the model then; dashed) and retained (every
    edit so far; solid); the one batch of all N as one point at N. Below, each against the one batch
    on the same cases, paired."""
    algorithms = sorted(immediate.algorithm.unique())
    headline = figures.headline(immediate)
    fig, axes = figures.grid(2 * len(algorithms), len(headline))
    sizes = sorted(immediate.batch_size.unique())
    for i, algorithm in enumerate(algorithms):
        row, below = axes[2 * i], axes[2 * i + 1]
        now, kept = immediate[immediate.algorithm == algorithm], retained[retained.algorithm == algorithm]
        n = figures.one_batch_of(now, "stretch")
        for top, low, metric in zip(row, below, headline):
            for color, size in zip(colors, sizes):
                part = now[(now.metric == metric) & (now.batch_size == size)]
                if size == n:
                    figures.one_batch(top, part, n, f"one batch of {n}", color)
                    continue
                figures.band(top, part.assign(n_edits=part.load), "n_edits", f"B = {size}, immediate", color, "--")
                later = kept[(kept.metric == metric) & (kept.batch_size == size) & (kept.n_edits > 0)]
                figures.band(top, later, "n_edits", f"B = {size}, retained", color)
                if "versus_one_batch" in part:
                    figures.versus(low, part.assign(n_edits=part.load), "n_edits", f"B = {size}, immediate", color,
                                   "--")
                    figures.versus(low, later, "n_edits", f"B = {size}, retained", color)
            figures.metric_axis(top, metric)
            top.set_xlabel("edits in the model when scored")
            figures.zero(low, metric)
            low.set_xlabel("edits in the model when scored")
        row[0].set_ylabel(algorithm)
        below[0].set_ylabel(f"{algorithm}: paired, same cases")
    figures.save(fig, out, formats, f"Sequential runs under two protocols: immediate (the paper's, dashed) and retained "
                                    f"(solid), mean and 95% CI {figures.note(immediate)}")


HEALTH = ["delta_relative", "delta_spectral", "weight_condition"]


def draw_weight_health(health: pd.DataFrame, retained: pd.DataFrame, colors, out, formats) -> None:
    """Retained NS (the dataset's specificity) beside how far W has moved, against edits: one row per
    B, a line per algorithm."""
    spec = DATASETS[dataset_of(retained)].specificity
    sizes = sorted(health.batch_size.unique())
    algorithms = sorted(health.algorithm.unique())
    fig, axes = figures.grid(len(sizes), 1 + len(HEALTH))
    for row, size in zip(axes, sizes):
        for color, algorithm in zip(colors, algorithms):
            ns = retained[(retained.metric == spec) & (retained.algorithm == algorithm) & (retained.batch_size == size)]
            figures.band(row[0], ns, "n_edits", algorithm, color)
            runs = health[(health.algorithm == algorithm) & (health.batch_size == size)]
            for ax, metric in zip(row[1:], HEALTH):
                figures.band(ax, runs.assign(mean=runs[metric])[["n_edits", "mean"]], "n_edits", algorithm, color)
        figures.metric_axis(row[0], spec)
        for ax, metric in zip(row[1:], HEALTH):
            figures.metric_axis(ax, metric)
        row[len(HEALTH)].set_yscale("log")
        for ax in row:
            ax.set_xlabel("edits")
        row[0].set_ylabel(f"B = {size}")
    figures.save(fig, out, formats, f"Weight health of sequential runs beside retained {spec} {figures.note(retained)}")


GROUPS = ("algorithm", "layer", "layers", "batch_size")


def check(s) -> list[str]:
    q = s.sequential
    problems = [f"sequential.n = {q.n} is larger than data.n = {s.data.n}, the records selected; raise data.n or "
                f"lower sequential.n"] if q.n > s.data.n else []
    problems += common.whole_batches("sequential.sizes", q.sizes, q.n, "sequential.n")
    every = q.retained_every_edits
    for size in q.sizes:
        if (every % size if size <= every else size % every) or every > q.n:
            problems.append(f"sequential.retained_every_edits = {every} and sequential.sizes has {size}: every size "
                            f"must divide it or be a multiple of it (and it at most sequential.n = {q.n}), so all "
                            f"runs are scored after the same numbers of edits")
    return problems


def unedited_start(retained: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Each run's first retained point, at 0 edits: the unedited model on the cases the run edits
    (from the baseline's per-case table)."""
    parts = []
    for (algorithm, layer, layers, size), run in retained.groupby(list(GROUPS)):
        final = run[run.n_edits == run.n_edits.max()]
        start = baseline[baseline.case_id.isin(final.case_id)]
        parts.append(start.assign(algorithm=algorithm, layer=layer, layers=layers, batch_size=size, batch=-1,
                                  n_edits=0))
    return pd.concat(parts, ignore_index=True)[retained.columns.intersection(parts[0].columns)]


EXPERIMENT = Experiment(
    "sequential", figures={
        "sequential": figures.Figure(
            lambda c, out: draw_retained(c.tables["retained"], c.tables["quality"], c.tables["baseline"],
                                         c.palette("viridis", max(2, c.tables["retained"].batch_size.nunique())),
                                         out, c.formats),
            lambda c: len(c.tables["retained"])),
        "immediate_vs_retained": figures.Figure(
            lambda c, out: draw_immediate_vs_retained(c.tables["immediate"], c.tables["retained"], c.colors, out,
                                                      c.formats),
            lambda c: len(c.tables["immediate"])),
        "weight_health": figures.Figure(
            lambda c, out: draw_weight_health(c.tables["health"], c.tables["retained"], c.colors, out, c.formats),
            lambda c: len(c.tables["health"]))},
    claims={"c": claim_c, "e": claim_e}, stage=Stage(run, counts), jobs=jobs, stem="{algorithm}-layer{layer}-b{size}",
    outputs={kind: f".{kind}.parquet" for kind in ("immediate", "retained", "quality", "batches")}
    | {"edits": ".edits.safetensors"},
    # Immediate cases pooled by stretch of edits (protocols.stretch); every point beside the one batch on the
    # same cases.
    summaries={"immediate": ("immediate", (*GROUPS, "stretch")), "retained": ("retained", (*GROUPS, "n_edits"))},
    collected={"quality": "quality", "health": "batches"}, summarise=protocols.summarise,
    derived={"immediate": ("stretch",)}, starts={"retained": unedited_start}, check=check,
    live=Stage(run_live, counts), live_outputs=("immediate", "retained"))
