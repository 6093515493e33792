"""General ability after edits (finding g, beyond the paper): the downstream check
(`evaluation.downstream`) on the unedited model, after the first batch of each B of batch editing,
and at every retained point of each sequential run, all at the chosen layer. It edits nothing of
its own: a batch point is the first batch's solve from the value files, a sequential point the
run's stored factors replayed in their order (the run's own weights, bit for bit).

One job for the config, so the unedited model is scored once and every point is paired with it
item by item. Off unless `downstream.tasks` names tasks.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from editscale import artifacts, data, editing
from editscale.editing import nas, sequential
from editscale.editing.covariance import load_stats
from editscale.editing.value_file import ValueFile
from editscale.evaluation import downstream as check
from editscale.evaluation.bootstrap import interval, resample
from editscale.settings import layer_name, results
from editscale.workflow import figures, findings
from editscale.workflow.experiments import common
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.experiments.sequential import retained_at
from editscale.workflow.job import Job, Stage, edit_config
from editscale.workflow.stages import load_model

log = logging.getLogger(__name__)
RUN_COLUMNS = ["run", "algorithm", "layers", "batch_size", "n_edits"]  # what a point is


def run(job: Job) -> None:
    s = job.settings
    loaded, tokenizer, layout = load_model(job)
    layers = job.layers
    options = s.downstream

    def score(**point) -> pd.DataFrame:
        items, _ = check.evaluate(loaded, tokenizer, options.tasks, n_tests=options.n_tests, shots=options.shots,
                                  method=options.method, gen_len=options.gen_len, layout=layout)
        return items.assign(**point)

    parts = [score(run="unedited", algorithm="", layers=layer_name(layers), batch_size=0, n_edits=0)]
    records = data.read_records(job.input["records"])
    if s.batch.algorithms and len(layers) > 1:
        log.warning("downstream: the batch points are measured at one layer; the chosen window %s has only its "
                    "sequential points", layer_name(layers))
    if s.batch.algorithms and len(layers) == 1:
        layer = layers[0]
        C = load_stats(job.files("stats")[0], device=job.run.device)[0]
        for algorithm in s.batch.algorithms:
            solver = editing.prepare(edit_config(s, algorithm, layer, job.run), C)
            mu = common.anchor(job, loaded, tokenizer, layout, records, solver, layer)  # NAS's, or None
            for size in s.batch.sizes:
                first = ValueFile.for_records(job.files("values"), records.case_id.head(size), job.input["records"])
                values = first.values if mu is None else nas.rescaled(first.values, nas.mlp_outputs(
                    loaded, tokenizer, layout, layer, records.head(size).to_dict("records")), mu)
                (edit,) = editing.independent_batches(solver, first.keys.T, values.residual.T, size,
                                                      weight=layout.weight(loaded, layer))
                with editing.restored(loaded, layout, [layer]):  # W₀ back, exactly, after each point
                    editing.apply_delta(loaded, layout, layer, edit.delta)
                    parts.append(score(run="batch", algorithm=algorithm, layers=layer_name(layers), batch_size=size,
                                       n_edits=size))
                log.info("downstream after one batch of %d (%s)", size, algorithm)
    for path in job.files("sequential"):
        parts += replay(job, path, score, loaded, layout)
    items = pd.concat(parts, ignore_index=True)
    artifacts.write_parquet(items[["task", *RUN_COLUMNS, "item", "label", "prediction"]], job.output["answers"])


def replay(job: Job, path, score, model, layout) -> list[pd.DataFrame]:
    """A sequential run's weights rebuilt from its stored factors (`editing.sequential.replay`),
    scored at its retained points; W₀ is back when it returns."""
    stored, meta = artifacts.read_tensors(path), artifacts.read_metadata(path)
    B, n = int(meta["batch_size"]), int(stored["batch_sizes"].sum())
    points = set(retained_at(n, B, job.settings.sequential.retained_every_edits))
    out = []
    for b, n_edits in enumerate(sequential.replay(stored, model, layout)):
        if b in points:
            out.append(score(run="sequential", algorithm=meta["algorithm"], layers=meta["layers"], batch_size=B,
                             n_edits=n_edits))
            log.info("downstream after %d sequential edits (%s, B = %d)", n_edits, meta["algorithm"], B)
    return out


def counts(s, w: dict) -> dict:
    return {"model": results(s.model), "downstream": results(s.downstream), "edit": results(s.edit),
            "values": results(s.values), "batch": results(s.batch), "retained": s.sequential.retained_every_edits}


def jobs(s, chosen, window) -> list[dict]:
    return [{"layer": chosen()}] if s.downstream.tasks else []


def summarise(items: pd.DataFrame, groups, options) -> pd.DataFrame:
    """Each task's accuracy, weighted F1 and MCC at each point, with bootstrap CIs and chance."""
    return check.summarise(items, options)


def claim_g(runs: findings.Runs) -> list[dict]:
    """(g) General ability after N edits against the unedited model (each run's last point, and each
    batch B), and the smallest sequential B against one batch of all the edits, weighted F1 paired
    over the test items. A task the unedited model does not do above chance cannot show a fall: it
    gets a row saying so, and no verdict."""
    items = runs.chosen.get("downstream")
    if items is None or not len(items):
        return []
    rows, options = [], runs.options
    for task, mine in items.groupby("task", sort=False):
        unedited = mine[mine.run == "unedited"].set_index("item")
        picks = resample(len(unedited), options.n_boot, options.seed)  # (n_boot, items)
        chance = check.TASKS[task].chance

        def f1(points: pd.DataFrame):
            labels, predicted = points.label.to_numpy(), points.prediction.to_numpy()
            return check.weighted_f1(labels, predicted), np.array([check.weighted_f1(labels[p], predicted[p])
                                                                   for p in picks])

        base, base_boot = f1(unedited)
        low, high = interval(base_boot)
        if low <= chance:
            rows.append(findings.not_measured(f"g. general ability after edits ({task})",
                                              f"the unedited model's weighted F1 {base:.2f} [{low:.2f}, {high:.2f}] "
                                              f"is not above chance ({chance:.2f}): no fall can show"))
            continue
        finals = mine[mine.run != "unedited"]
        finals = finals[finals.n_edits == finals.groupby(["run", "algorithm", "batch_size"]).n_edits.transform("max")]
        scored = {}
        for (run_, algorithm, size), point in finals.groupby(["run", "algorithm", "batch_size"], sort=True):
            value, boot = f1(point.set_index("item").loc[unedited.index].reset_index())
            n = int(point.n_edits.iloc[0])
            scored[(run_, algorithm, size)] = (value, boot, n)
            ci = interval(boot - base_boot)
            rows.append(findings.finding(f"g. edits cost general ability ({task}, {algorithm}, {run_})",
                                      f"F1({run_} B = {size}, {n} edits) − F1(unedited)", value - base, ci,
                                      findings.direction(*ci, -1), "(not in the paper; AlphaEdit, ENCORE report it)",
                                      len(unedited), f"weighted F1 {value:.2f} against {base:.2f} unedited"))
        sequential = {k: v for k, v in scored.items() if k[0] == "sequential"}
        for algorithm in sorted({k[1] for k in sequential}):
            sizes = sorted(k[2] for k in sequential if k[1] == algorithm)
            one = sequential[("sequential", algorithm, sizes[-1])]
            if len(sizes) < 2 or sizes[-1] != one[2]:
                continue  # the grid holds no one batch of every edit
            small = sequential[("sequential", algorithm, sizes[0])]
            ci = interval(small[1] - one[1])
            rows.append(findings.finding(f"g. smaller sequential B keeps general ability better ({task}, {algorithm})",
                                      f"F1(B = {sizes[0]} × {one[2] // sizes[0]}) − F1(one batch of {one[2]})",
                                      small[0] - one[0], ci, findings.direction(*ci, +1),
                                      "(the paper's claim c, read on general ability)", len(unedited)))
    return rows


def draw(summary: pd.DataFrame, colors, out, formats) -> None:
    """(g): each task's weighted F1 with its 95% CI, against B after one batch (left) and against
    edits in each sequential run (right); the unedited model dashed, chance dotted."""
    f1 = summary[summary.metric == "f1"]
    tasks = list(dict.fromkeys(f1.task))
    fig, axes = figures.grid(len(tasks), 2)
    for row, task in zip(axes, tasks):
        mine = f1[f1.task == task]
        unedited = mine[mine.run == "unedited"]
        start = float(unedited["value"].iloc[0]) if len(unedited) else None
        batch_runs, seq_runs = mine[mine.run == "batch"], mine[mine.run == "sequential"]
        batch_lines = list(batch_runs.groupby("algorithm"))
        seq_lines = list(seq_runs.groupby(["algorithm", "batch_size"]))
        # One colour per line across both panels: a batch algorithm and a sequential run never share one.
        batch_colors, seq_colors = colors[: len(batch_lines)], colors[len(batch_lines):]
        for color, (algorithm, part) in zip(batch_colors, batch_lines):
            figures.band(row[0], part.rename(columns={"value": "mean"}), "batch_size", f"{algorithm}, one batch", color)
        for color, ((algorithm, size), part) in zip(seq_colors, seq_lines):
            if len(seq_lines) > 1 and size == seq_runs[seq_runs.algorithm == algorithm].n_edits.max():
                # the grid's one batch of every edit: a point at N, not a line from 0
                figures.one_batch(row[1], part.rename(columns={"value": "mean"}), size,
                                  f"{algorithm}, one batch of {size}", color)
                continue
            first = unedited.assign(n_edits=0) if len(unedited) else unedited
            line = pd.concat([first, part]).rename(columns={"value": "mean"})
            figures.band(row[1], line, "n_edits", f"{algorithm}, sequential B = {size}", color)
        # A task the unedited model does not do above chance cannot show a fall: said on its panels.
        informative = bool(unedited["informative"].iloc[0]) if len(unedited) and "informative" in unedited else True
        for ax, x in zip(row, ("batch size B (one batch)", "edits (sequential)")):
            figures.unedited(ax, start)
            ax.axhline(mine["chance"].iloc[0], ls=":", lw=1, color="0.3", label="chance", zorder=0)
            ax.set_ylim(0, 1)
            ax.set_title(f"{task}: weighted F1" + ("" if informative else "\nunedited not above chance: no verdict"),
                         color="black" if informative else "0.45", fontsize=None if informative else 8)
            if not informative:
                ax.set_facecolor("0.94")
            ax.set_xlabel(x)
        if len(batch_runs):
            sizes = sorted(batch_runs.batch_size.unique())
            row[0].set_xscale("log", base=2)
            row[0].set_xticks(sizes, [str(b) for b in sizes], rotation=45)
            row[0].minorticks_off()
    # A tall, two-panel figure: a legend at the top would run under the title.
    figures.save(fig, out, formats, "Downstream check: weighted F1, 95% CI", legend="outside right center")


GROUPS = ("task", *RUN_COLUMNS)
EXPERIMENT = Experiment(
    "downstream", figures={"downstream": figures.Figure(
        lambda c, out: draw(c.tables["downstream"], c.colors, out, c.formats), lambda c: len(c.tables["downstream"]))},
    claims={"g": claim_g}, stage=Stage(run, counts),
    jobs=jobs, stem="layer{layer}", outputs={"answers": ".answers.parquet"},
    summaries={"downstream": ("answers", GROUPS)}, summarise=summarise)
