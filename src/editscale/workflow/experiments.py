"""The paper's experiments as workflow stages: independent edits (layer sweep, batch editing)
and sequential-batch editing with immediate and retained evaluation.

Each takes its rule's params (result settings, plain dicts) and the execution settings `run`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import yaml

from editscale import algorithms, artifacts, data, editing
from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.editing.covariance import load_stats
from editscale.editing.sequential import run_identity, stored_edits
from editscale.editing.sequential import sequential as run_sequential
from editscale.evaluation import fluency, metrics
from editscale.evaluation.scoring import LowRankEdits
from editscale.settings import EditSettings, Execution, ValueSettings, layer_name
from editscale.workflow.stages import load_model, read_values

log = logging.getLogger(__name__)
INFO = ["case_id", "dataset", "format"]  # what every per-case table carries from its records


def edit_config(edit: dict, algorithm: str, layer: int, run: Execution, values: dict | None = None):
    """The EditConfig of one job from its params (`edit` may hold only the algorithm's own settings, a
    variant's overrides already in it: common.smk's edit_params). Tables keep the variant's name."""
    base, _ = algorithms.variant(algorithm)
    return editing.EditConfig(algorithm=base.name, layer=layer, edit=EditSettings(**edit),
                              values=ValueSettings(**(values or {})), value_batch_size=run.value_batch_size)


def _cached_values(value_paths: list, records: pd.DataFrame, records_path) -> dict:
    """The value files' tensors for exactly `records`, in their order."""
    cached = read_values(value_paths)
    n = len(records)
    if len(cached["case_id"]) < n or not (cached["case_id"][:n].numpy() == records.case_id.to_numpy()).all():
        raise ValueError(f"value files {value_paths} do not match the records in {records_path}; rerun the values rule")
    return {key: tensor[:n] for key, tensor in cached.items()}


def _score(model, tokenizer, layout, records, run: Execution, **edits) -> pd.DataFrame:
    return metrics.score(model, tokenizer, records, layout=layout, batch_size=run.eval_batch_size,
                         max_tokens=run.eval_max_tokens, **edits)


def _per_case(nll: pd.DataFrame, records: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """The dataset's per-case metrics, read against the baseline's scored table where they need it."""
    return metrics.per_case(nll, dataset=dataset_of(records), reference=reference)


def _reference(baseline_nll) -> pd.DataFrame | None:
    return artifacts.read_parquet(baseline_nll) if baseline_nll is not None else None


def _log_headline(what: str, cases: pd.DataFrame, records: pd.DataFrame) -> None:
    headline = get_dataset(dataset_of(records)).headline
    means = [cases[m].mean() for m in headline]
    log.info("%s: %d cases, %s, Score %.1f", what, len(cases),
             " ".join(f"{m} {v:.1f}" for m, v in zip(headline, means)), metrics.harmonic_mean(means))


def _label(table: pd.DataFrame, **columns) -> pd.DataFrame:
    for name, value in columns.items():
        table.insert(0, name, value)
    return table


def independent(*, model: dict, edit: dict, run: Execution, records_path, value_paths, stats_paths: list,
                templates_path, baseline_nll, algorithm: str, layers: list, batch_size: int, n: int, out_nll,
                out_cases) -> None:
    """N edits in batches of `batch_size`, each batch solved against the unedited model, all
    evaluated together with per-row low-rank edits (nothing is applied to the model). At one layer
    every batch is solved from the value files at once; over a window each batch is spread over
    the layers in turn (`editing.edit_window`), its keys recomputed above the first. `baseline_nll`
    is the unedited model's scored table, for metrics read against it (None: CounterFact needs none)."""
    loaded, tokenizer, layout = load_model(model, run)
    records = data.read_records(records_path).head(n)
    facts = records.to_dict("records")
    editing.check_conflicts([facts[i : i + batch_size] for i in range(0, n, batch_size)], run.allow_conflicts)
    cached = _cached_values(value_paths, records, records_path)
    layer = layers[-1]
    cfg = edit_config(edit, algorithm, layer, run)
    solvers = {at: editing.prepare(cfg, load_stats(path, device=run.device)[0]) for at, path in zip(layers, stats_paths)}
    if len(layers) == 1:
        solved = editing.independent_batches(solvers[layer], cached["keys"].T, cached["residual"].T, batch_size,
                                             labels=list(records.case_id))
        edits = LowRankEdits([e.A for e in solved], [e.B for e in solved])
    else:
        from editscale.editing.keys import load_templates
        from editscale.editing.values import Values

        templates, per_layer = load_templates(templates_path), {at: ([], []) for at in layers}
        for start in range(0, n, batch_size):
            cols = slice(start, start + batch_size)
            known = (None, Values(*(cached[f][cols] for f in Values.__dataclass_fields__)))
            spread = editing.edit_window(loaded, tokenizer, layout, cfg, layers, facts[cols], templates, solvers,
                                         known=known)
            for at, batch in spread.items():
                per_layer[at][0].append(batch.A)
                per_layer[at][1].append(batch.B)
        edits = {at: LowRankEdits(A, B) for at, (A, B) in per_layer.items()}
    case_edit = {case: i // batch_size for i, case in enumerate(records.case_id)}
    nll = _score(loaded, tokenizer, layout, records, run, edits=edits, case_edit=case_edit, layer=layer, progress=True)
    # The value files are in record order (checked by _cached_values), so the losses join as a column.
    case_info = records[INFO].assign(value_loss=cached["loss"].numpy())
    cases = _per_case(nll, records, _reference(baseline_nll)).merge(case_info, on="case_id")
    name = layer_name(layers)
    _log_headline(f"{algorithm} layer {name}, batches of {batch_size}", cases, records)
    for table in (nll, cases):
        _label(table, algorithm=algorithm, layer=layer, layers=name, batch_size=batch_size)
    artifacts.write_parquet(nll, out_nll)
    artifacts.write_parquet(cases, out_cases)


def baseline(*, model: dict, evaluation: dict, run: Execution, records_path, out_nll, out_cases, out_quality) -> None:
    """The unedited model's metrics, fluency and drift: what every result is read against."""
    loaded, tokenizer, layout = load_model(model, run)
    records = data.read_records(records_path)
    nll = _score(loaded, tokenizer, layout, records, run)
    cases = _per_case(nll, records).merge(records[INFO], on="case_id")  # its own reference
    _log_headline("unedited model", cases, records)
    artifacts.write_parquet(nll, out_nll)
    artifacts.write_parquet(cases, out_cases)
    artifacts.write_parquet(pd.DataFrame([{"n_edits": 0, **_quality(loaded, tokenizer, records, evaluation)}]),
                            out_quality)


def _quality(model, tokenizer, records, evaluation: dict) -> dict:
    entropy = fluency.generation_entropy(model, tokenizer, records, n_cases=evaluation["fluency_cases"],
                                         max_new_tokens=evaluation["fluency_tokens"])
    return {"drift_perplexity": fluency.drift_perplexity(model, tokenizer, max_tokens=evaluation["drift_tokens"]),
            "fluency": float(entropy.entropy.mean()) if len(entropy) else float("nan")}


def best_layer(case_paths: list, out_path) -> None:
    """The layer whose edits score best (harmonic mean of ES, PS, NS), over all sweep algorithms."""
    cases = pd.concat([artifacts.read_parquet(p) for p in case_paths])
    summary = metrics.aggregate(cases, by=["layer"])
    scores = summary[summary.metric == "Score"].set_index("layer")["mean"]
    layer = int(scores.idxmax())
    artifacts.write_text(yaml.safe_dump({"layer": layer, "score": float(scores.max()),
                                         "scores": {int(k): float(v) for k, v in scores.items()}}), out_path)


def read_layer(path) -> int:
    with open(path) as f:
        return int(yaml.safe_load(f)["layer"])


def sequential(*, model: dict, edit: dict, values: dict, evaluation: dict, run: Execution, records_path, templates_path,
               stats_paths: list, baseline_nll, value_paths: list, algorithm: str, layers: list, batch_size: int, n: int,
               retained_every_edits: int, out_immediate, out_retained, out_quality, out_batches, out_edits) -> None:
    """Batches applied one after another; each batch recorded as it finishes, so a killed run
    resumes. The first batch edits the unedited model, so its keys and values come from the value files.

    Writes the immediate, retained and quality tables, one row of diagnostics per batch, and the
    edit itself: every batch's factors, ΔW_total = A Bᵀ (O((d_in + d_out)·n) floats)."""
    from editscale.editing.keys import load_templates
    from editscale.editing.values import Values

    loaded, tokenizer, layout = load_model(model, run)
    records = data.read_records(records_path).head(n)
    facts = records.to_dict("records")
    editing.check_conflicts([facts[i : i + batch_size] for i in range(0, n, batch_size)], run.allow_conflicts)
    templates = load_templates(templates_path)
    reference = _reference(baseline_nll)  # read once, for every batch's evaluation
    layer = layers[-1]
    cfg = edit_config(edit, algorithm, layer, run, values)
    solvers = {at: editing.prepare(cfg, load_stats(path, device=run.device)[0]) for at, path in zip(layers, stats_paths)}
    n_batches = -(-n // batch_size)
    # Retained evaluation after the same numbers of edits in every run (multiples of max(B, k)), and at the end.
    retained_at = sorted({b for b in range(n_batches) if ((b + 1) * batch_size) % retained_every_edits == 0}
                         | {n_batches - 1})
    # Everything the results depend on: a run folder is only ever resumed by the very same run.
    digests = [artifacts.sha256(path) for path in stats_paths]
    identity = run_identity(cfg, facts, templates, batch_size, layers=layers if len(layers) > 1 else None, extra={
        "model": model, "C": digests[0] if len(digests) == 1 else digests, "evaluation": evaluation,
        "retained_at": retained_at})
    out = Path(out_immediate)
    run_dir = out.parent / f".{out.name.split('.')[0]}.{identity}.parts"
    for stale in out.parent.glob(f".{out.name.split('.')[0]}.*.parts"):
        if stale != run_dir:
            log.info("removing %s, the unfinished run of other settings", stale)
            shutil.rmtree(stale)

    def after_batch(b: int, batch_facts: list) -> None:
        done = min((b + 1) * batch_size, n)
        ids = [f["case_id"] for f in batch_facts]
        nll = _score(loaded, tokenizer, layout, records[records.case_id.isin(ids)], run)
        cases = _label(_per_case(nll, records, reference), batch=b, n_edits=done)
        artifacts.write_parquet(cases, run_dir / f"immediate-{b:05d}.parquet")
        if b in retained_at:
            nll = _score(loaded, tokenizer, layout, records.head(done), run)
            retained = _per_case(nll, records, reference)
            _log_headline(f"retained after {done} edits", retained, records)
            artifacts.write_parquet(_label(retained, batch=b, n_edits=done), run_dir / f"retained-{b:05d}.parquet")
            quality = {"batch": b, "n_edits": done, **_quality(loaded, tokenizer, records, evaluation)}
            artifacts.write_parquet(pd.DataFrame([quality]), run_dir / f"quality-{b:05d}.parquet")
        log.info("batch %d/%d done (%d edits)", b + 1, n_batches, done)

    cached = _cached_values(value_paths, records.head(batch_size), records_path)
    # The value files hold keys at the window's last layer: the first layer's are cached only for one layer.
    first_batch = (cached["keys"] if len(layers) == 1 else None,
                   Values(*(cached[f] for f in Values.__dataclass_fields__)))
    state = run_sequential(loaded, tokenizer, layout, cfg, facts, templates, solvers, batch_size, run_dir,
                           identity=identity, snapshot_every=run.snapshot_every, after_batch=after_batch,
                           first_batch=first_batch, layers=layers)
    labels = dict(algorithm=algorithm, layer=layer, layers=layer_name(layers), batch_size=batch_size)
    formats = records[INFO]
    for kind, path in (("immediate", out_immediate), ("retained", out_retained), ("quality", out_quality)):
        parts = [artifacts.read_parquet(p) for p in sorted(run_dir.glob(f"{kind}-*.parquet"))]
        table = pd.concat(parts, ignore_index=True)
        if kind != "quality":
            table = table.merge(formats, on="case_id")
        artifacts.write_parquet(_label(table, **labels), path)
    batches = pd.DataFrame([state.unedited, *state.diagnostics])  # from W₀ (batch −1, 0 edits) on
    artifacts.write_parquet(_label(batches, **labels), out_batches)
    artifacts.write_safetensors(stored_edits(run_dir), out_edits, metadata={"identity": identity, **labels})
    log.info("diagnostics of the last batch: %s", json.dumps(state.diagnostics[-1]))
    shutil.rmtree(run_dir)  # the tables are written; nothing left to resume
