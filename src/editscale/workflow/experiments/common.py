"""What the experiments share: scoring records, per-case tables, the unedited model's baseline,
and the pieces of an edit job (its records, C, solvers, the value files)."""

from __future__ import annotations

import logging

import pandas as pd

from editscale import artifacts, data, editing
from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.editing import nas
from editscale.editing.covariance import load_stats
from editscale.editing.value_file import ValueFile
from editscale.evaluation import fluency, metrics
from editscale.settings import Evaluation, Execution, results
from editscale.workflow.job import Job, edit_config
from editscale.workflow.stages import load_model

log = logging.getLogger(__name__)
INFO = ["case_id", "dataset", "format"]  # what every per-case table carries from its records


def score(model, tokenizer, layout, records, run: Execution, protocol: str = metrics.TEACHER_FORCED,
          **edits) -> pd.DataFrame:
    scored = metrics.score(model, tokenizer, records, layout=layout, batch_size=run.eval_batch_size,
                           max_tokens=run.eval_max_tokens, protocol=protocol, **edits)
    return label(scored, protocol=protocol)  # every table names what scored it


def per_case(nll: pd.DataFrame, records: pd.DataFrame, reference: pd.DataFrame | None = None,
             protocol: str = metrics.TEACHER_FORCED) -> pd.DataFrame:
    """The dataset's per-case metrics under `protocol`, read against the baseline's table of the same
    protocol where they need it; every row names its protocol."""
    cases = metrics.per_case(nll, dataset=dataset_of(records), reference=reference, protocol=protocol)
    return label(cases, protocol=protocol)


def reference(job: Job) -> pd.DataFrame:
    """The unedited model's scored table (the baseline's, of the job's protocol), for metrics read against it."""
    return artifacts.read_parquet(job.input["baseline"])


def scoring_counts(evaluation: Evaluation) -> dict:
    """What a job's teacher-forced scoring, fluency and drift depend on: the evaluation settings but
    `protocols`, which adds live jobs beside it and changes nothing it computes."""
    return {k: v for k, v in results(evaluation).items() if k != "protocols"}


def log_headline(what: str, cases: pd.DataFrame, records: pd.DataFrame) -> None:
    headline = get_dataset(dataset_of(records)).headline
    means = [cases[m].mean() for m in headline]
    log.info("%s: %d cases, %s, Score %.1f", what, len(cases),
             " ".join(f"{m} {v:.1f}" for m, v in zip(headline, means)), metrics.harmonic_mean(means))


def label(table: pd.DataFrame, **columns) -> pd.DataFrame:
    for name, value in columns.items():
        table.insert(0, name, value)
    return table


def quality(model, tokenizer, records, evaluation: Evaluation) -> dict:
    """Fluency (generation entropy) and drift perplexity of the model as it is now."""
    entropy = fluency.generation_entropy(model, tokenizer, records, n_cases=evaluation.fluency_cases,
                                         max_new_tokens=evaluation.fluency_tokens)
    return {"drift_perplexity": fluency.drift_perplexity(model, tokenizer, max_tokens=evaluation.drift_tokens),
            "fluency": float(entropy.entropy.mean()) if len(entropy) else float("nan")}


def edit_job(job: Job, n: int):
    """The model, the first `n` records, the edit's config and a prepared solver for every layer it
    edits, from C in `job.input["stats"]`."""
    loaded, tokenizer, layout = load_model(job)
    records = data.read_records(job.input["records"]).head(n)
    facts = records.to_dict("records")
    cfg = job.edit_config()
    solvers = {at: editing.prepare(cfg, load_stats(path, device=job.run.device)[0])
               for at, path in zip(job.layers, job.files("stats"))}
    return (loaded, tokenizer, layout), records, facts, cfg, solvers


def anchor(job: Job, model, tokenizer, layout, records, solver, layer: int) -> float | None:
    """NAS's μ (`editing.nas.anchor`) for a solver whose values are anchored, from the values of all the
    job's records on the unedited model (their value files, at the value layer `layer`); None for any
    other. Call it while the model is unedited."""
    if not solver.anchored:
        return None
    cached = ValueFile.for_records(job.files("values"), records.case_id, job.input["records"])
    m = nas.mlp_outputs(model, tokenizer, layout, layer, records.to_dict("records"))  # (N, d_out)
    mu = nas.anchor(cached.values, m)
    log.info("NAS anchor μ = %.4g, over %d records' values on the unedited model", mu, len(records))
    return mu


def whole_batches(key: str, sizes, total: int, total_key: str) -> list[str]:
    """A problem for each batch size in `sizes` that does not divide `total` into whole batches."""
    return [f"{key} has {size}, which does not divide {total_key} = {total} into whole batches; use sizes that "
            f"divide it" for size in sizes if size > total or total % size]


def counted_edit(s, w: dict) -> dict:
    """What an edit job's results depend on: the model and the edit as `EditConfig.counted` counts it
    (a variant's overrides in place)."""
    return {"model": results(s.model), **edit_config(s, w["algorithm"], 0).counted(), "layer": w["layer"]}


def baseline(job: Job, protocol: str = metrics.TEACHER_FORCED) -> None:
    """The unedited model's metrics, fluency and drift: what every result is read against. Under
    `live`, its continuations (what specificity's unchanged reading compares with) and metrics alone."""
    loaded, tokenizer, layout = load_model(job)
    records = data.read_records(job.input["records"])
    nll = score(loaded, tokenizer, layout, records, job.run, protocol, progress=True)
    cases = per_case(nll, records, protocol=protocol).merge(records[INFO], on="case_id")  # its own reference
    if protocol != metrics.TEACHER_FORCED:
        log_headline(f"unedited model, {protocol}", cases, records)
        artifacts.write_parquet(nll, job.output["nll"])
        artifacts.write_parquet(cases, job.output["cases"])
        return
    log_headline("unedited model", cases, records)
    artifacts.write_parquet(nll, job.output["nll"])
    artifacts.write_parquet(cases, job.output["cases"])
    artifacts.write_parquet(pd.DataFrame([{"n_edits": 0, **quality(loaded, tokenizer, records,
                                                                    job.settings.evaluation)}]),
                            job.output["quality"])

