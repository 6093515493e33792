"""device/plan.sh, the GPU window's plan, in its tiny mode on this CPU, the way the device machine
runs it: a fresh interpreter that sees only the packages the device's image holds
(device/image.txt) and the wheels device/wheels.py carries, installed with --no-index. The
workflow must run to its end without pulp, and the results come back packed."""

import importlib.metadata
import os
import shutil
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
    (carry / "a" / "part.aa").write_bytes(b"GGUF half")  # install checks it is there; the tiny mode never reads it
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

    odd = tmp_path / "tiny llama, a: b"  # a name that an unquoted YAML --config would split
    shutil.copytree(tiny_llama_dir, odd)
    done = subprocess.run([*plan, "run", "--tiny", str(odd)], env=env, capture_output=True, text=True,
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


def plan_run(tmp_path, *args, **env):
    """device/plan.sh with its folders under `tmp_path` (and `env` on top); the finished process."""
    base = {k: v for k, v in os.environ.items() if k not in ("DEVICE_BUDGET_S",)}
    base.update(DEVICE_CARRY=str(tmp_path / "carry"), DEVICE_ROOT=str(tmp_path / "root"), OUT=str(tmp_path / "out"),
                EDITSCALE_CACHE=str(tmp_path / "cache"), **env)
    return subprocess.run(["bash", str(ROOT / "device" / "plan.sh"), *args], env=base, capture_output=True, text=True,
                          timeout=60)


def test_device_plan_stops_on_bad_input_before_any_work(tmp_path):
    """Every guard exits 2 with one line naming what is wrong, before a step runs or the cache is
    touched: the budget must be a number, the tiny model must be a model folder, the GGUF's halves
    must be there, whole and the right file (a damaged join never enters the cache)."""
    (tmp_path / "not-a-model").mkdir()
    cases = [((), {}, "usage"),
             (("deploy",), {}, "unknown mode 'deploy'"),
             (("install",), {}, "part.aa, the GGUF's first half, is missing"),
             (("run", "--tiny"), {}, "--tiny needs a model folder"),
             (("run", "--tiny", str(tmp_path / "nowhere")), {}, "no such folder"),
             (("run", "--tiny", str(tmp_path / "not-a-model")), {}, "not a model folder"),
             (("run", "extra"), {}, "unknown argument 'extra'"),
             (("run",), {"DEVICE_BUDGET_S": "ten"}, "DEVICE_BUDGET_S='ten'"),
             (("run",), {"DEVICE_BUDGET_S": "0"}, "above 0"),
             (("run",), {}, "part.aa, a half of the GGUF, is missing")]
    for args, env, message in cases:
        done = plan_run(tmp_path, *args, **env)
        assert done.returncode == 2 and message in done.stderr, (args, env, done.stdout, done.stderr)
        assert "== " not in done.stdout, (args, done.stdout)  # no step ran
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "part.aa").write_bytes(b"GGUF" + bytes(100))
    done = plan_run(tmp_path, "run")
    assert done.returncode == 2 and "part.ab, a half of the GGUF, is missing" in done.stderr, done.stderr
    (tmp_path / "carry" / "b").mkdir(parents=True)
    (tmp_path / "carry" / "b" / "part.ab").write_bytes(bytes(100))  # the right size would not help: a wrong file
    done = plan_run(tmp_path, "run")
    assert done.returncode == 2 and "the joined GGUF has sha256" in done.stderr, done.stderr
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing partial left in the cache
