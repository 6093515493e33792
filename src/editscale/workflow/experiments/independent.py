"""Independent edits, the sweep's and batch editing's stage: N edits in batches of B, each batch
solved against the unedited model, all evaluated together with per-row low-rank edits (nothing is
applied to the model)."""

from __future__ import annotations

from editscale import artifacts, editing
from editscale.editing import nas
from editscale.editing.value_file import ValueFile
from editscale.evaluation.metrics import TEACHER_FORCED
from editscale.evaluation.scoring import LowRankEdits
from editscale.settings import layer_name
from editscale.workflow.experiments import common
from editscale.workflow.job import Job


def independent(job: Job, n: int, protocol: str = TEACHER_FORCED) -> None:
    """At one layer every batch is solved from the value files at once; over a window each batch is
    spread over the layers in turn (`editing.edit_window`), its keys recomputed above the first.
    The live twin solves the same edits from the same files (a solve costs a fraction of a scoring)
    and reads them under `protocol`."""
    (loaded, tokenizer, layout), records, facts, cfg, solvers = common.edit_job(job, n)
    cached = ValueFile.for_records(job.files("values"), records.case_id, job.input["records"])
    layers, layer, B = job.layers, job.layers[-1], job.batch_size
    batches = editing.batch_slices(n, B)
    editing.check_conflicts([facts[cut] for cut in batches], job.run.allow_conflicts)
    mu = common.anchor(job, loaded, tokenizer, layout, records, solvers[layer], layer)  # NAS's, or None
    if len(layers) == 1:
        values = cached.values if mu is None else nas.rescaled(cached.values, nas.mlp_outputs(
            loaded, tokenizer, layout, layer, facts), mu)
        # K, R: (d, N), one column a fact
        solved = editing.independent_batches(solvers[layer], cached.keys.T, values.residual.T, B,
                                             labels=list(records.case_id), weight=layout.weight(loaded, layer))
        edits = LowRankEdits([e.A for e in solved], [e.B for e in solved])
    else:
        from editscale.editing.keys import load_templates

        templates, per_layer = load_templates(job.input["templates"]), {at: ([], []) for at in layers}
        for cut in batches:
            known = (None, cached[cut].values)
            spread = editing.edit_window(loaded, tokenizer, layout, cfg, layers, facts[cut], templates, solvers,
                                         known=known, anchor=mu)
            for at, batch in spread.items():
                per_layer[at][0].append(batch.A)
                per_layer[at][1].append(batch.B)
        edits = {at: LowRankEdits(A, B_) for at, (A, B_) in per_layer.items()}
    case_edit = {case: b for b, cut in enumerate(batches) for case in records.case_id.iloc[cut]}
    nll = common.score(loaded, tokenizer, layout, records, job.run, protocol, edits=edits, case_edit=case_edit,
                       layer=layer, progress=True)
    # The value files are in record order (checked by ValueFile.for_records), so the losses join as a column.
    case_info = records[common.INFO].assign(value_loss=cached.values.loss.numpy())
    cases = common.per_case(nll, records, common.reference(job), protocol).merge(case_info, on="case_id")
    name = layer_name(layers)
    common.log_headline(f"{job.algorithm} layer {name}, batches of {B}, {protocol}", cases, records)
    for table in (nll, cases):
        common.label(table, algorithm=job.algorithm, layer=layer, layers=name, batch_size=B)
    artifacts.write_parquet(nll, job.output["nll"])
    artifacts.write_parquet(cases, job.output["cases"])

