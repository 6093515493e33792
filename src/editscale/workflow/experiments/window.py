"""Finding (f), beyond the paper: the chosen layer against a window of layers ending there (MEMIT's
spread), at the largest batch and at the end of the longest sequential run. It runs no job of its
own: batch editing and sequential editing add the window's runs to theirs (their `jobs`)."""

from __future__ import annotations

from editscale.workflow import figures, findings


def claim_f(runs: findings.Runs) -> list[dict]:
    if "f" in runs.missing:
        return [findings.not_measured("f. a window keeps NS better than one layer", runs.missing["f"])]
    if runs.window is None:
        return []
    return findings.window_vs_layer(runs.every["batch"], runs.every["retained"], runs.layer, runs.window,
                                    runs.options)


FIGURES = {"window": figures.WINDOW}
CLAIMS = {"f": claim_f}
READS = ("batch", "retained")  # the summaries of the runs it compares
