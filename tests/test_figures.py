"""What the figures draw, read back from their artists: one batch of all N edits is one point at N,
never a line from 0 to N; each sequential point is set against the one batch on the same cases."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from test_protocols import N, run_tables

from editscale.settings import Findings
from editscale.workflow import figures
from editscale.workflow.experiments import downstream, protocols, sequential

matplotlib.use("Agg")
OPTIONS = Findings(n_boot=200, seed=0)
GROUPS = ["algorithm", "layer", "layers", "batch_size"]


@pytest.fixture
def drawn(monkeypatch):
    """The figure each drawing function would save, kept open to be read."""
    kept = []
    monkeypatch.setattr(figures, "save", lambda fig, *args, **kwargs: kept.append(fig))
    return kept


def summaries():
    immediate, retained = run_tables({16: (8.0, -6.0), 64: (2.0, -1.0)})
    start = retained[(retained.batch_size == N) & (retained.n_edits == N)].assign(n_edits=0, batch=-1)
    retained = pd.concat([*(start.assign(batch_size=b) for b in (16, 64, N)), retained], ignore_index=True)
    return (protocols.summarise(immediate, [*GROUPS, "stretch"], OPTIONS),
            protocols.summarise(retained, [*GROUPS, "n_edits"], OPTIONS))


def lines(fig, label):
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == label]


def one_batch_points(fig, label):
    return [c for ax in fig.axes for c in ax.containers if c.get_label() == label]


def test_the_sequential_figure_draws_the_one_batch_as_a_point_and_the_paired_gaps(drawn):
    immediate, retained = summaries()
    quality = pd.DataFrame([{"n_edits": 0, "drift_perplexity": 40.0, "algorithm": "", "batch_size": 0}] + [
        {"n_edits": k, "drift_perplexity": 40.0 + k, "algorithm": "memit", "batch_size": b}
        for b in (16, 64, N) for k in range(64, N + 1, 64) if b < N or k == N])
    sequential.draw_retained(retained, quality, retained.iloc[:0], ["C0", "C1", "C2"], "x.png", ["png"])
    (fig,) = drawn
    assert not lines(fig, f"one batch of {N}")  # never a line...
    points = one_batch_points(fig, f"one batch of {N}")
    assert points and all(list(p.lines[0].get_xdata()) == [N] for p in points)  # ...one point at N
    # The lower row: B = 16's retained points against the one batch on the cases edited so far.
    ns = retained[(retained.batch_size == 16) & (retained.metric == "NS") & (retained.n_edits > 0)]
    gaps = [line for line in lines(fig, "B = 16") if list(line.get_xdata()) == list(ns.n_edits)
            and np.allclose(line.get_ydata(), ns.versus_one_batch)]
    assert gaps, "the NS panel of paired differences"


def test_the_protocols_figure_draws_immediate_and_retained_beside_the_one_batch(drawn):
    immediate, retained = summaries()
    sequential.draw_immediate_vs_retained(immediate, retained, ["C0", "C1", "C2"], "x.png", ["png"])
    (fig,) = drawn
    assert one_batch_points(fig, f"one batch of {N}") and not lines(fig, f"one batch of {N}")
    now = immediate[(immediate.batch_size == 16) & (immediate.metric == "NS")].sort_values("load")
    dashed = [line for line in lines(fig, "B = 16, immediate") if line.get_linestyle() == "--"]
    # Drawn at the mean edits in the model when each stretch was scored, not at the stretch's end.
    assert any(np.allclose(line.get_xdata(), now.load) and np.allclose(line.get_ydata(), now.versus_one_batch)
               for line in dashed)
    assert any(np.allclose(line.get_xdata(), now.load) and np.allclose(line.get_ydata(), now["mean"])
               for line in dashed)


def test_the_downstream_figure_draws_the_one_batch_as_a_point_and_marks_tasks_without_a_verdict(drawn):
    rows = []
    for task, informative in (("sst2", True), ("mrpc", False)):
        rows.append(dict(task=task, run="unedited", algorithm="", batch_size=0, n_edits=0))
        rows += [dict(task=task, run="sequential", algorithm="memit", batch_size=256, n_edits=k)
                 for k in (256, 512, 768, 1024)]
        rows.append(dict(task=task, run="sequential", algorithm="memit", batch_size=1024, n_edits=1024))
        for row in rows[-6:]:
            row.update(informative=informative)
    summary = pd.DataFrame(rows).assign(metric="f1", value=0.6, ci_low=0.5, ci_high=0.7, chance=0.5)
    downstream.draw(summary, ["C0", "C1", "C2"], "x.png", ["png"])
    (fig,) = drawn
    assert not lines(fig, "memit, sequential B = 1024")  # the one batch is not a sequential line...
    assert one_batch_points(fig, "memit, one batch of 1024")  # ...but a point at N
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("no verdict" in t for t in titles) == 2 and all("no verdict" not in t for t in titles if "sst2" in t)
