"""The wheels the device machine needs for the workflow and lacks: snakemake's closure and gguf,
less what its image holds (device/image.txt) and less pulp (the workflow runs there with
`--scheduler greedy`, which never imports it).

    python3 device/wheels.py .device-carry/wheels                      # for the device (CPython 3.12)
    python3 device/wheels.py /tmp/w --python-version 3.11              # for this machine (tests)

On the device: `python3 -m pip install --no-index --no-deps --target DIR .device-carry/wheels/*.whl`.
The closure is resolved here, with this machine's pip; pure-Python wheels are taken as they are,
sdists are built into wheels, and compiled wheels are fetched again for the target's Python.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REQUIREMENTS = ["snakemake==9.27.1", "gguf==0.19.0"]
LEFT_OUT = {"pulp"}  # 16 MB of the 28 MB closure; only snakemake's ILP scheduler imports it
IMAGE = Path(__file__).with_name("image.txt")
LINUX = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux1_x86_64",
         "manylinux_2_5_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64", "linux_x86_64"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image() -> set[str]:
    lines = IMAGE.read_text().splitlines()
    return {normalise(line) for line in lines if line.strip() and not line.startswith("#")}


def split(filename: str) -> tuple[str, str, bool]:
    """(name, version, pure) of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        name, version, *_, abi, platform = filename[:-4].split("-")
        return normalise(name), version, abi == "none" and platform == "any"
    stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
    name, version = stem.rsplit("-", 1)
    return normalise(name), version, False


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--python-version", default="3.12", help="the target's CPython (the device's: 3.12)")
    args = parser.parse_args()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    have = image()
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        closure = Path(tmp) / "closure"
        pip("download", "-d", str(closure), *REQUIREMENTS)
        for file in sorted(closure.iterdir()):
            name, version, pure = split(file.name)
            if name in have or name in LEFT_OUT:
                continue
            if pure or (file.suffix == ".whl" and args.python_version == here):
                shutil.copy(file, args.dest / file.name)
            elif file.suffix != ".whl":  # an sdist: pure Python here (a compiled one would fail loudly)
                pip("wheel", "--no-deps", "-w", str(args.dest), str(file))
            else:
                platforms = [x for p in LINUX for x in ("--platform", p)]
                pip("download", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
                    args.python_version, *platforms, "-d", str(args.dest), f"{name}=={version}")
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"{len(wheels)} wheels, {size:.1f} MB, for CPython {args.python_version} in {args.dest}")


if __name__ == "__main__":
    main()
