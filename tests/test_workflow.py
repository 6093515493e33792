"""The whole workflow end to end on a tiny random Llama: 16 records, two layers, in a temporary folder."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import SHARED, build_tokenizer, save_tiny
from editscale import editing
from editscale.stages import selection_name

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]
REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir, *args, **popen):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    model = save_tiny(root / "tiny-llama", "llama", build_tokenizer(add_bos=True))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"]["spec"] = str(model)
    config["data"].update(counterfact=str(SHARED / "counterfact" / "full"), n=16)
    config["stats"].update(max_tokens=2000)
    config["values"].update(steps=5, chunk=4)
    config["sweep"].update(layers=[0, 1], n=4)
    config["batch"].update(sizes=[2, 4])
    config["sequential"].update(sizes=[2, 4], n=4, retained_every=1)
    config["evaluation"].update(fluency_cases=2, fluency_tokens=5, drift_tokens=500)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def run_dir(workdir) -> str:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    return f"results/tiny-llama/{selection_name(config['data'])}"


def test_end_to_end_then_nothing_to_do(workdir):
    first = snakemake(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    run = workdir / run_dir(workdir)
    summary = {kind: pd.read_parquet(run / "summary" / f"{kind}.parquet")
               for kind in ("sweep", "batch", "immediate", "retained", "baseline", "quality")}
    n_metrics = 7  # ES PS NS EM PM NM Score
    sweep, batch, seq = config["sweep"], config["batch"], config["sequential"]
    assert len(summary["sweep"]) == len(sweep["algorithms"]) * len(sweep["layers"]) * n_metrics
    assert len(summary["batch"]) == len(batch["algorithms"]) * len(batch["sizes"]) * n_metrics
    assert len(summary["immediate"]) == len(seq["algorithms"]) * len(seq["sizes"]) * n_metrics
    checkpoints = sum(-(-seq["n"] // size) for size in seq["sizes"])  # retained after every batch
    assert len(summary["retained"]) == len(seq["algorithms"]) * checkpoints * n_metrics
    assert len(summary["baseline"]) == n_metrics and len(summary["quality"]) == 1 + len(seq["algorithms"]) * checkpoints
    assert (summary["sweep"]["format"] == "full").all()
    best = yaml.safe_load((run / "sweep" / "best_layer.yaml").read_text())["layer"]
    assert best in sweep["layers"] and set(summary["batch"].layer) == {best}
    for kind in ("sweep", "batch", "immediate", "retained"):
        for suffix in (".csv", ".md"):
            assert (run / "summary" / f"{kind}{suffix}").stat().st_size > 0
    for name in ("sweep", "batch", "sequential", "immediate_vs_retained"):
        for fmt in ("png", "pdf"):
            assert (run / "plots" / f"{name}.{fmt}").stat().st_size > 1000
    again = snakemake(workdir, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # Only the figures depend on the plotting style.
    config["plots"]["palette"] = "deep"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    restyled = snakemake(workdir, "-n", "--quiet", "rules")
    assert restyled.returncode == 0
    jobs = [line.split()[0] for line in restyled.stdout.splitlines() if line and line.split()[0] in
            ("plots", "summary", "sweep", "batch", "sequential", "values", "stats", "all")]
    assert "plots" in jobs and not set(jobs) - {"plots", "all"}, restyled.stdout


def test_killed_sequential_run_resumes_from_its_checkpoint(workdir):
    target = f"{run_dir(workdir)}/sequential/emmet-layer1-b1.immediate.parquet"
    parts = workdir / f"{run_dir(workdir)}/sequential/.emmet-layer1-b1.immediate.parts"
    checkpoint = parts / "checkpoint.safetensors"
    process = snakemake(workdir, target, start_new_session=True)
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
    process.wait()
    done = editing.load_checkpoint(checkpoint)["batches_done"]
    assert 1 <= done < 4, f"the run was not caught mid-way (batches done: {done})"
    snakemake(workdir, "--unlock")
    rerun = snakemake(workdir, target, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (workdir / f"{run_dir(workdir)}/logs/sequential/emmet-layer1-b1.log").read_text()
    assert f"after batch {done}" in log
    immediate = pd.read_parquet(workdir / target)
    assert sorted(immediate.batch) == [0, 1, 2, 3] and immediate.case_id.is_unique
