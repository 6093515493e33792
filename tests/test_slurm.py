"""The tiny workflow through a real SLURM and the project's profile (workflow/profiles/slurm).

CI starts a single-node SLURM first (.ci/slurm/start.sh: partitions cpu and gpu, two fake GPUs) and
sets EDITSCALE_REQUIRE_SLURM=1, so there a missing SLURM fails instead of skipping. Checked: every
job went through sbatch, its memory, time limit, partition and GPU reached SLURM, the tables equal
a local run's, and a failing job is reported with nothing downstream run.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, SHARED, assert_identical, copy_model, results, snakemake, tiny_workflow

STATE = Path(os.environ.get("EDITSCALE_SLURM_STATE", "/tmp/editscale-slurm"))
# The plugin polls squeue (there is no slurmdbd for sacct) and checks soon and often, for a small test.
SLURM_ARGS = ["--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"), "--jobs", "4",
              "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
              "--seconds-between-status-checks", "1", "--slurm-keep-successful-logs", "--latency-wait", "5"]
RESOURCES = dict(partition="cpu", gpu_partition="gpu", gpus=1, model_mem_mb=1200, model_runtime=30,
                 sequential_runtime=40, light_mem_mb=600, light_runtime=5)


def slurm_is_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, text=True).returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")]


@pytest.fixture(scope="module")
def slurm():
    if not slurm_is_up():
        if os.environ.get("EDITSCALE_REQUIRE_SLURM"):
            pytest.fail("EDITSCALE_REQUIRE_SLURM is set but SLURM is not running (see .ci/slurm/start.sh)")
        pytest.skip("no SLURM here: CI starts one with .ci/slurm/start.sh")


def slurm_jobs(workdir: Path) -> dict[int, str]:
    """{SLURM job id: rule} of every job the plugin submitted for this workflow (from its logs)."""
    jobs = {}
    for log in (workdir / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(p for p in log.parts if p.startswith("rule_")).removeprefix("rule_")
        jobs[int(log.stem)] = rule
    return jobs


def job_fields(job_id: int) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", "-d", str(job_id)], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def test_the_tiny_workflow_through_slurm(slurm, tiny_run, tmp_path):
    local, _, local_results = tiny_run  # the same config, run here without SLURM
    rules_run = sorted(p.stem for p in (local / "results").rglob("logs/**/*.log"))

    cluster = tmp_path / "cluster"
    cluster.mkdir()
    copy_model(local, cluster)
    tiny_workflow(cluster, resources=RESOURCES)
    run = snakemake(cluster, *SLURM_ARGS)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]

    # Every job went through sbatch: one plugin log per job the local run ran.
    jobs = slurm_jobs(cluster)
    assert len(jobs) == len(rules_run) and "sequential" in jobs.values(), (sorted(jobs.values()), rules_run)
    # What each job asked for reached SLURM: model jobs to the GPU partition with a GPU, the rest not.
    model_rules = {"model", "templates", "stats", "values", "sweep", "batch", "baseline", "sequential", "downstream",
                   "baseline_live", "sweep_live", "batch_live", "sequential_live"}  # the tiny run reads live too
    for job_id, rule in jobs.items():
        fields = job_fields(job_id)
        assert fields["JobState"] == "COMPLETED", (rule, fields)
        gpu = rule in model_rules and rule != "model"  # the GGUF conversion never needs one
        minutes = 40 if rule in ("sequential", "sequential_live", "downstream") else 30 if rule in model_rules else 5
        assert fields["Partition"] == ("gpu" if gpu else "cpu"), (rule, fields["Partition"])
        assert fields["TimeLimit"] == f"00:{minutes:02d}:00", (rule, fields["TimeLimit"])
        assert fields["MinMemoryNode"] == (f"{1200 if rule in model_rules else 600}M"), (rule, fields)
        assert ("gres:gpu:1" in fields.get("TresPerJob", "")) == gpu, (rule, fields.get("TresPerJob"))
    # The same tables as the local run, bit for bit.
    assert_identical(results(cluster), local_results)


def test_a_failing_job_is_reported_and_nothing_downstream_runs(slurm, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    tiny_workflow(broken, resources=RESOURCES)
    for weights in (broken / "tiny-llama").glob("*.safetensors"):
        weights.unlink()  # the model rule fails to load it
    run = snakemake(broken, *SLURM_ARGS)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Error in rule model" in output and "SLURM" in output, output[-3000:]
    assert set(slurm_jobs(broken).values()) <= {"model", "data"}  # nothing that needs the model was submitted
    assert not list((broken / "results").rglob("*.safetensors"))
