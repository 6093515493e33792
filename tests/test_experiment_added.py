"""Adding an experiment touches its module, its rule file and its captions, nothing else (issue 39).

A made-up experiment, `toy`, is written into a copy of the package, and nothing else in the copy is
edited. Its summary, figure and findings are then produced by the report's own stages on made-up
per-case tables, in a fresh interpreter that imports the copy.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

TOY = r'''
"""A made-up experiment: ES, PS and NS at two batch sizes, one figure, one claim."""

import pandas as pd

from editscale.workflow import figures
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.findings import Paired, direction, finding, interval
from editscale.workflow.job import Job, Stage


def run(job: Job) -> None:
    raise NotImplementedError("made up")


def claim_z(runs) -> list[dict]:
    cases = runs.chosen["toy"]
    if not len(cases):
        return []
    pair = Paired(cases, "batch_size", runs.options)
    small, large = pair.mean(1, "NS"), pair.mean(8, "NS")
    ci = interval(large[1] - small[1])
    return [finding("z. NS falls from B = 1 to 8 (toy)", "NS(8) - NS(1)", large[0] - small[0], ci,
                    direction(*ci, -1), "(made up)", pair.n)]


def draw(summary: pd.DataFrame, colors, out, formats) -> None:
    fig, axes = figures.grid(1, 1)
    figures.band(axes[0][0], summary[summary.metric == "NS"], "batch_size", "toy", colors[0])
    figures.save(fig, out, formats, "toy")


EXPERIMENT = Experiment(
    "toy", figures={"toy": figures.Figure(lambda c, out: draw(c.tables["toy"], c.colors, out, c.formats),
                                          lambda c: len(c.tables["toy"]))},
    claims={"z": claim_z}, stage=Stage(run, lambda s, w: {}), jobs=lambda s, chosen, window: [{"layer": chosen()}],
    stem="layer{layer}", outputs={"cases": ".cases.parquet"},
    summaries={"toy": ("cases", ("algorithm", "layer", "layers", "batch_size"))})
'''

DRIVE = r'''
import json, sys
from pathlib import Path

import numpy as np
import pandas as pd

import editscale
from editscale import artifacts, settings
from editscale.workflow import dispatch, experiments, report
from editscale.workflow.job import Job

root = Path(sys.argv[1])
assert Path(editscale.__file__).is_relative_to(root), editscale.__file__  # the copy, not the project
s = settings.parse({"layer": 3})
run = settings.Execution.of(s)

rng = np.random.default_rng(0)
n = 40
cases = pd.DataFrame([{"protocol": "teacher_forced", "case_id": i, "dataset": "counterfact", "format": "reduced", "algorithm": "memit",
                       "layer": 3, "layers": "3", "batch_size": b, "ES": 100.0, "PS": 90.0,
                       "NS": float(rng.normal(80 if b == 1 else 60, 5))} for b in (1, 8) for i in range(n)])
artifacts.write_parquet(cases, root / "toy.cases.parquet")
artifacts.write_parquet(cases.drop(columns="batch_size"), root / "bad.cases.parquet")
artifacts.write_text("n_layers: 30\n", root / "model.yaml")


def job(rule, input, output, wildcards=None):
    return Job(rule, s, run, input, output, wildcards or {}, str(root / f"{rule}.log"))


report.summarise(job("summary", {"cases": [str(root / "toy.cases.parquet")]}, {"table": str(root / "toy.parquet")},
                     {"kind": "toy"}))
summary = artifacts.read_parquet(root / "toy.parquet")
try:
    report.summarise(job("summary", {"cases": [str(root / "bad.cases.parquet")]},
                         {"table": str(root / "bad.parquet")}, {"kind": "toy"}))
    refused = ""
except ValueError as error:
    refused = str(error)

kinds = [*experiments.summary_sources()]
inputs = {kind: [str(root / "toy.cases.parquet")] if kind == "toy" else [] for kind in kinds}
report.write_findings(job("findings", {**inputs, "model": str(root / "model.yaml")},
                          {"table": str(root / "findings.parquet")}))
findings = artifacts.read_parquet(root / "findings.parquet")

empty = pd.DataFrame()
tables = {}
for kind in [*experiments.summary_groups(), *experiments.collected_sources()]:
    path = root / f"summary-{kind}.parquet"
    artifacts.write_parquet(summary if kind == "toy" else empty, path)
    tables[kind] = str(path)
outputs = {name: str(root / f"{name}.png") for name in experiments.figures()}
report.plot_all(job("plots", tables, outputs))

print(json.dumps({
    "experiments": list(experiments.EXPERIMENTS), "rule": "toy" in dispatch.stages(),
    "summary": summary[summary.metric == "NS"][["batch_size", "mean", "n_cases"]].to_dict("records"),
    "refused": refused, "claims": findings.claim.tolist(), "verdicts": findings.verdict.tolist(),
    "figure": Path(outputs["toy"]).stat().st_size, "figures": sorted(outputs),
}))
'''


@pytest.mark.slow
def test_a_new_experiment_is_its_module_alone(tmp_path):
    package = tmp_path / "src" / "editscale"
    shutil.copytree(REPO / "src" / "editscale", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "workflow" / "experiments" / "toy.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "drive.py").write_text(DRIVE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(tmp_path / "drive.py"), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["experiments"][-1] == "toy" and "sweep" in got["experiments"]  # found, after the paper's a–g
    assert got["rule"]  # its stage is dispatched like any other
    ns = {row["batch_size"]: row for row in got["summary"]}
    assert ns.keys() == {1, 8} and ns[1]["mean"] - ns[8]["mean"] > 15 and ns[1]["n_cases"] == 40
    assert "toy.cases.parquet" not in got["refused"] and "bad.cases.parquet" in got["refused"]
    assert "['batch_size']" in got["refused"]  # the declared column the table lacks, named
    assert got["claims"] == ["z. NS falls from B = 1 to 8 (toy)"] and got["verdicts"][0].startswith("reproduced")
    assert got["figure"] > 5000 and "toy" in got["figures"]


def test_the_toy_is_not_in_the_project():
    """The copy's experiment stays in the copy: the project's registry is unchanged by the test."""
    from editscale.workflow import experiments

    assert "toy" not in experiments.EXPERIMENTS
