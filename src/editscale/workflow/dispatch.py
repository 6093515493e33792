"""From a rule to its stage: the top of the workflow package.

Every stage and experiment module imports `Job` and `Stage` from `job.py`, below them; this module
reads the stages from above (the shared ones, the report's and the experiments' registry), so no
import goes back down-to-up and the package has no loop (tests/test_architecture.py checks it).

    common.smk:  params: settings=params("batch")   ->   dispatch.params("batch", SETTINGS, wildcards)
    run.py:      dispatch.run(snakemake)             ->   STAGES["batch"].run(Job.of(snakemake))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from editscale import artifacts, settings
from editscale.settings import Settings
from editscale.workflow import experiments, report
from editscale.workflow import stages as shared
from editscale.workflow.job import Job, Stage, logged


def stages() -> dict[str, Stage]:
    """Every rule's stage: the experiments' (`experiments.EXPERIMENTS`) and the shared ones'."""
    return {**shared.STAGES, **report.STAGES, **experiments.STAGES,
            **{e.name: e.stage for e in experiments.EXPERIMENTS.values() if e.stage is not None},
            **experiments.live_stages()}


def params(rule: str, s: Settings, wildcards) -> str:
    """A rule's param: the digest of the settings its stage counts (`Stage.counts`)."""
    return settings.digest(stages()[rule].counts(s, dict(wildcards.items()) if hasattr(wildcards, "items") else {}))


def identity(stage: Stage, job: Job) -> str:
    """Everything a job's results depend on, as one digest: the settings its stage counts, its
    wildcards, and each input's digest as the job that wrote it recorded it. Computed here, once, for
    every stage; a stage names its work in progress by it (`job.identity`), so that work is resumed
    only by the very same job, and describes nothing twice. (C's partial sums are named in C's store,
    `stats.identity`, which the `Editor` shares and which has no job.)"""
    inputs = {name: [artifacts.digest_of(path) for path in job.files(name)] for name in sorted(job.input)}
    return settings.digest({"counts": stage.counts(job.settings, job.wildcards), "wildcards": job.wildcards,
                            "inputs": inputs})


def run(smk) -> None:
    """Run the job `smk` describes (the one generic script, workflow/scripts/run.py)."""
    job = Job.of(smk)
    stage = stages()[job.rule]
    inputs = [path for name in job.input for path in job.files(name)]
    outputs = [path for value in job.output.values() for path in ([value] if isinstance(value, str) else value)]
    with logged(job):
        for path in inputs:  # each as its job wrote it, from inputs that have not changed since
            artifacts.verify(path)
        for path in outputs:
            artifacts.forget(path)
        stage.run(dataclasses.replace(job, identity=identity(stage, job)))  # inputs verified first
        for path in outputs:
            if Path(path).is_file():
                artifacts.record(path, inputs)
