"""The whole workflow end to end on a tiny random Llama: 16 records, two layers, in a temporary folder."""

import os
import signal
import time

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    SHARED,
    copy_run,
    results,
    snakemake,
    tiny_workflow,
    workflow_config,
    write_workflow_config,
)

from editscale import settings
from editscale.workflow import experiments
from editscale.workflow.experiments import protocols
from editscale.workflow.stages import selection_name

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]


@pytest.fixture(scope="module")
def workdir(tiny_run, tmp_path_factory):
    """A copy of the session's clean tiny run, which the tests here change."""
    return copy_run(tiny_run[0], tmp_path_factory.mktemp("workflow") / "run")


def run_dir(workdir) -> str:
    from editscale import settings

    return f"results/tiny-llama/{selection_name(settings.results(settings.parse(workflow_config(workdir)).data))}"


def test_end_to_end_then_nothing_to_do(workdir):
    # The session's cold run (conftest.tiny_run) made this folder; its copy has nothing left to do.
    again = snakemake(workdir, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    config = workflow_config(workdir)
    s = settings.parse(config)
    run = workdir / run_dir(workdir)
    every = {kind: pd.read_parquet(run / "summary" / f"{kind}.parquet")
             for kind in ("sweep", "batch", "immediate", "retained", "baseline", "quality", "health", "findings")}
    scored = ("sweep", "batch", "immediate", "retained", "baseline")
    assert s.evaluation.protocols == ("teacher_forced", "live")  # the tiny run reads both
    for kind in scored:  # under live: ES PS NS NU Score, the rows teacher forcing has, no magnitudes
        table = every[kind]
        live = table[table.protocol == "live"]
        assert set(live.metric) == {"ES", "PS", "NS", "NU", "Score"}, kind
        assert len(live) * 7 == (table.protocol == "teacher_forced").sum() * 5, kind
    summary = {kind: t[t.protocol == "teacher_forced"] if kind in scored else t for kind, t in every.items()}
    assert set(every["findings"].protocol) == {"teacher_forced", "live", "teacher_forced − live"}
    n_metrics = 7  # ES PS NS EM PM NM Score
    sweep, batch, seq = s.sweep, s.batch, s.sequential
    assert len(summary["sweep"]) == len(sweep.algorithms) * len(sweep.layers) * n_metrics
    assert len(summary["batch"]) == len(batch.algorithms) * len(batch.sizes) * n_metrics
    # Immediate cases pooled by stretch: N/4 edits, or a batch where B is longer.
    stretches = sum(-(-seq.n // max(size, seq.n // protocols.STRETCHES)) for size in seq.sizes)
    assert len(summary["immediate"]) == len(seq.algorithms) * stretches * n_metrics
    immediate = summary["immediate"]
    headline = immediate[(immediate.batch_size < seq.n) & immediate.metric.isin(["ES", "PS", "NS", "Score"])]
    assert len(headline) and headline.versus_one_batch.notna().all()  # each point beside the one batch, same cases
    every = seq.retained_every_edits  # retained after every multiple of max(B, every) edits, and at the end
    checkpoints = sum(len(set(range(max(size, every), seq.n + 1, max(size, every))) | {seq.n}) for size in seq.sizes)
    assert len(summary["retained"]) == len(seq.algorithms) * (checkpoints + len(seq.sizes)) * n_metrics  # + 0 edits
    assert len(summary["baseline"]) == n_metrics and len(summary["quality"]) == 1 + len(seq.algorithms) * checkpoints
    batches = sum(-(-seq.n // size) + 1 for size in seq.sizes)  # every batch, and W₀
    assert len(summary["health"]) == len(seq.algorithms) * batches and summary["health"].delta_relative.notna().all()
    assert (summary["sweep"]["format"] == "full").all()
    best = yaml.safe_load((run / "sweep" / "best_layer.yaml").read_text())["layer"]
    assert best in sweep.layers and set(summary["batch"].layer) == {best}
    # A variant's override reaches its job: EMMET at ε = 1 is MEMIT's update, so its cases score as
    # MEMIT's to rounding, while EMMET at the default ε = 0.1 does not.
    cases = {a: pd.concat([pd.read_parquet(run / "batch" / f"{a}-layer{best}-b{b}.cases.parquet") for b in batch.sizes])
             for a in ("memit", "emmet", "emmet@emmet_lambda=1")}
    metrics = ["ES", "PS", "NS", "EM", "PM", "NM"]
    assert (cases["emmet@emmet_lambda=1"][metrics] - cases["memit"][metrics]).abs().max().max() < 1e-6
    assert (cases["emmet"][metrics] - cases["memit"][metrics]).abs().max().max() > 1e-6
    for kind in ("sweep", "batch", "immediate", "retained"):
        for suffix in (".csv", ".md"):
            assert (run / "summary" / f"{kind}{suffix}").stat().st_size > 0
    assert set(summary["findings"].verdict) <= {"reproduced", "contradicted", "inconclusive at this n", "not measured"} \
        | {f"{a} retains most" for a in seq.algorithms} | {"live below teacher-forced", "live above teacher-forced"}
    text = (run / "summary" / "findings.md").read_text()
    assert text.split("\n\n")[0].count("\n| ") == len(summary["findings"])  # a line per claim
    assert all(f"\n| {layer} | " in text for layer in sweep.layers)  # and each swept layer's Score and P(best)
    assert "batch-live" in experiments.figure_files(s.evaluation.protocols)
    for name in experiments.figure_files(s.evaluation.protocols):
        for fmt in ("png", "pdf"):
            assert (run / "plots" / f"{name}.{fmt}").stat().st_size > 1000
    # Only the figures depend on the plotting style.
    config.setdefault("plots", {})["palette"] = "deep"
    write_workflow_config(workdir, config)
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
    original = (workdir / "config" / "config.yaml").read_text()
    config = yaml.safe_load(original)
    try:
        changed = yaml.safe_load(original)
        changed["model"]["device"] = "cuda"
        changed["threads"] = 2
        changed["values"].update(batch_size=3, chunk=1)
        changed["evaluation"].update(batch_size=7, max_tokens=999)
        changed["stats"]["batch_tokens"] = 512
        changed["sequential"]["snapshot_every"] = 1
        changed["edit"] = {"allow_conflicts": True}
        changed["resources"] = {"model_mem_mb": 64000, "model_runtime": 600, "gpus": 1}
        reordered = {key: (dict(reversed(list(value.items()))) if isinstance(value, dict) else value)
                     for key, value in reversed(list(changed.items()))}
        write_workflow_config(workdir, reordered, sort_keys=False)
        assert planned_jobs(workdir) == []
        # A result setting of one algorithm reruns that algorithm's jobs and what reads them, nothing else.
        config.setdefault("edit", {})["emmet_lambda"] = 0.5
        write_workflow_config(workdir, config)
        jobs = planned_jobs(workdir)
        edit_rules = ("sweep", "batch", "sequential", "sweep_live", "batch_live", "sequential_live")
        edits = [wildcards for rule, wildcards in jobs if rule in edit_rules]
        assert edits and all("algorithm=emmet" in w for w in edits), jobs
        assert {rule for rule, _ in jobs} <= {*edit_rules, "best_layer", "summary", "collect", "findings", "plots",
                                              "downstream"}, jobs  # (g) reads every algorithm's runs
    finally:
        (workdir / "config" / "config.yaml").write_text(original)


def test_adding_live_to_a_finished_run_reruns_only_scoring(tiny_run, tmp_path):
    """Without live, a finished run plans only its tables and figures again (no job that touches the
    model); with live added back, only the live twins run beside them, never values, C, an edit or a
    sequential run, and they write the cold run's live tables byte for byte (the same edits, solved
    again from the same files or replayed from the run's stored factors)."""
    work = copy_run(tiny_run[0], tmp_path / "run")
    config = workflow_config(work)
    config["evaluation"]["protocols"] = ["teacher_forced"]
    write_workflow_config(work, config)
    assert {rule for rule, _ in planned_jobs(work)} <= {"summary", "findings", "plots"}
    assert snakemake(work, "--omit-from", "plots").returncode == 0  # its tables as they would be without live
    live = sorted(p for p in (work / "results").rglob("*.live.*") if "/logs/" not in str(p)
                  and "/benchmarks/" not in str(p))
    assert {p.name.split(".")[0] for p in live} >= {"baseline", "memit-layer0-b2", "memit-layer1"}
    for path in live:
        path.unlink()
    config["evaluation"]["protocols"] = ["teacher_forced", "live"]
    write_workflow_config(work, config)
    planned = {rule for rule, _ in planned_jobs(work)}
    assert {"baseline_live", "sweep_live", "batch_live", "sequential_live"} <= planned
    assert planned <= {"baseline_live", "sweep_live", "batch_live", "sequential_live", "summary", "findings", "plots"}
    done = snakemake(work)
    assert done.returncode == 0, done.stderr[-3000:]
    again = results(work)
    assert sorted(again) == sorted(tiny_run[2])
    for name, content in tiny_run[2].items():
        if isinstance(content, bytes):
            assert again[name] == content, name
        else:
            assert content.keys() == again[name].keys() and all(torch.equal(content[k], again[name][k])
                                                                for k in content), name


def test_killed_sequential_run_resumes_where_it_stopped(workdir):
    """A sequential job of the clean run (2 batches of 2) killed after its first batch, then
    resumed: it picks up after batch 1 and writes the uninterrupted run's tables, byte for byte."""
    target = f"{run_dir(workdir)}/sequential/emmet-layer0-b2.immediate.parquet"
    folder = workdir / f"{run_dir(workdir)}/sequential"
    clean = {p.name: p.read_bytes() for p in folder.glob("emmet-layer0-b2.*.parquet")  # the uninterrupted run's
             if ".live." not in p.name}
    assert len(clean) == 4, sorted(clean)
    (workdir / target).unlink(missing_ok=True)
    process = snakemake(workdir, target, popen=dict(start_new_session=True))
    deadline = time.time() + 240
    while not list(folder.glob(".emmet-layer0-b2.*.parts/batch-*.safetensors")) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
    process.wait()
    (parts,) = folder.glob(".emmet-layer0-b2.*.parts")
    done = len(list(parts.glob("batch-*.safetensors")))
    assert done == 1, f"the run was not caught mid-way (batches done: {done})"
    snakemake(workdir, "--unlock")  # the README's steps: unlock, then run again
    rerun = snakemake(workdir, target)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (workdir / f"{run_dir(workdir)}/logs/sequential/emmet-layer0-b2.log").read_text()
    assert "after batch 1" in log
    immediate = pd.read_parquet(workdir / target)
    assert sorted(immediate.batch) == [0, 0, 1, 1] and immediate.case_id.is_unique
    assert not parts.exists()  # the tables are written, the run folder is gone
    for name, table in clean.items():  # results, quality and weight health, byte for byte
        assert (folder / name).read_bytes() == table, name


def test_zsre_runs_every_experiment_and_names_its_metrics(tmp_path):
    """The same workflow on zsRE (KnowEdit's file, EasyEdit's target): sweep, batch and sequential,
    with zsRE's metrics in every summary, the findings and the figures' titles."""
    from editscale.data import zsre

    work = tiny_workflow(tmp_path / "zsre", data={"dataset": "zsre", "source": "auto-knowedit", "target": "alt",
                                                  "n": 8},
                         sweep={"layers": [0, 1], "n": 4, "algorithms": ["memit"]},
                         batch={"algorithms": ["memit"], "sizes": [2, 8]},
                         sequential={"algorithms": ["memit"], "sizes": [2]})  # one run each: the metrics are the point
    done = snakemake(work)
    assert done.returncode == 0, done.stderr[-3000:]
    run = work / run_dir(work)
    assert run.name.startswith("zsre-knowedit-alt-") and run.name.endswith("-n8-seed0")
    for kind in ("sweep", "batch", "retained", "baseline"):
        table = pd.read_parquet(run / "summary" / f"{kind}.parquet")
        assert (table.dataset == "zsre").all() and set(table.metric) >= {*zsre.HEADLINE, "Locality", "Score"}, kind
        assert (table.format == "knowedit").all()
    findings = pd.read_parquet(run / "summary" / "findings.parquet")
    assert any(claim.startswith("b. Specificity falls as B grows") for claim in findings.claim)
    assert not any("NS" in claim for claim in findings.claim)


def test_a_window_runs_the_batch_and_sequential_experiments(tmp_path):
    """layer: [0, 1] spreads every batch and sequential edit over layers 0 and 1: paths name the
    window, the tables carry it, C comes from the one statistics pass, and weight health is
    reported per layer and for the window."""
    work = tiny_workflow(tmp_path / "window", layer=[0, 1], sweep={"algorithms": []},
                         sequential={"algorithms": ["memit", "alphaedit"], "sizes": [2], "n": 4})
    done = snakemake(work)
    assert done.returncode == 0, done.stderr[-3000:]
    run = work / run_dir(work)
    assert sorted(p.name for p in (run / "batch").glob("*.cases.parquet") if ".live." not in p.name) == [
        f"{a}-layer0-1-b{b}.cases.parquet" for a in ("emmet", "emmet@emmet_lambda=1", "memit") for b in (2, 4)]
    assert (run / "sequential" / "alphaedit-layer0-1-b2.edits.safetensors").exists()
    # the window's live twins: per-row edits at both layers, and the sequential run replayed at both
    assert (run / "batch" / "memit-layer0-1-b2.live.cases.parquet").exists()
    assert (run / "sequential" / "alphaedit-layer0-1-b2.live.retained.parquet").exists()
    batch = pd.read_parquet(run / "summary" / "batch.parquet")
    assert set(batch.layers) == {"0-1"} and set(batch.layer) == {1}
    health = pd.read_parquet(run / "summary" / "health.parquet")
    assert {"delta_relative", "L0.delta_relative", "L1.delta_relative"} <= set(health.columns)
    from editscale import artifacts

    edits = artifacts.read_tensors(run / "sequential" / "memit-layer0-1-b2.edits.safetensors")
    assert {"layer0.A", "layer0.B", "layer1.A", "layer1.B"} <= set(edits)
    values = sorted(p.parent.name for p in (run / "values").rglob("*.safetensors"))
    assert set(values) == {"layer1"}  # a window's values are its last layer's


def test_finding_f_compares_one_layer_with_a_window(tmp_path):
    """window: {layers: [0, 1]} beside layer: 1 adds the window's runs at the largest B and the
    longest sequential run, (f)'s rows (NS and Score, window minus one layer, paired) and its
    figure; claims (b)–(e) still read the single-layer runs only."""
    work = tiny_workflow(tmp_path / "f", layer=1, window={"layers": [0, 1]}, sweep={"algorithms": []},
                         batch={"algorithms": ["memit"], "sizes": [2, 4]},
                         sequential={"algorithms": ["memit"], "sizes": [2, 4], "n": 4})
    done = snakemake(work)
    assert done.returncode == 0, done.stderr[-3000:]
    run = work / run_dir(work)
    assert sorted(p.name for p in (run / "batch").glob("*.cases.parquet") if ".live." not in p.name) == [
        "memit-layer0-1-b4.cases.parquet", "memit-layer1-b2.cases.parquet", "memit-layer1-b4.cases.parquet"]
    assert sorted(p.name for p in (run / "sequential").glob("*.retained.parquet") if ".live." not in p.name) == [
        "memit-layer0-1-b2.retained.parquet", "memit-layer1-b2.retained.parquet", "memit-layer1-b4.retained.parquet"]
    table = pd.read_parquet(run / "summary" / "findings.parquet")
    assert (table.claim.str.startswith("f. ") & (table.protocol == "live")).sum() == 4  # (f) under live too
    f = table[table.claim.str.startswith("f. ") & (table.protocol == "teacher_forced")]
    assert len(f) == 4 and set(f.verdict) <= {"reproduced", "contradicted", "inconclusive at this n"}
    assert any("NS(layers 0-1) − NS(layer 1), B = 4" in s for s in f.statistic)
    assert any("sequential edits in batches of 2" in s for s in f.statistic)
    b = table[table.claim.str.startswith("b. ")]
    assert len(b) and all("B = 2 to 4" in d or d == "" for d in b.detail)  # the single-layer grid only
    assert (run / "plots" / "window.png").stat().st_size > 1000


def test_a_c_made_elsewhere_and_imported_after_the_model_job_is_used_not_recomputed(tmp_path):
    """C computed in another folder, exported, and imported into a run whose model job has run (`snakemake
    --until model`: a C imported before it would be recomputed, as the job that writes its input runs):
    the workflow plans no stats job, and plans it again once C is gone."""
    import re
    import subprocess
    import sys

    if SHARED is None:
        pytest.skip("C comes from the offline corpus")
    workdir = tiny_workflow(tmp_path / "run")
    cli = lambda *a, cwd: subprocess.run([sys.executable, "-m", "editscale", "stats", *a], capture_output=True,  # noqa: E731
                                         text=True, cwd=cwd, timeout=600)

    def plans(rule):  # the dry run's job table has a row "<rule>  <count>"
        run = snakemake(workdir, "-n")
        assert run.returncode == 0, run.stderr[-2000:]
        return re.search(rf"^{rule}\s+\d+\s*$", run.stdout + run.stderr, re.MULTILINE) is not None

    assert plans("stats")
    model = str(workdir / "tiny-llama")
    made = cli("compute", "--model", model, "--layers", "0", "1", "--tokens", "2000", "--results", "elsewhere",
               cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    out = cli("export", "--model", model, "--layers", "0", "1", "--tokens", "2000", "--results", "elsewhere",
              "--to", "shared-C", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = sorted(str(p) for p in (tmp_path / "shared-C").glob("*.safetensors"))
    assert snakemake(workdir, "--until", "model").returncode == 0
    imported = cli("import", *files, "--model", "tiny-llama", "--results", "results", cwd=workdir)
    assert imported.returncode == 0, imported.stderr
    assert not plans("stats")
    for path in (workdir / "results").rglob("layer*.safetensors"):
        path.unlink()
    assert plans("stats")
