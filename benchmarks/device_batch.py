"""A config's batch experiment without Snakemake, for a machine that has none (the GPU machine):
records, templates, C and values, then every (B, algorithm) from the smallest B up, until a deadline.

    python benchmarks/device_batch.py config/evidence-batch.yaml --device cuda --model $SMOLLM2_GGUF \\
        --n 4096 --sizes 16 64 256 1024 4096 --seconds 300 --out $OUT/batch

It calls the workflow's own stage functions (the rules' scripts do nothing else), so its tables
are the workflow's. Values are computed in blocks of 256 records until half the time is spent;
the experiment then edits the records that have values (rounded down to a multiple of the
largest B that fits) and runs each B that divides that count, for as long as time allows. It
prints a line per step with its wall time, and writes the batch summary and findings to --out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from editscale import settings as S
from editscale.algorithms import get
from editscale.workflow import experiments, findings, report, stages

BLOCK = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="model.spec instead of the config's (e.g. the carried GGUF file)")
    parser.add_argument("--n", type=int, help="data.n instead of the config's")
    parser.add_argument("--sizes", type=int, nargs="+", help="batch.sizes instead of the config's")
    parser.add_argument("--layer", type=int, help="layer instead of the config's")
    parser.add_argument("--seconds", type=float, default=300, help="stop starting new work after this long")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - start  # noqa: E731

    with open(args.config) as f:
        config = yaml.safe_load(f)
    config["model"] = {**config.get("model", {}), "device": args.device, **({"spec": args.model} if args.model else {})}
    if args.n:
        config["data"] = {**config.get("data", {}), "n": args.n}
    if args.sizes:
        config["batch"] = {**config.get("batch", {}), "sizes": args.sizes}
    if args.layer is not None:
        config["layer"], config["sweep"] = args.layer, {**config.get("sweep", {}), "layers": [args.layer]}
    config["sequential"] = {"algorithms": [], "sizes": [1], "n": 1, "retained_every_edits": 1}
    s = S.parse(config)
    S.check(s)
    if s.layer == "auto":
        raise SystemExit(f"{args.config}: layer is auto; this driver runs no sweep, so name a layer")
    run, layer, n = S.Execution.of(s), int(s.layer), s.data.n
    model, out = S.results(s.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    def step(what: str, fn, **kw) -> None:
        t = time.perf_counter()
        fn(**kw)
        print(f"{what}: {time.perf_counter() - t:.1f} s (at {elapsed():.0f} s)", flush=True)

    records, templates = out / "records.parquet", out / "templates.yaml"
    stats, manifest = out / f"stats-layer{layer}.safetensors", out / "model.yaml"
    step("model", stages.prepare_model, model=model, manifest_path=manifest)
    step("records", stages.select_records, data_settings=S.results(s.data), model_manifest=manifest,
         templates=S.results(s.templates), out_path=records)
    step("templates", stages.make_templates, model=model, templates=S.results(s.templates), run=run,
         out_path=templates)
    step("C", stages.compute_stats, model=model, stats_settings=S.results(s.stats), run=run,
         outputs={layer: stats})
    value_paths = []
    for begin in range(0, n, BLOCK):
        if value_paths and elapsed() > args.seconds / 2:
            break
        path = out / f"values-layer{layer}-{begin}-{min(begin + BLOCK, n)}.safetensors"
        step(f"values {begin}-{min(begin + BLOCK, n)}", stages.compute_values, model=model,
             value_settings=S.results(s.values), run=run, records_path=records, templates_path=templates,
             layer=layer, start=begin, end=min(begin + BLOCK, n), out_path=path)
        value_paths.append(path)
    have = min(n, BLOCK * len(value_paths))
    fits = [b for b in sorted(s.batch.sizes) if b <= have]
    edited = have - have % max(fits) if fits else 0
    sizes = [b for b in fits if edited % b == 0]
    print(f"values for {have} of {n} records; editing {edited} at B = {sizes}", flush=True)
    edit = S.results(s.edit)
    cases, last = [], 0.0
    for size in sizes:
        for algorithm in s.batch.algorithms:
            if cases and elapsed() + last > args.seconds:
                print(f"B = {size} {algorithm}: skipped, {args.seconds - elapsed():.0f} s left", flush=True)
                continue
            params = {k: edit[k] for k in (*get(algorithm).settings, "on_ill_conditioned")}
            stem = out / f"batch-{algorithm}-b{size}"
            t = time.perf_counter()
            step(f"batch {algorithm} B = {size}", experiments.independent, model=model, edit=params, run=run,
                 records_path=records, value_paths=value_paths, stats_paths=[stats], templates_path=templates,
                 baseline_nll=None, algorithm=algorithm, layers=[layer], batch_size=size, n=edited, out_nll=f"{stem}.nll.parquet", out_cases=f"{stem}.cases.parquet")
            last = time.perf_counter() - t
            cases.append(f"{stem}.cases.parquet")
    if cases:
        report.summarise("batch", cases, out / "batch-summary.parquet", n_boot=s.findings.n_boot, seed=s.findings.seed)
        table = pd.concat([pd.read_parquet(p) for p in cases], ignore_index=True)
        rows = findings.batch_size_effect(table, s.findings) + findings.memit_vs_emmet(table, s.findings)
        text = findings.markdown(pd.DataFrame(rows, columns=findings.COLUMNS))
        (out / "findings.md").write_text(text)
        print(text, flush=True)
    print(f"device_batch.py: {elapsed():.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
