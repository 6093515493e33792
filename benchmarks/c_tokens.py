"""How much text C needs: one batch edited with C from a growing corpus budget, paired on the same cases.

    python benchmarks/c_tokens.py --config config/evidence-collapse.yaml --results results \\
        --tokens 20000 100000 400000 0 --sizes 256 1024 --out c-tokens

Reads a finished run of `--config` (its records, the unedited model's value files at its layer and its
baseline table, all under `--results`), so the values are the run's own: v* does not depend on C. For
each budget (0: the whole corpus), C is made once in the store under `--out` (`editing.stats`, the
same files the workflow writes), each batch size's first B records are solved as one batch of the
config's algorithm (MEMIT) against it, and every case is scored teacher-forced as the batch experiment
scores it. Written: `<out>/cases.parquet` (a row a case, budget and B) and `<out>/c-tokens.md`, each
budget against the largest, paired over the same cases (`evaluation.bootstrap`, the findings' n_boot
and seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from editscale import artifacts, data, editing, models, settings
from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.editing import stats as store
from editscale.editing.covariance import load_stats
from editscale.editing.value_file import ValueFile
from editscale.evaluation import bootstrap, metrics
from editscale.evaluation.scoring import LowRankEdits

WHOLE = 10**9  # a budget beyond any offline corpus: C of all of it (the file records the tokens summed)


def run_folder(s: settings.Settings, results: Path) -> tuple[Path, Path]:
    """(the records file, the run's folder) of config `s` under `results`, as the workflow names them."""
    from editscale.workflow.stages import selection_name  # the workflow's one naming of a selection

    name = selection_name(settings.results(s.data))
    return results / "records" / f"{name}.parquet", results / models.slug(s.model.spec) / name


def paired(cases: pd.DataFrame, headline: list[str], n_boot: int, seed: int) -> pd.DataFrame:
    """Each budget − the largest (the whole corpus, budget 0, where it was asked for), per batch size:
    Score and each headline metric, paired over the same cases."""
    rows = []
    largest = lambda budget: WHOLE if budget == 0 else budget  # noqa: E731
    for size, at_size in cases.groupby("batch_size"):
        wide = {b: g.sort_values("case_id") for b, g in sorted(at_size.groupby("budget"), key=lambda x: largest(x[0]))}
        base = wide[max(wide, key=largest)]
        idx = bootstrap.resample(len(base), n_boot, seed)
        for budget, table in wide.items():
            assert (table.case_id.to_numpy() == base.case_id.to_numpy()).all()
            row = {"batch_size": size, "budget": budget, "tokens": int(table.tokens.iloc[0]), "n_cases": len(table)}
            for m in headline:
                a, b = table[m].to_numpy(), base[m].to_numpy()
                row[m], row[f"{m} − ref"] = a.mean(), a.mean() - b.mean()
                row[f"{m} ci"] = bootstrap.interval(a[idx].mean(1) - b[idx].mean(1))
            means = lambda t: np.stack([t[m].to_numpy()[idx].mean(1) for m in headline], -1)  # noqa: E731
            row["Score"] = metrics.harmonic_mean([table[m].mean() for m in headline])
            row["Score − ref"] = row["Score"] - metrics.harmonic_mean([base[m].mean() for m in headline])
            row["Score ci"] = bootstrap.interval(metrics.harmonic_mean(means(table)) - metrics.harmonic_mean(means(base)))
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the finished run's config file")
    parser.add_argument("--results", default="results", help="the finished run's results folder")
    parser.add_argument("--tokens", type=int, nargs="+", default=[20_000, 100_000, 400_000, 0],
                        help="C's token budgets; 0: the whole corpus")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="one batch of each size")
    parser.add_argument("--algorithm", default="memit")
    parser.add_argument("--out", default="c-tokens", help="folder for C's store and the tables")
    args = parser.parse_args()

    s = settings.parse(yaml.safe_load(Path(args.config).read_text()))
    run = settings.Execution.of(s)
    layer = s.layer
    if not isinstance(layer, int):
        raise SystemExit(f"{args.config}: layer is {layer!r}; this measurement needs one layer (layer: 3)")
    records_path, folder = run_folder(s, Path(args.results))
    value_files = sorted((folder / "values" / f"layer{layer}").glob("records*.safetensors"),
                         key=lambda p: int(p.stem.removeprefix("records").split("-")[0]))
    for needed in (records_path, folder / "baseline.nll.parquet"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `snakemake --configfile {args.config}` first")
    n = max(args.sizes)
    records = data.read_records(records_path).head(n)
    if len(records) < n:
        raise SystemExit(f"{records_path} holds {len(records)} records; --sizes asks for {n}")
    cached = ValueFile.for_records(value_files, records.case_id, records_path)
    reference = artifacts.read_parquet(folder / "baseline.nll.parquet")
    model, tok, layout = models.load(s.model.spec, dtype=s.model.dtype, device=run.device, layout=s.model.layout,
                                     revision=s.model.revision)
    cfg = editing.EditConfig(algorithm=args.algorithm, layer=layer, edit=s.edit, values=s.values,
                             value_batch_size=run.value_batch_size)
    headline = list(get_dataset(dataset_of(records)).headline)
    out = Path(args.out)
    print(f"# {s.model.spec} layer {layer}, {args.algorithm}, {dataset_of(records)} {records_path.name}; "
          f"{platform.node()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    tables = []
    for budget in args.tokens:
        stats = dataclasses.replace(s.stats, max_tokens=budget or WHOLE)
        began = time.monotonic()
        (path,) = store.cached(model, tok, layout, stats, out / "stats", [layer], model_name=s.model.spec).values()
        C, meta = load_stats(path, device=run.device)
        made = time.monotonic() - began
        solver = editing.prepare(cfg, C)
        for size in args.sizes:
            began = time.monotonic()
            head = records.head(size)
            (solved,) = editing.independent_batches(solver, cached.keys[:size].T, cached.values.residual[:size].T,
                                                    size, labels=list(head.case_id), weight=layout.weight(model, layer))
            nll = metrics.score(model, tok, head, layout=layout, batch_size=run.eval_batch_size,
                                max_tokens=run.eval_max_tokens, edits=LowRankEdits([solved.A], [solved.B]),
                                case_edit=dict.fromkeys(head.case_id, 0), layer=layer, progress=True)
            cases = metrics.per_case(nll, dataset=dataset_of(head), reference=reference)
            tables.append(cases.assign(tokens=int(meta["tokens"]), budget=budget, batch_size=size))
            print(f"C from {int(meta['tokens']):,} tokens ({made:.0f} s to make or read), one batch of {size}: "
                  + ", ".join(f"{m} {cases[m].mean():.2f}" for m in headline)
                  + f" ({time.monotonic() - began:.0f} s)", flush=True)
    cases = pd.concat(tables, ignore_index=True)
    artifacts.write_parquet(cases, out / "cases.parquet")
    report(cases, headline, s.findings, out)


def report(cases: pd.DataFrame, headline: list[str], findings: settings.Findings, out: Path) -> None:
    table = paired(cases, headline, findings.n_boot, findings.seed)
    lines = [f"| B | C's budget | tokens summed | Score | Score − largest C [95% CI] | "
             + " | ".join(f"{m} − largest C [95% CI]" for m in headline) + " |",
             "|---" * (5 + len(headline)) + "|"]
    for r in table.to_dict("records"):
        ci = lambda m: f"{r[m + ' − ref']:+.2f} [{r[m + ' ci'][0]:+.2f}, {r[m + ' ci'][1]:+.2f}]"  # noqa: E731
        budget = "the whole corpus" if r["budget"] == 0 else f"{r['budget']:,}"
        lines.append(f"| {r['batch_size']} | {budget} | {r['tokens']:,} | {r['Score']:.2f} | {ci('Score')} | "
                     + " | ".join(ci(m) for m in headline) + " |")
    artifacts.write_text("\n".join(lines) + "\n", out / "c-tokens.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
