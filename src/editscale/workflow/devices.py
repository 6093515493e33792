"""One GPU per job: which CUDA device a workflow job runs on.

Snakemake counts GPUs but does not hand them out: every model job asks for `gpu=1` (common.smk,
`model_resources`), and `snakemake --cores all --resources gpu=N` runs at most N of them at once,
but no job is told *which* device is its own (snakemake/snakemake#281, "Handle GPU ids", open), so
each would open `cuda`, that is device 0. So a job whose config says `model.device: cuda` (no index)
on a machine with several visible devices claims one here: the first whose lock no other running
job holds.

    <locks>/cuda-<i>.lock     one file a device; `fcntl.flock(LOCK_EX | LOCK_NB)`

The lock is the kernel's, held by the job's process until it exits, so a job killed in any way
frees its GPU at once, and no stale file blocks a later run. A process keeps the device it claimed
(a second load in the same job gets the same one). `cuda:<i>` in the config is taken as written;
under SLURM (`--gpus`) a job sees only its own devices (`CUDA_VISIBLE_DEVICES`), one, and takes it
without a lock. With more jobs than devices (no `--resources gpu=N`), a job waits for one to free.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCKS = Path(tempfile.gettempdir()) / f"editscale-gpus-{os.getuid()}"  # per machine and user, as devices are
_claimed: dict[Path, tuple[str, object]] = {}  # this process's claim, per lock folder: (device, the open lock file)


def claim(device: str, count: int, *, locks: Path = LOCKS, poll_s: float = 1.0) -> str:
    """The device this job runs on: for a bare `cuda` with `count` > 1 visible devices, `cuda:<i>`,
    the first no other process holds (waiting while all are held); otherwise `device` itself."""
    if device != "cuda" or count <= 1:
        return device
    if locks in _claimed:
        return _claimed[locks][0]
    locks.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while True:
        for index in range(count):
            handle = open(locks / f"cuda-{index}.lock", "a")  # noqa: SIM115 (held for the process's life)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _claimed[locks] = (f"cuda:{index}", handle)
            log.info("device cuda:%d of %d (lock %s)", index, count, handle.name)
            return f"cuda:{index}"
        if waited == 0.0:
            log.warning("all %d GPUs are held by other jobs; waiting for one (run with --resources gpu=%d "
                        "to queue jobs in Snakemake instead)", count, count)
        time.sleep(poll_s)
        waited += poll_s
