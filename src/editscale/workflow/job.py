"""One typed path from config to job.

The config is parsed once into `settings.Settings`. A rule's job gets it whole, typed, with the
execution settings and its named inputs, outputs and wildcards: a `Job`. Which settings a job's
results depend on is its stage's `counts`; the rule's only param is their digest, so changing a
result setting reruns exactly the jobs that read it and an execution setting reruns nothing.

    rule batch:  params: settings=lambda w: params("batch", SETTINGS, w)   script: "../scripts/run.py"
    run.py:      dispatch.run(snakemake)   ->   STAGES["batch"].run(Job.of(snakemake))

`Job` and `Stage` sit below every stage and experiment; the dispatch from a rule to its stage
(`workflow/dispatch.py`) sits above them all, so the workflow package has no import loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from editscale import algorithms, editing, settings
from editscale.settings import Execution, Settings


@dataclass(frozen=True)
class Job:
    rule: str
    settings: Settings
    run: Execution
    input: dict  # name -> a path, or a list of them
    output: dict
    wildcards: dict
    log: str
    # What its results depend on, as one digest (`dispatch.identity`): its stage's counts, its wildcards and
    # its inputs' recorded digests. Work in progress (`artifacts.Parts`) is named by it.
    identity: str = ""

    @staticmethod
    def of(smk) -> "Job":
        """The job Snakemake's `snakemake` object describes, its config parsed into typed settings.
        Its torch threads are the ones Snakemake gave it (the config's `threads`, capped by --cores,
        or --set-threads), so the scheduler's count of busy cores is the truth."""
        parsed = settings.parse(smk.config)
        run = dataclasses.replace(Execution.of(parsed), threads=int(smk.threads))
        return Job(smk.rule, parsed, run, _named(smk.input), _named(smk.output), dict(smk.wildcards.items()),
                   str(smk.log[0]))

    def files(self, name: str) -> list[str]:
        """The input `name` as a list of paths, however many it holds."""
        value = self.input[name]
        return [value] if isinstance(value, str) else list(value)

    @property
    def layers(self) -> list[int]:
        """The layer or window this job edits (its `layer` wildcard): v* is optimised at the last."""
        return settings.window(self.wildcards["layer"])

    @property
    def batch_size(self) -> int:
        return int(self.wildcards.get("size", 1))

    @property
    def algorithm(self) -> str:
        """The algorithm or variant (emmet@emmet_lambda=1) the job runs, as its paths name it."""
        return self.wildcards["algorithm"]

    def edit_config(self) -> editing.EditConfig:
        """The job's edit: its algorithm with a variant's overrides in place of the config's settings."""
        return edit_config(self.settings, self.algorithm, self.layers[-1], self.run)


def edit_config(s: Settings, name: str, layer: int, run: Execution | None = None) -> editing.EditConfig:
    base, overrides = algorithms.variant(name)
    run = run or Execution.of(s)
    return editing.EditConfig(algorithm=base.name, layer=layer, edit=dataclasses.replace(s.edit, **overrides),
                              values=s.values, value_batch_size=run.value_batch_size)


@dataclass(frozen=True)
class Stage:
    """What a rule runs (`run`), and which settings its outputs depend on (`counts`: settings and
    wildcards to a plain dict; everything else a job reads is execution only)."""
    run: Callable[[Job], None]
    counts: Callable[[Settings, dict], dict]


@contextlib.contextmanager
def logged(job: Job):
    """Send this library's log records to the job's log file (and stderr) for the block, with
    torch using the job's threads (parallel jobs must not oversubscribe the cores)."""
    import torch

    torch.set_num_threads(job.run.threads)
    Path(job.log).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(job.log, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("editscale")
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    start = time.perf_counter()
    try:
        yield
        root.info("done in %.1f s", time.perf_counter() - start)
    except Exception:
        root.exception("stage failed after %.1f s", time.perf_counter() - start)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def _named(files) -> dict:
    return {name: value if isinstance(value, str) else [str(v) for v in value] for name, value in files.items()}
