"""A finished sequential run read again without editing again: its stored factors replayed batch by
batch (`editing.sequential.replay`), scored at the same points the run scored. The live twin of
the sequential experiment (rule `sequential_live`) is this replay under the live protocol."""

from __future__ import annotations

import pandas as pd

from editscale import artifacts, data
from editscale.editing.sequential import replay
from editscale.evaluation.metrics import LIVE
from editscale.settings import layer_name
from editscale.workflow.experiments import common
from editscale.workflow.job import Job
from editscale.workflow.stages import load_model


def retained_at(n: int, batch_size: int, every: int) -> list[int]:
    """The batches after which every edit so far is scored: after the same numbers of edits in every
    run (multiples of max(B, every)), and at the end."""
    n_batches = -(-n // batch_size)
    return sorted({b for b in range(n_batches) if ((b + 1) * batch_size) % every == 0} | {n_batches - 1})


def run_live(job: Job) -> None:
    """The run's edits read under the live protocol, without editing again: its stored factors added
    back batch by batch (`editing.sequential.replay`, the run's own weights bit for bit), each batch's
    cases decoded right after its own edit (immediate) and every edit so far at the run's retained
    points. Each batch's tables are recorded as they finish, so a killed replay resumes."""
    s = job.settings
    n, B = s.sequential.n, job.batch_size
    loaded, tokenizer, layout = load_model(job)
    records = data.read_records(job.input["records"]).head(n)
    reference = common.reference(job)
    scored_at = retained_at(n, B, s.sequential.retained_every_edits)
    parts = artifacts.Parts(job.output["immediate"], job.identity)
    before = 0
    for b, done in enumerate(replay(artifacts.read_tensors(job.input["edits"]), loaded, layout)):
        path = parts / f"immediate-{b:05d}.parquet"
        if not path.exists():
            nll = common.score(loaded, tokenizer, layout, records.iloc[before:done], job.run, LIVE)
            cases = common.per_case(nll, records, reference, LIVE)
            artifacts.write_parquet(common.label(cases, batch=b, n_edits=done), path)
        path = parts / f"retained-{b:05d}.parquet"
        if b in scored_at and not path.exists():
            nll = common.score(loaded, tokenizer, layout, records.head(done), job.run, LIVE)
            retained = common.per_case(nll, records, reference, LIVE)
            common.log_headline(f"retained after {done} edits, live", retained, records)
            artifacts.write_parquet(common.label(retained, batch=b, n_edits=done), path)
        before = done
    labels = dict(algorithm=job.algorithm, layer=job.layers[-1], layers=layer_name(job.layers), batch_size=B)
    for kind in ("immediate", "retained"):
        table = pd.concat([artifacts.read_parquet(p) for p in parts.paths(f"{kind}-*.parquet")], ignore_index=True)
        artifacts.write_parquet(common.label(table.merge(records[common.INFO], on="case_id"), **labels),
                                job.output[kind])
    parts.clear()
