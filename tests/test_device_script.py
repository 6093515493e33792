"""benchmarks/device.sh, the GPU session's one command, run in its tiny mode on the CPU: every step
must run to its end, and the batch experiment must write its tables and findings."""

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_script_runs_every_step_in_its_tiny_mode(tiny_llama_dir, tmp_path):
    from editscale import paths

    if paths.shared_data() is None:
        pytest.skip("needs the offline data (../shared/data)")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE_BUDGET_S": "400"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device.sh"), "--tiny", str(tiny_llama_dir)],
                          env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    for name in ("values-smollm2-fp32", "values-smollm2-bf16", "values-llama3-8b-bf16", "solvers-8b", "stats", "batch"):
        assert f"== {name}: exit 0" in log, log
    assert "s/fact" in (out / "values-smollm2-bf16.log").read_text()
    summary = pd.read_parquet(out / "batch" / "batch-summary.parquet")
    assert set(summary.batch_size) == {4, 16, 32} and set(summary.algorithm) == {"memit", "emmet"}
    assert "b. NS falls as B grows" in (out / "batch" / "findings.md").read_text()
