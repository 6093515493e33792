"""Faults as a user meets them, on the tiny workflow: kills at random moments, and a setting changed
under a half-finished run. Either way the final results must be exactly a clean run's."""

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    SHARED,
    assert_identical,
    copy_model,
    copy_run,
    results,
    snakemake,
    tiny_workflow,
    workflow_config,
    write_workflow_config,
)

from editscale import artifacts

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]
KILLS, SEED = 3, 7


def kill_at(workdir: Path, seconds: float) -> bool:
    """Run the workflow and SIGKILL it (and every job) after `seconds`; whether it was still running."""
    process = snakemake(workdir, popen=dict(start_new_session=True))
    try:
        process.wait(timeout=seconds)
        return False
    except Exception:
        os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
        process.wait()
        return True


def test_kills_at_random_moments_then_resume_to_the_clean_results(tiny_run, tmp_path):
    """Killed three times at seeded random moments; each time the README's steps (unlock, run
    again) continue; the final tables and edits are bit-identical to an uninterrupted run's."""
    source, wall, want = tiny_run
    workdir = tmp_path / "killed"
    workdir.mkdir()
    copy_model(source, workdir)
    tiny_workflow(workdir)
    rng = random.Random(SEED)
    killed = 0
    for _ in range(KILLS):
        killed += kill_at(workdir, rng.uniform(0.05, 0.6) * wall)
        assert snakemake(workdir, "--unlock").returncode == 0
    assert killed, "no kill landed while the workflow was running"
    final = snakemake(workdir)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_identical(results(workdir), want)
    assert not list((workdir / "results").rglob("*.parts"))  # no half-done run left behind


def test_a_changed_setting_never_resumes_a_stale_run(tiny_run, tmp_path):
    """A sequential run killed half-way, then stats.max_tokens changed (so C changes): the rerun must
    start over, not continue from the old C, and equal a clean run with the new setting. Both start
    from copies of the clean run without the sequential job's outputs, so only it (and the new C)
    runs."""
    source, _, _ = tiny_run
    target_name = "emmet-layer1-b1"

    def target(workdir):
        from editscale import settings
        from editscale.workflow.stages import selection_name

        data = settings.results(settings.parse(workflow_config(workdir)).data)
        return f"results/tiny-llama/{selection_name(data)}/sequential/{target_name}.immediate.parquet"

    def with_max_tokens(workdir, tokens):
        config = workflow_config(workdir)
        config["stats"]["max_tokens"] = tokens
        write_workflow_config(workdir, config)

    stale = copy_run(source, tmp_path / "stale")
    folder = stale / Path(target(stale)).parent
    process = snakemake(stale, target(stale), popen=dict(start_new_session=True))
    deadline = time.time() + 300
    while not list(folder.glob(f".{target_name}.*.parts/batch-*.safetensors")) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(folder.glob(f".{target_name}.*.parts/batch-*.safetensors")), "the run was not caught mid-way"
    with_max_tokens(stale, 1500)
    assert snakemake(stale, "--unlock").returncode == 0
    rerun = snakemake(stale, target(stale))
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    fresh = copy_run(source, tmp_path / "fresh")
    with_max_tokens(fresh, 1500)
    run = snakemake(fresh, target(fresh))
    assert run.returncode == 0, run.stderr[-3000:]
    prefix = str(Path(target(fresh)).with_suffix("").with_suffix(""))
    for suffix in (".immediate.parquet", ".retained.parquet", ".quality.parquet", ".batches.parquet"):
        assert (stale / (prefix + suffix)).read_bytes() == (fresh / (prefix + suffix)).read_bytes(), suffix
    got, want = (artifacts.read_tensors(w / (prefix + ".edits.safetensors")) for w in (stale, fresh))
    assert all(torch.equal(got[k], want[k]) for k in want)
    log = (stale / Path(target(stale)).parent.parent / "logs" / "sequential" / f"{target_name}.log").read_text()
    assert "resuming" not in log and "removing" in log


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a dead child nobody reaped yet)."""
    try:
        return "\tZ" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].splitlines()[0]
    except (FileNotFoundError, IndexError):
        return False


def test_a_resume_beside_a_job_that_outlived_snakemake_is_refused_then_ends_clean(tiny_run, tmp_path):
    """kill -9 of the Snakemake process alone: its sequential job runs on, an orphan (held still here,
    so it is surely alive when the resume starts). The resumed job refuses to write beside it, naming
    the process; once the orphan is gone, a run ends with exactly the clean run's results.

    It starts from a copy of the clean run without the sequential job's outputs, so only that job
    and what reads it run again (not the whole workflow)."""
    source, _, want = tiny_run
    target_name = "emmet-layer0-b2"  # a job of the clean run (layer 0 is its best)
    workdir = copy_run(source, tmp_path / "orphaned")
    from editscale import settings
    from editscale.workflow.stages import selection_name

    data = settings.results(settings.parse(workflow_config(workdir)).data)
    target = f"results/tiny-llama/{selection_name(data)}/sequential/{target_name}.immediate.parquet"
    folder = workdir / Path(target).parent
    outputs = [p for p in sorted(folder.glob(f"{target_name}.*")) + sorted(folder.glob(f".{target_name}.*.sha256"))
               if ".live." not in p.name]  # the run's own, not its live twin's
    assert len(outputs) == 10, outputs  # five tables and tensors, each with its recorded digest
    for path in outputs:
        path.unlink()
    process = snakemake(workdir, target, popen=dict(start_new_session=True))
    deadline = time.time() + 300
    while not list(folder.glob(f".{target_name}.*.parts/batch-*.safetensors")) and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    (owner,) = folder.glob(f".{target_name}.*.parts/.owner")
    orphan = int(owner.read_text().split()[1])
    os.kill(process.pid, signal.SIGKILL)  # Snakemake only: the job lives on
    os.kill(orphan, signal.SIGSTOP)
    process.wait()
    try:
        assert alive(orphan), "the job did not outlive Snakemake"
        assert snakemake(workdir, "--unlock").returncode == 0
        resumed = snakemake(workdir, target)
        log = (workdir / Path(target).parent.parent / "logs" / "sequential" / f"{target_name}.log").read_text()
        assert resumed.returncode != 0
        assert f"is being written by pid {orphan}" in log and "still running" in log, log[-2000:]
    finally:
        os.kill(orphan, signal.SIGKILL)  # the orphan itself (it may have left Snakemake's process group)
    deadline = time.time() + 60
    while alive(orphan) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(orphan)
    assert snakemake(workdir, "--unlock").returncode == 0
    # The target first: Snakemake does not remake a missing file whose consumers are up to date (they
    # are, in this copy); then everything, which updates what reads it.
    for final in (snakemake(workdir, target), snakemake(workdir)):
        assert final.returncode == 0, final.stderr[-3000:]
    assert_identical(results(workdir), want)
