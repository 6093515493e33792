"""What a user installs stays in step: the conda environment lists pyproject.toml's dependencies."""

import re
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda's name for a PyPI package, where they differ


def requirement(text: str) -> tuple[str, str]:
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", text.strip()).groups()
    return CONDA_NAMES.get(name.lower(), name.lower()), spec.replace(" ", "")


def test_the_conda_environment_lists_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(requirement(d) for d in project["dependencies"])
    env = yaml.safe_load((REPO / "workflow" / "envs" / "editscale.yaml").read_text())["dependencies"]
    listed = {}
    for entry in env:
        for item in entry["pip"] if isinstance(entry, dict) else [entry]:
            if item.startswith("-e") or item.split(">")[0].split("=")[0] in ("python", "pip"):
                continue
            name, spec = requirement(item)
            listed[name] = spec
    assert listed == wanted
    assert any(isinstance(e, dict) and "-e ../.." in e["pip"] for e in env)  # and editscale itself, from here
