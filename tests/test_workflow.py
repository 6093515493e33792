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


def planned_jobs(workdir) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job `snakemake -n` would run."""
    dry = snakemake(workdir, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = []
    for line in dry.stdout.splitlines():
        if line.startswith(("rule ", "checkpoint ")):
            jobs.append((line.split()[1].rstrip(":"), ""))
        elif line.strip().startswith("wildcards:") and jobs:
            jobs[-1] = (jobs[-1][0], line.split(":", 1)[1].strip())
    return [job for job in jobs if job[0] != "all"]


def test_execution_settings_and_key_order_rerun_nothing(workdir):
    """Device, batch sizes, chunking, threads, snapshots and resources are execution settings; the
    order of keys is not a setting. Only result settings rerun what they affect."""
    assert snakemake(workdir).returncode == 0  # up to date first (an earlier test restyled the plots)
    original = (workdir / "config.yaml").read_text()
    config = yaml.safe_load(original)
    try:
        changed = yaml.safe_load(original)
        changed["model"]["device"] = "cuda"
        changed["threads"] = 2
        changed["values"].update(batch_size=3, chunk=1)
        changed["evaluation"].update(batch_size=7, max_tokens=999)
        changed["stats"]["batch_tokens"] = 512
        changed["sequential"]["snapshot_every"] = 1
        changed["resources"] = {"model_mem_mb": 64000, "model_runtime": 600, "gpus": 1}
        reordered = {key: (dict(reversed(list(value.items()))) if isinstance(value, dict) else value)
                     for key, value in reversed(list(changed.items()))}
        (workdir / "config.yaml").write_text(yaml.safe_dump(reordered, sort_keys=False))
        assert planned_jobs(workdir) == []
        # A result setting of one algorithm reruns that algorithm's jobs and what reads them, nothing else.
        config["edit"]["emmet_lambda"] = 0.5
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
        jobs = planned_jobs(workdir)
        edits = [wildcards for rule, wildcards in jobs if rule in ("sweep", "batch", "sequential")]
        assert edits and all("algorithm=emmet" in w for w in edits), jobs
        assert {rule for rule, _ in jobs} <= {"sweep", "batch", "sequential", "best_layer", "summary", "quality",
                                              "plots"}, jobs
    finally:
        (workdir / "config.yaml").write_text(original)


def test_killed_sequential_run_resumes_where_it_stopped(workdir):
    target = f"{run_dir(workdir)}/sequential/emmet-layer1-b1.immediate.parquet"
    folder = workdir / f"{run_dir(workdir)}/sequential"
    (workdir / target).unlink(missing_ok=True)
    process = snakemake(workdir, target, start_new_session=True)
    deadline = time.time() + 240
    while not list(folder.glob(".emmet-layer1-b1.*.parts/batch-*.safetensors")) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
    process.wait()
    (parts,) = folder.glob(".emmet-layer1-b1.*.parts")
    done = len(list(parts.glob("batch-*.safetensors")))
    assert 1 <= done < 4, f"the run was not caught mid-way (batches done: {done})"
    snakemake(workdir, "--unlock")
    rerun = snakemake(workdir, target, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (workdir / f"{run_dir(workdir)}/logs/sequential/emmet-layer1-b1.log").read_text()
    assert f"after batch {done}" in log
    immediate = pd.read_parquet(workdir / target)
    assert sorted(immediate.batch) == [0, 1, 2, 3] and immediate.case_id.is_unique
    assert not parts.exists()  # the tables are written, the run folder is gone
