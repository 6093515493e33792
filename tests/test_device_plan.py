"""device/plan.sh, the GPU window's plan, in its tiny mode on this CPU, the way the device machine
runs it: a fresh interpreter that sees only the packages the device's image holds
(device/image.txt) and the wheels device/wheels.py carries, installed with --no-index. The
workflow must run to its end without pulp, and the results come back packed."""

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "device"))
import wheels as carried  # noqa: E402
from conftest import SHARED


def device_image(view: Path) -> int:
    """A folder that exposes, by symlinks, the installed distributions the device's image holds,
    and what they require as installed here: the image is self-consistent on the device, and the
    versions here may need other dependencies than the device's do (huggingface_hub's, say)."""
    from packaging.requirements import Requirement

    installed = {carried.normalise(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    todo, seen = [n for n in carried.image() if n in installed], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in installed[name].requires or []:
            req = Requirement(line)
            dep = carried.normalise(req.name)
            if dep in installed and (req.marker is None or req.marker.evaluate({"extra": ""})):
                todo.append(dep)
    view.mkdir()
    for name in sorted(seen):
        dist = installed[name]
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__") and f.suffix != ".pth"}
        for top in tops:
            if not (view / top).exists():
                (view / top).symlink_to(Path(dist.locate_file(top)))
    return len(seen)


@pytest.mark.slow
def test_device_plan_runs_the_tiny_workflow_from_the_carried_wheels_alone(tiny_llama_dir, tmp_path):
    if SHARED is None:
        pytest.skip("needs the offline data (../shared/data)")
    carry = tmp_path / "carry"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([sys.executable, str(ROOT / "device" / "wheels.py"), str(carry / "a" / "wheels"),
                    "--python-version", here], check=True, capture_output=True, text=True)
    (carry / "a" / "part.aa").write_bytes(b"")  # the GGUF's half; the tiny mode never reads it
    names = {carried.split(w.name)[0] for w in (carry / "a" / "wheels").glob("*.whl")}
    assert {"snakemake", "gguf"} <= names and "pulp" not in names and not names & carried.image()

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    assert device_image(tmp_path / "image") > 20
    site = next(fresh.glob("lib/python*/site-packages"))
    (site / "device-image.pth").write_text(str(tmp_path / "image") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{fresh / 'bin'}:/usr/bin:/bin", DEVICE_CARRY=str(carry), DEVICE_ROOT=str(tmp_path / "root"),
               OUT=str(tmp_path / "out"), DEVICE_BUDGET_S="500")
    plan = ["bash", str(ROOT / "device" / "plan.sh")]
    install = subprocess.run([*plan, "install"], env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = "import importlib.util as u; print(u.find_spec('snakemake').origin, u.find_spec('pulp'))"
    seen = subprocess.run([str(fresh / "bin" / "python3"), "-c", probe], env={**env, "PYTHONPATH": str(tmp_path / "root" / "site")},
                          capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "root" / "site") in seen and seen.strip().endswith("None")  # snakemake carried, no pulp

    done = subprocess.run([*plan, "run", "--tiny", str(tiny_llama_dir)], env=env, capture_output=True, text=True,
                          timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    for step in ("values-fp32", "values-bf16", "values-single", "workflow"):
        assert f"== {step}: exit 0" in log, log
    assert "s/fact" in (tmp_path / "out" / "values-bf16.log").read_text()
    with tarfile.open(tmp_path / "out" / "results.tar.gz") as packed:
        names = packed.getnames()
    for table in ("summary/batch.parquet", "summary/retained.parquet", "summary/findings.md"):
        assert any(n.endswith(table) for n in names), (table, names)
    assert not any(n.endswith(".safetensors") for n in names)
