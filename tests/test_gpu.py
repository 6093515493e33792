"""What a GPU user meets, tested on the CPU: a values job's forward sees the configured batch, and
concurrent jobs on a machine of N (fake) GPUs never share one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from editscale import settings
from editscale.editing import values
from editscale.workflow import stages
from editscale.workflow.job import Job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("batch_size, chunk", [(4, 2), (2, 5), (3, 3)])
def test_a_values_jobs_forward_sees_batch_size_facts_whatever_the_chunk(tiny_run, tmp_path, monkeypatch,
                                                                        batch_size, chunk):
    """The job's forwards, as `_optimise` is called: every one but the last holds `batch_size` facts,
    with saved parts (`chunk`) smaller, larger or equal; and all records are optimised once."""
    workdir, _, _ = tiny_run
    (records,) = (workdir / "results" / "records").glob("*.parquet")
    (templates,) = (workdir / "results" / "tiny-llama").glob("templates-*.yaml")
    s = settings.parse({"model": {"spec": str(workdir / "tiny-llama")},
                        "values": {"steps": 2, "batch_size": batch_size, "chunk": chunk}})
    seen = []
    optimise = values._optimise

    def spy(model, tokenizer, layout, layer, facts, *args):
        seen.append(len(facts))
        return optimise(model, tokenizer, layout, layer, facts, *args)

    monkeypatch.setattr(values, "_optimise", spy)
    job = Job("values", s, settings.Execution.of(s), {"records": str(records), "templates": str(templates)},
              {"values": str(tmp_path / "layer1-records0-7.safetensors")}, {"layer": "1", "start": "0", "end": "7"},
              str(tmp_path / "values.log"), identity="test")
    stages.compute_values(job)
    assert sum(seen) == 7
    assert seen[:-1] == [batch_size] * (len(seen) - 1) and 0 < seen[-1] <= batch_size


def test_the_gpu_configs_values_forward_is_its_stated_batch():
    """config/gpu-paper-grid.yaml's parts hold whole forwards of its batch (256 a forward, not its chunk)."""
    s = settings.parse(yaml.safe_load((REPO / "config" / "gpu-paper-grid.yaml").read_text()))
    run = settings.Execution.of(s)
    assert run.value_batch_size == 256
    assert stages.value_part(run) % run.value_batch_size == 0


WORKER = """
import json, sys, time
from pathlib import Path
from editscale.workflow import devices
locks, count, hold, out = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
device = devices.claim("cuda", count, locks=locks, poll_s=0.02)
start = time.time()
assert devices.claim("cuda", count, locks=locks) == device  # a second load in the same job: the same GPU
time.sleep(hold)
with open(out, "a") as f:
    f.write(json.dumps({"device": device, "start": start, "end": time.time()}) + "\\n")
"""


def _workers(tmp_path, n, count, hold):
    import subprocess
    import sys

    out = tmp_path / "claims.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "locks"), str(count), str(hold), str(out)])
             for _ in range(n)]
    assert [p.wait(timeout=120) for p in procs] == [0] * n
    import json

    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("jobs, gpus", [(6, 2), (3, 4)])
def test_concurrent_jobs_on_a_machine_of_n_gpus_never_share_one(tmp_path, jobs, gpus):
    """Jobs started together on a fake machine of `gpus` devices: each gets a device; no two hold one
    at the same time; with more jobs than devices they queue, and every device is used."""
    claims = _workers(tmp_path, jobs, gpus, hold=0.5)
    assert len(claims) == jobs
    assert {c["device"] for c in claims} == {f"cuda:{i}" for i in range(min(jobs, gpus))}
    for device in {c["device"] for c in claims}:
        spans = sorted((c["start"], c["end"]) for c in claims if c["device"] == device)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (device, spans)


def test_a_killed_job_frees_its_gpu_and_an_explicit_or_single_device_is_taken_as_written(tmp_path):
    import subprocess
    import sys

    from editscale.workflow import devices

    locks = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", WORKER, str(locks), "1", "0", "/dev/null"])
    holder.wait(timeout=60)  # count 1: no lock taken, nothing held
    hold = "from editscale.workflow import devices; import sys, time; print(devices.claim('cuda', 2, locks=__import__('pathlib').Path(sys.argv[1])), flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(locks)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "cuda:0"
    other = subprocess.run([sys.executable, "-c", hold.replace("time.sleep(600)", "pass"), str(locks)],
                           capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "cuda:1"  # cuda:0 is held
    holder.kill()
    holder.wait()
    freed = subprocess.run([sys.executable, "-c", hold.replace("time.sleep(600)", "pass"), str(locks)],
                           capture_output=True, text=True, timeout=60)
    assert freed.stdout.strip() == "cuda:0"  # the killed job's lock went with its process
    assert devices.claim("cuda:3", 8, locks=locks) == "cuda:3"
    assert devices.claim("cuda", 1, locks=locks) == "cuda"
    assert devices.claim("cpu", 0, locks=locks) == "cpu"
