"""Summary tables and figures, from per-case Parquet alone (never the model)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import artifacts, metrics

HEADLINE = ["Score", "ES", "PS", "NS"]
GROUPS = {
    "sweep": ["algorithm", "layer"],
    "batch": ["algorithm", "layer", "batch_size"],
    "immediate": ["algorithm", "layer", "batch_size"],
    "retained": ["algorithm", "layer", "batch_size", "n_edits"],
    "baseline": [],
}


def summarise(kind: str, case_paths: list, out_parquet, seed: int = 0) -> None:
    """Aggregate per-case tables of one experiment; also write CSV and Markdown copies beside."""
    cases = pd.concat([pd.read_parquet(p) for p in case_paths], ignore_index=True)
    table = metrics.aggregate(cases, by=GROUPS[kind], seed=seed)
    write_table(table, out_parquet)


def collect_quality(paths_: list, out_parquet) -> None:
    write_table(pd.concat([pd.read_parquet(p) for p in paths_], ignore_index=True), out_parquet)


def write_table(table: pd.DataFrame, out_parquet) -> None:
    out = Path(out_parquet)
    artifacts.write_parquet(table, out)
    artifacts.write_text(table.to_csv(index=False), out.with_suffix(".csv"))
    artifacts.write_text(markdown(table), out.with_suffix(".md"))


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _style(style: dict):
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style=style.get("style", "whitegrid"), context=style.get("context", "paper"),
                  palette=style.get("palette", "colorblind"))
    return sns


def _save(grid, out_png, formats) -> None:
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    out = Path(out_png)
    for fmt in formats:
        with artifacts.atomic_path(out.with_suffix(f".{fmt}")) as tmp:
            grid.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)


def _headline(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.metric.isin(HEADLINE)]


def plot_all(summary: dict, quality_path, style: dict, outputs: dict) -> None:
    """The four figures; `summary` maps experiment kind to its summary Parquet, `outputs` figure name to PNG path."""
    sns = _style(style)
    formats = style.get("formats", ["png", "pdf"])
    fmt = pd.read_parquet(summary["sweep"])["format"].iloc[0]
    note = f"({fmt}-format records)"

    sweep = _headline(pd.read_parquet(summary["sweep"]))
    grid = sns.relplot(sweep, x="layer", y="mean", hue="algorithm", col="metric", col_order=HEADLINE, kind="line",
                       marker="o", height=2.6, facet_kws={"sharey": False})
    grid.figure.suptitle(f"Layer sweep: single edits per layer {note}", y=1.04)
    _save(grid, outputs["sweep"], formats)

    batch = _headline(pd.read_parquet(summary["batch"]))
    grid = sns.relplot(batch, x="batch_size", y="mean", hue="algorithm", col="metric", col_order=HEADLINE,
                       kind="line", marker="o", height=2.6, facet_kws={"sharey": False})
    sizes = sorted(batch.batch_size.unique())
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
    grid.figure.suptitle(f"Batch editing from the unedited model {note}", y=1.04)
    _save(grid, outputs["batch"], formats)

    retained = _headline(pd.read_parquet(summary["retained"]))
    quality = pd.read_parquet(quality_path).dropna(subset=["algorithm"])  # the unedited row has no run
    quality = quality.astype({"batch_size": int}).assign(metric="drift perplexity", mean=lambda q: q.drift_perplexity)
    both = pd.concat([retained, quality[retained.columns.intersection(quality.columns)]], ignore_index=True)
    grid = sns.relplot(both, x="n_edits", y="mean", hue="batch_size", row="algorithm", col="metric",
                       col_order=[*HEADLINE, "drift perplexity"], kind="line", marker="o", height=2.4,
                       palette="viridis", facet_kws={"sharey": False})
    grid.figure.suptitle(f"Sequential-batch editing: retained metrics as edits accumulate {note}", y=1.02)
    _save(grid, outputs["sequential"], formats)

    immediate = _headline(pd.read_parquet(summary["immediate"])).assign(protocol="immediate")
    final = pd.read_parquet(summary["retained"])
    final = _headline(final[final.n_edits == final.groupby(["algorithm", "batch_size"]).n_edits.transform("max")])
    pair = pd.concat([immediate, final.assign(protocol="retained (all edits, at the end)")], ignore_index=True)
    grid = sns.catplot(pair, x="batch_size", y="mean", hue="protocol", row="algorithm", col="metric",
                       col_order=HEADLINE, kind="point", height=2.4, sharey=False)
    grid.figure.suptitle(f"Sequential runs: each batch right after its edit vs all edits at the end {note}", y=1.02)
    _save(grid, outputs["immediate_vs_retained"], formats)
