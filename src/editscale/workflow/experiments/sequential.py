"""Sequential-batch editing (claims c and e): batches of B applied one after another to the same
model, each evaluated right after its edit (immediate) and every edit so far at fixed numbers of
edits (retained), with fluency, drift and weight health; resumable after any batch."""

from __future__ import annotations

import json
import logging

import pandas as pd

from editscale import artifacts
from editscale.editing.keys import load_templates
from editscale.editing.sequential import SequentialRun, run_identity, stored_edits
from editscale.editing.value_file import ValueFile
from editscale.settings import layer_name, results
from editscale.workflow import figures, findings
from editscale.workflow.experiments import common, protocols
from editscale.workflow.job import Job, Stage

log = logging.getLogger(__name__)


def retained_at(n: int, batch_size: int, every: int) -> list[int]:
    """The batches after which every edit so far is scored: after the same numbers of edits in every
    run (multiples of max(B, every)), and at the end."""
    n_batches = -(-n // batch_size)
    return sorted({b for b in range(n_batches) if ((b + 1) * batch_size) % every == 0} | {n_batches - 1})


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
    # Everything the results depend on: a run folder is only ever resumed by the very same run.
    digests = [artifacts.sha256(path) for path in job.files("stats")]
    identity = run_identity(cfg, facts, templates, B, layers=layers if len(layers) > 1 else None, extra={
        "model": results(s.model), "C": digests[0] if len(digests) == 1 else digests,
        "evaluation": results(s.evaluation), "retained_at": scored_at})
    parts = artifacts.Parts(job.output["immediate"], identity)
    cached = ValueFile.for_records(job.files("values"), records.case_id.head(B), job.input["records"])
    # The value files hold keys at the window's last layer: the first layer's are cached only for one layer.
    first_batch = (cached.keys if len(layers) == 1 else None, cached.values)
    edits = SequentialRun(loaded, tokenizer, layout, cfg, facts, templates, solvers, B, parts.folder,
                          identity=identity, snapshot_every=job.run.snapshot_every, first_batch=first_batch,
                          layers=layers, allow_conflicts=job.run.allow_conflicts)
    for b, batch_facts in edits:  # batch b is applied, and recorded once this body is done
        done = min((b + 1) * B, n)
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
                                metadata={"identity": identity, **labels})
    log.info("diagnostics of the last batch: %s", json.dumps(state.diagnostics[-1]))
    parts.clear()  # the tables are written; nothing left to resume


def counts(s, w: dict) -> dict:
    return {**common.counted_edit(s, w), "evaluation": results(s.evaluation), "n": s.sequential.n,
            "retained_every_edits": s.sequential.retained_every_edits}


def jobs(s, chosen, window) -> list[dict]:
    """Every algorithm at every B at the chosen layer (`chosen()`), and (f)'s at its window (`window()`,
    or None) at the smallest B (the longest run), every algorithm but ROME."""
    spread, layer = window(), chosen()
    runs = [(a, layer, b) for a in s.sequential.algorithms for b in s.sequential.sizes]
    runs += [(a, spread, min(s.sequential.sizes)) for a in s.sequential.algorithms if a != "rome"] if spread else []
    return [{"algorithm": a, "layer": at, "size": b} for a, at, b in runs]


def claim_c(runs: findings.Runs) -> list[dict]:
    """(c) under the immediate (the paper's), last-batch and retained protocols (`protocols`)."""
    return protocols.sequential_vs_batch(runs.chosen["immediate"], runs.chosen["retained"], runs.options)


def claim_e(runs: findings.Runs) -> list[dict]:
    return findings.retention(runs.chosen["retained"], runs.options) if len(runs.chosen["retained"]) else []


GROUPS = ("algorithm", "layer", "layers", "batch_size")
STAGE = Stage(run, counts)
FIGURES = {"sequential": figures.SEQUENTIAL, "immediate_vs_retained": figures.IMMEDIATE_VS_RETAINED,
           "weight_health": figures.WEIGHT_HEALTH}
CLAIMS = {"c": claim_c, "e": claim_e}
# Immediate cases pooled by stretch of edits (protocols.stretch); every point beside the one batch on the same cases.
SUMMARIES = {"immediate": ("immediate", (*GROUPS, "stretch")), "retained": ("retained", (*GROUPS, "n_edits"))}
summarise = protocols.summarise
COLLECTED = {"quality": "quality", "health": "batches"}
OUTPUTS = {kind: f".{kind}.parquet" for kind in ("immediate", "retained", "quality", "batches")} | {
    "edits": ".edits.safetensors"}
